"""The tokens modality: data, networks, evaluation, text output, plugin registration, kind checks."""
from __future__ import annotations

import torch
import pytest

from distill.errors import DistillError
from distill.plugins import PluginManager
from distill_tokens import plugin
from distill_tokens.modality import TokensModality, teacher_file


def test_shapes_vocab_and_data():
    m = TokensModality()
    assert m.kind == "discrete" and m.vocab_size == 13 and m.sample_shape == (30,)
    a = m.sample_data(4, torch.Generator().manual_seed(0)).x0
    b = m.sample_data(4, torch.Generator().manual_seed(0)).x0
    assert torch.equal(a, b) and a.dtype == torch.long
    c = TokensModality({"task": "chain"})
    assert c.vocab_size == 64 and c.sample_shape == (32,)
    with pytest.raises(DistillError, match="arithmetic, chain, text"):
        TokensModality({"task": "dyck"})
    with pytest.raises(DistillError, match="task"):
        TokensModality({"tsak": "chain"})  # unknown option keys are refused with a hint


def test_network_returns_logits_over_the_vocabulary():
    m = TokensModality({"network_args": {"hidden": 16, "depth": 1, "heads": 2}})
    net = m.build_network("student")
    x = torch.full((2, 30), 13)  # all masks
    assert net(x, torch.ones(2)).shape == (2, 30, 13)


def test_evaluate_and_save_samples(tmp_path):
    m = TokensModality()
    x = m.sample_data(50, torch.Generator().manual_seed(0)).x0
    metrics = m.evaluate(x.float())
    assert metrics["validity"] == 1.0 and set(metrics) == {"validity", "nll", "coverage_kl", "distinct", "entropy", "equation_validity"}
    x[0, 8] = (x[0, 8] + 1) % 10  # break the first sum
    (path,) = m.save_samples(x, tmp_path / "s.png", title="data")
    lines = path.read_text().splitlines()
    assert path.suffix == ".txt" and lines[0] == "# data" and lines[2].startswith("BAD ") and lines[3].startswith("ok ")
    (cmp,) = m.save_comparison({"teacher": x, "student": x[:5]}, tmp_path / "comparison.png")
    assert "## teacher" in cmp.read_text() and "## student" in cmp.read_text()


def test_bundled_teachers_are_installed():
    for task in ("arithmetic", "chain"):
        if not teacher_file(task).is_file():
            pytest.skip(f"{task} teacher not trained yet")
        assert TokensModality({"task": task}).default_teacher()["path"].endswith(f"{task}_teacher.safetensors")
    with pytest.raises(DistillError, match="chain_vocab=64"):
        TokensModality({"task": "chain", "chain_vocab": 32}).default_teacher()


def test_plugin_registers_the_modality_and_continuous_methods_refuse_it():
    m = PluginManager(extra_plugins=[("distill-plugin-tokens", plugin)], entry_points=False, env={})
    assert m.failed == []
    assert m.modalities.entry("tokens").plugin == "distill-plugin-tokens"
    with pytest.raises(DistillError) as err:
        m.check_compatible("dmd2", "tokens")
    assert str(err.value).startswith("method 'dmd2' needs a continuous modality, but 'tokens' is discrete; use one of:")
    for name in ("sdtt", "lsd", "di4c"):
        m.check_compatible(name, "tokens")
