"""ImageModality: options, conditioning, data, reference, networks, teacher, evaluation."""
from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import distill_image.modality as modality_module
from distill.config import build_dataclass
from distill.errors import DistillError
from distill.modality import DataBatch, Modality
from distill_image.data import load_digits_tensor
from distill_image.modality import ImageModality


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_contract_basics_for_digits():
    m = ImageModality()
    assert isinstance(m, Modality)
    assert m.name == "image" and m.kind == "continuous" and m.description
    assert m.sample_shape == (1, 16, 16)
    assert m.conditional is True and m.num_classes == 10
    assert m.class_names == [str(k) for k in range(10)]
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(m.encode(x), x) and torch.equal(m.decode(x), x)


def test_sample_condition_and_null_condition():
    m = ImageModality()
    c = m.sample_condition(500, gen(0))
    assert c.shape == (500,) and c.dtype == torch.long
    assert int(c.min()) == 0 and int(c.max()) == 9 and c.unique().numel() == 10
    assert torch.equal(c, m.sample_condition(500, gen(0)))
    assert not torch.equal(c, m.sample_condition(500, gen(1)))
    null = m.null_condition(7)
    assert null.dtype == torch.long and null.tolist() == [10] * 7


def test_evaluation_condition_has_the_data_class_proportions_exactly():
    m = ImageModality()
    _, labels = m.data()
    data_counts = torch.bincount(labels, minlength=10).double()
    for n in (5000, 37, 1797):
        c = m.evaluation_condition(n, gen(0))
        assert c.shape == (n,) and c.dtype == torch.long
        counts = torch.bincount(c, minlength=10).double()
        # largest-remainder rounding: every class within one sample of its exact quota
        assert int(counts.sum()) == n
        assert (counts - data_counts / data_counts.sum() * n).abs().max() < 1.0
    assert torch.equal(m.evaluation_condition(1797, gen(0)).sort().values, labels.sort().values)
    assert torch.equal(m.evaluation_condition(500, gen(0)), m.evaluation_condition(500, gen(0)))
    assert not torch.equal(m.evaluation_condition(500, gen(0)), m.evaluation_condition(500, gen(1)))
    assert ImageModality({"dataset": "photos"}).evaluation_condition(4, gen(0)) is None


def test_sample_data_is_deterministic_and_labels_match_images():
    m = ImageModality()
    a = m.sample_data(64, gen(3))
    b = m.sample_data(64, gen(3))
    assert isinstance(a, DataBatch)
    assert a.x0.shape == (64, 1, 16, 16) and a.x0.dtype == torch.float32 and a.cond.dtype == torch.long
    assert torch.equal(a.x0, b.x0) and torch.equal(a.cond, b.cond)
    assert not torch.equal(a.x0, m.sample_data(64, gen(4)).x0)
    images, labels = load_digits_tensor()
    index = torch.randint(1797, (64,), generator=gen(3))
    assert torch.equal(a.x0, images[index]) and torch.equal(a.cond, labels[index])


def test_reference_is_all_digits_whatever_n():
    m = ImageModality()
    images, labels = load_digits_tensor()
    for n in (10, 4096):
        ref = m.reference(n, gen(0))
        assert ref.x0.shape == (1797, 1, 16, 16)
        assert torch.equal(ref.x0, images) and torch.equal(ref.cond, labels)
    ref = m.reference(5)
    ref.x0.zero_()  # the caller's copy
    assert torch.equal(m.reference(5).x0, images)


def test_options_from_dicts_config_and_errors(tmp_path):
    opts = build_dataclass(ImageModality.Options, {"resolution": 8, "network_args": {"width": 32}}, "modality_args")
    m = ImageModality(opts)
    assert m.sample_shape == (1, 8, 8) and m.options.network_args == {"width": 32}
    assert ImageModality({"channels": 3}).sample_shape == (3, 16, 16)
    assert ImageModality({"channels": 3}).sample_data(4, gen(0)).x0.shape == (4, 3, 16, 16)
    with pytest.raises(DistillError, match="did you mean 'resolution'"):
        ImageModality({"resolutoin": 16})
    with pytest.raises(DistillError, match="did you mean 'digits'"):
        ImageModality({"dataset": "digit"})
    with pytest.raises(DistillError, match="did you mean 'dit'"):
        ImageModality({"network": "dti"})
    with pytest.raises(DistillError, match="root"):
        ImageModality({"dataset": "folder"})
    with pytest.raises(DistillError, match="channels must be 1 or 3"):
        ImageModality({"channels": 2})
    with pytest.raises(DistillError, match="only used with dataset=folder"):
        ImageModality({"root": str(tmp_path)})


def test_photos_modality():
    m = ImageModality({"dataset": "photos", "num_crops": 32})
    assert m.sample_shape == (3, 16, 16)
    assert m.conditional is False and m.num_classes is None
    assert m.sample_condition(4, gen(0)) is None and m.null_condition(4) is None
    batch = m.sample_data(8, gen(0))
    assert batch.x0.shape == (8, 3, 16, 16) and batch.cond is None
    assert torch.equal(m.reference(16).x0, m.reference(16).x0)  # seeded without a generator
    assert m.reference(16).x0.shape == (16, 3, 16, 16)
    cond = ImageModality({"dataset": "photos", "num_crops": 32, "conditional": True})
    assert cond.num_classes == len(cond.class_names) and cond.sample_data(8, gen(0)).cond.shape == (8,)


