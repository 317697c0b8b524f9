"""The bundled digits classifier: provenance, held-out accuracy, loading, training recipe."""
from __future__ import annotations

import json

import pytest
import torch

from distill.errors import DistillError
from distill_image.features import CLASSIFIER_FILE, ClassifierFeatures, DigitsClassifier, load_digits_classifier
from distill_image.train_features import holdout_split, load_digits, shift_augment, train_classifier


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sidecar() -> dict:
    return json.loads(CLASSIFIER_FILE.with_suffix(".json").read_text())


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_bundled_weights_are_small_and_documented(sidecar):
    assert CLASSIFIER_FILE.stat().st_size < 1_000_000
    for key in ("config", "seed", "epochs", "heldout_accuracy", "heldout_indices", "command"):
        assert key in sidecar, key
    assert sidecar["command"].startswith("python -m distill_image.train_features")
    assert DigitsClassifier(**sidecar["config"]).config == sidecar["config"]


def test_digits_tensor(digits):
    x, y = digits
    assert x.shape == (1797, 1, 16, 16) and x.dtype == torch.float32
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < -0.99 and x.max() > 0.9
    assert y.shape == (1797,) and set(y.tolist()) == set(range(10))


def test_heldout_accuracy_recorded_and_remeasured(sidecar, digits):
    assert sidecar["heldout_accuracy"] >= 0.95
    x, y = digits
    _, held = holdout_split(y, sidecar["heldout_fraction"], sidecar["seed"])
    assert held.tolist() == sidecar["heldout_indices"]  # the split is reproducible from the seed
    clf = load_digits_classifier()
    with torch.no_grad():
        pred = clf(x[held]).argmax(dim=1)
    acc = float((pred == y[held]).float().mean())
    assert acc >= 0.95
    assert acc == pytest.approx(sidecar["heldout_accuracy"], abs=1.5 / held.numel())


def test_features_shape_dtype_and_determinism(digits):
    clf = load_digits_classifier()
    x = digits[0][:64]
    f1, f2 = clf.features(x), clf.features(x)
    assert f1.shape == (64, clf.feature_dim) and f1.dtype == torch.float32
    assert 64 <= clf.feature_dim <= 128
    assert torch.equal(f1, f2)
    assert not clf.training and not any(p.requires_grad for p in clf.parameters())
    with pytest.raises(DistillError, match=r"\[B, 1, 16, 16\]"):
        clf.features(torch.zeros(2, 16, 16))


def test_loader_is_cached_and_reports_missing_weights(tmp_path):
    assert load_digits_classifier() is load_digits_classifier()
    with pytest.raises(DistillError, match="distill_image.train_features"):
        load_digits_classifier(tmp_path / "nope.safetensors")


def test_feature_adapter_accepts_what_torchmetrics_passes(digits):
    clf = load_digits_classifier()
    feat = ClassifierFeatures(clf, batch_size=7)
    x = digits[0][:20]
    ref = clf.features(x)
    assert feat.num_features == clf.feature_dim
    torch.testing.assert_close(feat(x), ref, rtol=1e-5, atol=1e-5)  # batched == unbatched
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    torch.testing.assert_close(feat(u8), ref, rtol=0, atol=0.05)  # uint8 in [0, 255]
    torch.testing.assert_close(feat(x.expand(-1, 3, -1, -1)), ref, rtol=1e-5, atol=1e-5)  # RGB -> grey
    assert feat(torch.randint(0, 255, (1, 3, 299, 299), dtype=torch.uint8)).shape == (1, clf.feature_dim)
    feat.train()
    assert not feat.classifier.training


def test_shift_augment_moves_without_wrapping():
    g = torch.Generator().manual_seed(0)
    x = torch.full((64, 1, 6, 6), -1.0)
    x[:, :, 2:4, 2:4] = 1.0  # a 2x2 blob in the middle
    out = shift_augment(x, g, max_shift=1)
    assert torch.equal(out.sum(dim=(1, 2, 3)), x.sum(dim=(1, 2, 3)))  # nothing falls off or wraps
    # every output is the input shifted by one of the 9 offsets, and several offsets occur
    offsets = set()
    for img in out[:, 0]:
        ys, xs = torch.nonzero(img > 0, as_tuple=True)
        offsets.add((int(ys.min()) - 2, int(xs.min()) - 2))
        assert int(ys.max() - ys.min()) == 1 and int(xs.max() - xs.min()) == 1
    assert offsets <= {(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)} and len(offsets) >= 5


def test_split_is_stratified_and_disjoint(digits):
    y = digits[1]
    train, held = holdout_split(y, 0.2, seed=3)
    assert set(train.tolist()).isdisjoint(held.tolist()) and train.numel() + held.numel() == y.numel()
    counts = torch.bincount(y[held], minlength=10).float() / torch.bincount(y, minlength=10).float()
    assert torch.allclose(counts, torch.full((10,), 0.2), atol=0.01)
    assert torch.equal(holdout_split(y, 0.2, seed=3)[1], held)
    assert not torch.equal(holdout_split(y, 0.2, seed=4)[1], held)


def test_training_is_deterministic():
    tiny = {"widths": [4, 8, 8], "feature_dim": 16, "groups": 4}
    a, sa = train_classifier(epochs=1, seed=5, config=tiny, log=False)
    b, sb = train_classifier(epochs=1, seed=5, config=tiny, log=False)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    assert sa["heldout_accuracy"] == sb["heldout_accuracy"]
    assert sa["heldout_indices"] == sb["heldout_indices"]
