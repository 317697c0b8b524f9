"""ToyModality: options, data, networks, metrics and pictures."""
from __future__ import annotations

import pytest
import torch

from distill.errors import DistillError
from distill.modality import DataBatch, Modality
from distill.nets.mlp import MLPDenoiserNet
from distill_toy.data import make_dataset
from distill_toy.metrics import assign_modes, mode_statistics
from distill_toy.modality import ToyModality

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_contract_basics(gen):
    m = ToyModality()
    assert isinstance(m, Modality)
    assert m.name == "toy" and m.kind == "continuous" and m.description
    assert m.sample_shape == (2,)
    assert m.conditional is False and m.sample_condition(4) is None and m.null_condition(4) is None
    batch = m.sample_data(16, gen(0))
    assert isinstance(batch, DataBatch) and batch.cond is None
    assert batch.x0.shape == (16, 2) and batch.x0.dtype == torch.float32
    assert torch.equal(batch.x0, m.sample_data(16, gen(0)).x0)
    assert torch.equal(m.encode(batch.x0), batch.x0) and torch.equal(m.decode(batch.x0), batch.x0)


def test_reference_is_deterministic_without_generator(gen):
    m = ToyModality()
    assert torch.equal(m.reference(100).x0, m.reference(100).x0)
    assert not torch.equal(m.reference(100).x0, m.sample_data(100, gen(0)).x0)


def test_options_from_dict_and_errors():
    m = ToyModality({"dataset": "grid25", "scale": 2.0})
    assert m.options.dataset == "grid25" and m.mixture.means.abs().max() == 4.0
    m2 = ToyModality(ToyModality.Options(dataset="moons"))
    assert m2.mixture is None
    with pytest.raises(DistillError, match="unknown key 'modality_args.datset'; did you mean 'dataset'"):
        ToyModality({"datset": "ring8"})
    with pytest.raises(DistillError, match="Did you mean 'checkerboard'"):
        ToyModality({"dataset": "checkerbord"})


def test_build_network_defaults_and_overrides():
    m = ToyModality()
    net = m.build_network("student")
    assert isinstance(net, MLPDenoiserNet)
    assert net.config["dim"] == 2 and net.config["hidden"] == 256 and net.config["depth"] == 3
    out = net(torch.zeros(4, 2), torch.full((4,), 0.5))
    assert out.shape == (4, 2)
    small = m.build_network("critic", hidden=32, depth=1)
    assert small.config["hidden"] == 32 and small.config["depth"] == 1


def test_default_teacher():
    assert ToyModality().default_teacher() == {"loader": "exact", "process": "flow"}
    assert ToyModality({"dataset": "grid25"}).default_teacher()["loader"] == "exact"
    for ds in ("checkerboard", "moons"):
        with pytest.raises(DistillError, match="configs/toy/teacher.yaml"):
            ToyModality({"dataset": ds}).default_teacher()


# --------------------------------------------------------------------------- metrics


def test_evaluate_on_true_samples(gen):
    m = ToyModality()
    x, ref = m.sample_data(4000, gen(0)).x0, m.reference(4000)
    ev = m.evaluate(x, ref)
    assert set(ev) == {"sliced_wasserstein", "sliced_wasserstein_1", "mmd", "mode_coverage", "mode_weights", "mode_weight_tv", "outlier_fraction"}
    assert all(isinstance(v, float) for k, v in ev.items() if k != "mode_weights")
    assert ev["sliced_wasserstein_1"] < 0.05
    # SW_2's floor at 4k samples is ~0.1: W_2 converges like n^(-1/4) across separated modes
    assert ev["sliced_wasserstein"] < 0.2
    assert abs(ev["mmd"]) < 2e-3
    assert ev["mode_coverage"] == 1.0
    assert len(ev["mode_weights"]) == 8 and sum(ev["mode_weights"]) == pytest.approx(1.0)
    assert ev["mode_weight_tv"] < 0.04
    assert ev["outlier_fraction"] == pytest.approx(0.011, abs=0.006)  # P(chi_2 > 3) = exp(-4.5)
    # same inputs, same numbers (fixed projection seed); a tensor works as reference too
    assert m.evaluate(x, ref.x0) == ev


