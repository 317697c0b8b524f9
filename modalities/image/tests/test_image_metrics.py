"""Image metrics in the digits classifier's feature space: FD, KID, P/R/coverage, class accuracy, PSNR."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distill.errors import DistillError
from distill.modality import DataBatch
from distill_image.features import load_digits_classifier
from distill_image.metrics import (
    PSNR_CAP_DB,
    class_accuracy,
    coverage_density,
    fd_features,
    feature_fd,
    frechet_distance,
    gaussian_stats,
    image_metrics,
    paired_psnr,
    precision_recall,
)
from distill_image.train_features import load_digits


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def feats(digits):
    return fd_features(digits[0])


def _noisy(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + std * torch.randn(x.shape, generator=g)).clamp(-1, 1)


def test_fd_of_reference_with_itself_is_zero(digits, feats):
    x = digits[0]
    scale = float(torch.trace(gaussian_stats(feats)[1]))  # FD of the data against a point mass at its mean
    fd = feature_fd(x, DataBatch(x0=x, cond=digits[1]))
    assert abs(fd) <= 1e-3 * scale
    assert abs(frechet_distance(*gaussian_stats(feats), *gaussian_stats(feats))) <= 1e-8 * scale


def test_fd_grows_with_noise_and_halves_give_the_floor(digits):
    x = digits[0]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(x.shape[0], generator=g)
    a, b = x[perm[: x.shape[0] // 2]], x[perm[x.shape[0] // 2:]]
    floor = feature_fd(a, b)
    fds = [feature_fd(_noisy(a, s, seed=1), b) for s in (0.2, 0.4, 0.6)]
    assert 0 < floor < fds[0] < fds[1] < fds[2]
    assert fds[2] > 10 * floor


def test_frechet_formula_known_answer():
    """Own formula vs closed form vs torchmetrics, on Gaussians given directly in feature space."""
    from torchmetrics.image.fid import FrechetInceptionDistance, _compute_fid

    g = torch.Generator().manual_seed(0)
    d = 16
    # Diagonal covariances commute: FD = |mu1 - mu2|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    a = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    b = torch.rand(d, generator=g, dtype=torch.float64) + 0.5
    exact = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(exact, rel=1e-10)

    # General SPD covariances: own implementation vs torchmetrics' formula.
    q1 = torch.randn(d, d, generator=g, dtype=torch.float64)
    q2 = torch.randn(d, d, generator=g, dtype=torch.float64)
    c1, c2 = q1 @ q1.T / d + 0.1 * torch.eye(d), q2 @ q2.T / d + 0.1 * torch.eye(d, dtype=torch.float64)
    ours = frechet_distance(mu1, c1, mu2, c2)
    assert ours == pytest.approx(float(_compute_fid(mu1, c1, mu2, c2)), rel=1e-8)
    # Scaling a covariance: FD(N(0, C), N(0, s^2 C)) = (1 - s)^2 tr C.
    assert frechet_distance(mu1, c1, mu1, 4 * c1) == pytest.approx(float(torch.trace(c1)), rel=1e-9)

    # Samples in feature space through torchmetrics' FID (identity feature module).
    class Identity(nn.Module):
        num_features = d

        def forward(self, f: torch.Tensor) -> torch.Tensor:
            return f

    n = 20000
    l1, l2 = torch.linalg.cholesky(c1), torch.linalg.cholesky(c2)
    f1 = (mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ l1.T).float()
    f2 = (mu2 + torch.randn(n, d, generator=g, dtype=torch.float64) @ l2.T).float()
    fid = FrechetInceptionDistance(feature=Identity())
    fid.update(f1, real=True)
    fid.update(f2, real=False)
    tm = float(fid.compute())
    assert tm == pytest.approx(frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2)), rel=1e-4)
    assert tm == pytest.approx(ours, rel=0.05)  # population value, up to sampling error


def test_precision_recall_coverage_identical_and_shifted(digits, feats):
    p, r = precision_recall(feats, feats)
    c, dens = coverage_density(feats, feats)
    assert (p, r, c) == (1.0, 1.0, 1.0) and dens >= 1.0
    shifted = fd_features(_noisy(digits[0], 0.6, seed=2))
    ps, rs = precision_recall(feats, shifted)
    cs, ds = coverage_density(feats, shifted)
    assert ps < 0.8 and cs < 0.8 and ds < 0.5 * dens  # off-manifold samples: low fidelity
    # Mode dropping (only digits 0-4): fidelity stays high, diversity (recall, coverage) drops.
    y = digits[1]
    half = feats[y < 5]
    pd, rd = precision_recall(feats, half)
    cd, _ = coverage_density(feats, half)
    assert pd > 0.95 and rd < 0.7 and cd < 0.7
    # Far-apart clouds share nothing.
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 8, generator=g)
    assert precision_recall(z, z + 20.0) == (0.0, 0.0)
    assert coverage_density(z, z + 20.0) == (0.0, 0.0)


def test_class_accuracy_true_and_random_labels(digits):
    x, y = digits
    clf = load_digits_classifier()
    with torch.no_grad():
        direct = float((clf(x).argmax(dim=1) == y).float().mean())
    acc = class_accuracy(x, y)
    assert acc == pytest.approx(direct, abs=1e-6) and acc >= 0.95
    g = torch.Generator().manual_seed(0)
    rand = torch.randint(0, 10, (x.shape[0],), generator=g)
    tol = 4 * math.sqrt(0.1 * 0.9 / x.shape[0])  # 4 binomial standard deviations
    assert abs(class_accuracy(x, rand) - 0.1) < tol
    # null-class labels (unconditional samples) are left out; out-of-range labels are errors
    y_null = y.clone()
    y_null[::2] = 10
    assert class_accuracy(x, y_null) == pytest.approx(float((clf(x[1::2]).argmax(1) == y[1::2]).float().mean()))
    with pytest.raises(DistillError, match="class labels"):
        class_accuracy(x[:3], torch.tensor([0, 1, 11]))


def test_paired_psnr_known_values_and_identical_cap():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16, generator=g) * 1.8 - 0.9
    assert paired_psnr(x, x) == PSNR_CAP_DB and math.isfinite(paired_psnr(x, x))
    # constant offset 0.02: MSE = 4e-4, PSNR = 10 log10(2^2 / 4e-4) = 40 dB
    assert paired_psnr(x, x + 0.02) == pytest.approx(40.0, abs=1e-4)
    with pytest.raises(DistillError, match="same shape"):
        paired_psnr(x, x[:4])


def test_image_metrics_runs_the_network_once_per_set(digits):
    """FD and KID go through torchmetrics, which calls the feature module itself; the
    precomputed features are reused (same tensor objects), so each set passes once."""
    clf = load_digits_classifier()
    seen: list[int] = []
    handle = clf.body.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    try:
        x = digits[0]
        image_metrics(x[:300], x[300:700], cond=digits[1][:300], kid_subsets=2)
    finally:
        handle.remove()
    assert sorted(seen) == [300, 400]


def test_image_metrics_keys_values_and_determinism(digits):
    x, y = digits
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(x.shape[0], generator=g)[:600]
    samples = _noisy(x[idx], 0.05, seed=3)
    ref = DataBatch(x0=x, cond=y)
    m1 = image_metrics(samples, ref, cond=y[idx], teacher_samples=x[idx], kid_subsets=10)
    m2 = image_metrics(samples, ref, cond=y[idx], teacher_samples=x[idx], kid_subsets=10)
    assert m1 == m2
    assert set(m1) == {"fd", "kid", "kid_std", "precision", "recall", "coverage", "density", "class_accuracy",
                       "paired_psnr"}
    assert all(isinstance(v, float) and math.isfinite(v) for v in m1.values())
    assert m1["class_accuracy"] == pytest.approx(class_accuracy(samples, y[idx]), abs=1e-12)
    assert m1["class_accuracy"] > 0.9 and m1["precision"] > 0.8 and 20 < m1["paired_psnr"] < 40
    bad = image_metrics(_noisy(x[idx], 0.6, seed=3), ref, kid_subsets=10)
    assert set(bad) == {"fd", "kid", "kid_std", "precision", "recall", "coverage", "density"}
    assert bad["fd"] > m1["fd"] and bad["kid"] > m1["kid"] and bad["coverage"] < m1["coverage"]
    with pytest.raises(DistillError, match="NaN"):
        image_metrics(torch.full((4, 1, 16, 16), float("nan")), ref)
