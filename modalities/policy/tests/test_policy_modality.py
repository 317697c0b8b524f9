"""The policy modality: normalised demonstration data, networks, open-loop checks, pictures."""
from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill_policy.modality import PolicyModality


@pytest.fixture(scope="module")
def modality():
    return PolicyModality({"task": "two_route", "n_demos": 60})


def test_shapes_and_normalised_data(modality):
    assert modality.sample_shape == (16, 2) and modality.kind == "continuous" and modality.conditional
    batch = modality.sample_data(32, torch.Generator().manual_seed(0))
    assert batch.x0.shape == (32, 16, 2) and batch.cond.shape == (32, 2, 4)
    obs, actions = modality.normalised()
    # every training number lies in the unit box the normaliser was fitted to (float32 round-off)
    assert float(actions.abs().max()) <= 1 + 1e-6 and float(obs.abs().max()) <= 1 + 1e-6
    again = modality.sample_data(32, torch.Generator().manual_seed(0))
    assert torch.equal(batch.x0, again.x0) and torch.equal(batch.cond, again.cond)
    assert modality.sample_condition(8, torch.Generator().manual_seed(1)).shape == (8, 2, 4)
    assert modality.null_condition(8) is None


def test_build_network_carries_the_modality_statistics(modality):
    net = modality.build_network("student", down_dims=[8, 16], time_dim=16)
    assert net.normalizer.matches(modality.normalizer) and net.config["down_dims"] == [8, 16]
    cond = modality.sample_condition(3, torch.Generator().manual_seed(2))
    assert net(torch.zeros(3, 16, 2), torch.rand(3), cond).shape == (3, 16, 2)
    transformer = PolicyModality({"n_demos": 60, "network": "transformer", "network_args": {"width": 16, "depth": 1, "heads": 2}})
    assert type(transformer.build_network("student")).__name__ == "PolicyTransformer"


def test_bad_options_fail_with_a_hint():
    with pytest.raises(DistillError, match="did you mean 'two_route'"):
        PolicyModality({"task": "two_rout"})
    with pytest.raises(DistillError, match="n_action_steps"):
        PolicyModality({"n_action_steps": 32})
    with pytest.raises(DistillError, match="unknown key"):
        PolicyModality({"horizn": 16})


def test_evaluate_and_pictures(modality, tmp_path):
    ref = modality.reference(64)
    metrics = modality.evaluate(ref.x0, ref, cond=ref.cond)
    # demonstration chunks never collide, and each is its own nearest demonstration
    assert metrics["chunk_collision"] == 0.0 and metrics["action_rmse_to_data"] == pytest.approx(0.0, abs=1e-6)
    assert 0.0 <= metrics["chunk_left_fraction"] <= 1.0
    files = modality.save_samples(ref.x0, tmp_path, cond=ref.cond, title="demos")
    assert files[0].suffix == ".png" and files[0].stat().st_size > 1000
    files = modality.save_comparison({"a": ref.x0, "b": -ref.x0}, tmp_path / "cmp.png", cond=ref.cond)
    assert files[0].is_file()


@pytest.mark.parametrize("task", ["two_route", pytest.param("pointmaze", marks=pytest.mark.slow)])
def test_bundled_teacher_is_installed_and_loads(task):
    """Each task's bundled teacher loads, and its normaliser holds the statistics of the task's
    demonstrations as the modality generates them (pointmaze: 300 MuJoCo expert episodes)."""
    from distill.engine.export import load_safetensors_teacher

    if task == "pointmaze":
        pytest.importorskip("gymnasium_robotics")
    from distill_policy.bench import TASK_ARGS

    modality = PolicyModality(TASK_ARGS[task])
    teacher = load_safetensors_teacher(modality.default_teacher(), modality)
    assert teacher.prediction == "eps" and teacher.process.name == "vp_discrete" and teacher.process.T == 100
    assert teacher.net.normalizer.matches(modality.normalizer)