def test_evaluate_on_one_mode(gen):
    m = ToyModality()
    mix = m.mixture
    x = (mix.means[2] + mix.stds[2] * torch.randn(2000, 2, generator=gen(0), dtype=torch.float64)).float()
    ev = m.evaluate(x, m.reference(2000))
    assert ev["mode_coverage"] == pytest.approx(1 / 8)
    assert ev["mode_weights"][2] == pytest.approx(1.0)
    assert ev["mode_weight_tv"] == pytest.approx(7 / 8)
    assert ev["sliced_wasserstein"] > 0.5
    assert ev["mmd"] > 0.05


def test_evaluate_sample_only_datasets_have_no_mode_metrics(gen):
    m = ToyModality({"dataset": "moons"})
    ev = m.evaluate(m.sample_data(1000, gen(0)).x0, m.reference(1000))
    assert set(ev) == {"sliced_wasserstein", "sliced_wasserstein_1", "mmd"}


def test_mode_statistics_definitions():
    mix = make_dataset("ring8_unequal").mixture
    mu = mix.means.float()
    # 10 samples exactly on mode 0, 10 on mode 1, 5 far away
    x = torch.cat([mu[0].repeat(10, 1), mu[1].repeat(10, 1), torch.full((5, 2), 50.0)])
    st = mode_statistics(x, mix)
    assert st.counts[:2] == [10, 10] and sum(st.counts) == 20
    assert st.outlier_fraction == pytest.approx(5 / 25)
    assert st.mode_weights[:2] == [0.5, 0.5]
    w = mix.weights.tolist()
    assert st.mode_weight_tv == pytest.approx(0.5 * (abs(0.5 - w[0]) + abs(0.5 - w[1]) + sum(w[2:])))
    # covered iff n_k >= 0.2 * w_k * n: modes 0 and 1 only
    assert st.mode_coverage == pytest.approx(2 / 8)
    # no sample near any mode
    empty = mode_statistics(torch.full((4, 2), 50.0), mix)
    assert empty.mode_coverage == 0.0 and empty.mode_weight_tv == 1.0 and empty.outlier_fraction == 1.0


def test_assign_modes_radius():
    mix = make_dataset("ring8").mixture
    edge = mix.means[0] + torch.tensor([0.29, 0.0], dtype=mix.means.dtype)  # 2.9 std
    out = mix.means[0] + torch.tensor([0.31, 0.0], dtype=mix.means.dtype)  # 3.1 std
    assert assign_modes(torch.stack([edge, out]), mix).tolist() == [0, -1]


def test_evaluate_rejects_wrong_shapes():
    m = ToyModality()
    with pytest.raises(DistillError, match=r"\[n, 2\]"):
        m.evaluate(torch.zeros(10, 3), m.reference(10))


# --------------------------------------------------------------------------- pictures


def _check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    return img


def test_save_samples_writes_a_png(tmp_path, gen):
    m = ToyModality()
    x = m.sample_data(500, gen(0)).x0
    files = m.save_samples(x, tmp_path / "ring.png", title="teacher @ 35")
    assert files == [tmp_path / "ring.png"]
    _check_png(files[0])
    # a directory path gets samples.png; tensors with grad / far outliers are fine
    far = torch.cat([x, torch.full((3, 2), 100.0)]).requires_grad_(True)
    files = m.save_samples(far, tmp_path / "samples_dir")
    assert files == [tmp_path / "samples_dir" / "samples.png"]
    _check_png(files[0])
    assert not list((tmp_path / "samples_dir").glob(".*"))  # no temp files left behind


def test_save_samples_for_sample_only_dataset(tmp_path, gen):
    m = ToyModality({"dataset": "checkerboard"})
    _check_png(m.save_samples(m.sample_data(300, gen(0)).x0, tmp_path / "cb.png")[0])


def test_save_comparison(tmp_path, gen):
    m = ToyModality()
    panels = {"data": m.sample_data(300, gen(0)).x0, "teacher@1": torch.zeros(300, 2), "student@1": m.sample_data(300, gen(1)).x0}
    files = m.save_comparison(panels, tmp_path / "cmp.png", title="ring8")
    one = _check_png(m.save_samples(panels["data"], tmp_path / "one.png")[0])
    img = _check_png(files[0])
    assert img.shape[1] > 2.5 * one.shape[1]  # three panels side by side
    with pytest.raises(DistillError):
        m.save_comparison({}, tmp_path / "none.png")