def _write_folder(root):
    for k, name in enumerate(["circles", "squares"]):
        for i in range(3):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((20, 24, 3), 60 * k + 10 * i, np.uint8)).save(root / name / f"{i}.png")


def test_folder_modality(tmp_path):
    _write_folder(tmp_path / "data")
    m = ImageModality({"dataset": "folder", "root": str(tmp_path / "data"), "resolution": 8})
    assert m.sample_shape == (3, 8, 8)
    assert m.conditional is True and m.num_classes == 2 and m.class_names == ["circles", "squares"]
    batch = m.sample_data(10, gen(0))
    assert batch.x0.shape == (10, 3, 8, 8) and set(batch.cond.tolist()) <= {0, 1}
    assert m.reference(6, gen(1)).x0.shape == (6, 3, 8, 8)
    x, y = next(iter(m.datamodule(4).train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and y.shape == (4,)
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(flat / "a.png")
    unlabelled = ImageModality({"dataset": "folder", "root": str(flat), "resolution": 8})
    assert unlabelled.conditional is False and unlabelled.sample_data(2, gen(0)).cond is None
    with pytest.raises(DistillError, match="class sub-folders"):
        ImageModality({"dataset": "folder", "root": str(flat), "conditional": True}).conditional


def test_digits_datamodule():
    x, y = next(iter(ImageModality().datamodule(32).train_dataloader()))
    assert x.shape == (32, 1, 16, 16) and y.dtype == torch.long


class _RecordingNet(torch.nn.Module):
    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs


def test_build_network_passes_shape_classes_args_and_overrides(monkeypatch):
    monkeypatch.setitem(sys.modules, "distill.nets.unet", types.SimpleNamespace(UNetDenoiserNet=_RecordingNet))
    monkeypatch.setitem(sys.modules, "distill.nets.dit", types.SimpleNamespace(DiTDenoiserNet=_RecordingNet))
    m = ImageModality({"network_args": {"width": 32, "depth": 2}})
    net = m.build_network("student", depth=3)
    assert net.kwargs == {"in_channels": 1, "resolution": 16, "num_classes": 10, "width": 32, "depth": 3}
    saved = {"in_channels": 1, "resolution": 16, "num_classes": 10, "width": 64}
    assert m.build_network("teacher", **saved).kwargs == {**saved, "depth": 2}
    photos = ImageModality({"dataset": "photos", "network": "dit", "num_crops": 4})
    assert photos.build_network("critic").kwargs == {"in_channels": 3, "resolution": 16, "num_classes": None}


def test_build_network_without_the_reference_network_is_an_actionable_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "distill.nets.dit", None)
    with pytest.raises(DistillError, match="'dit' reference network"):
        ImageModality({"network": "dit"}).build_network("student")


def test_real_unet_builds_and_runs_when_installed():
    unet = pytest.importorskip("distill.nets.unet", reason="distill.nets.unet (UNetDenoiserNet) not in this checkout yet")
    net = ImageModality().build_network("student")
    assert isinstance(net, unet.UNetDenoiserNet)
    out = net(torch.zeros(2, 1, 16, 16), torch.full((2,), 0.5), torch.tensor([3, 10]))
    assert out.shape == (2, 1, 16, 16)


def test_default_teacher(monkeypatch, tmp_path):
    missing = tmp_path / "assets" / "digits_teacher.safetensors"
    monkeypatch.setattr(modality_module, "TEACHER_FILE", missing)
    with pytest.raises(DistillError, match="distill train configs/image/teacher.yaml"):
        ImageModality().default_teacher()
    missing.parent.mkdir()
    missing.write_bytes(b"weights")
    assert ImageModality().default_teacher() == {"loader": "safetensors", "path": str(missing)}
    with pytest.raises(DistillError, match="only for class-conditional 16x16 grey digits"):
        ImageModality({"dataset": "photos"}).default_teacher()
    assert modality_module.TEACHER_FILE.name == "digits_teacher.safetensors"


def test_evaluate_without_metrics_module_reports_nothing(monkeypatch):
    monkeypatch.setitem(sys.modules, "distill_image.metrics", None)
    m = ImageModality()
    with pytest.raises(DistillError, match="image metrics are not installed yet"):
        m.evaluate(torch.zeros(4, 1, 16, 16), m.reference(4))


def test_evaluate_delegates_to_image_metrics(monkeypatch):
    calls = []

    def image_metrics(samples, reference, cond=None, **context):
        calls.append((samples, reference, cond, context))
        return {"fd": 1.5}

    monkeypatch.setitem(sys.modules, "distill_image.metrics", types.SimpleNamespace(image_metrics=image_metrics))
    m = ImageModality()
    samples, cond, ref = torch.zeros(4, 1, 16, 16), torch.arange(4), m.reference(4)
    assert m.evaluate(samples, ref, cond=cond, steps=1) == {"fd": 1.5}
    (s, r, c, ctx), = calls
    assert s is samples and r is ref and c is cond and ctx == {"steps": 1}
