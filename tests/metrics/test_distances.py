"""Tests of distill.metrics.distances: sliced Wasserstein and MMD."""
from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError
from distill.metrics.distances import (
    median_bandwidths,
    mmd_rbf,
    random_directions,
    sliced_wasserstein,
    wasserstein_1d,
)


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: intra-op threads only add overhead (and stall on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian(n: int, mean, seed: int, std: float = 1.0) -> torch.Tensor:
    mean = torch.as_tensor(mean, dtype=torch.float64)
    return mean + std * torch.randn(n, mean.numel(), generator=gen(seed), dtype=torch.float64)


# --------------------------------------------------------------------------- 1-D exact W


def test_wasserstein_1d_equal_sizes_is_mean_sorted_difference():
    u = torch.tensor([[3.0, 1.0, 2.0]], dtype=torch.float64)
    v = torch.tensor([[0.0, 5.0, 1.0]], dtype=torch.float64)
    # sorted: [1,2,3] vs [0,1,5] -> |1|,|1|,|2|
    assert wasserstein_1d(u, v, p=1).item() == pytest.approx(4 / 3)
    assert wasserstein_1d(u, v, p=2).item() == pytest.approx(6 / 3)


def test_wasserstein_1d_unequal_sizes_matches_scipy_and_replication():
    scipy_stats = pytest.importorskip("scipy.stats")
    g = gen(0)
    u = torch.randn(1, 30, generator=g, dtype=torch.float64)
    v = torch.randn(1, 45, generator=g, dtype=torch.float64) * 2 + 0.3
    ref = scipy_stats.wasserstein_distance(u[0].numpy(), v[0].numpy())
    assert wasserstein_1d(u, v, p=1).item() == pytest.approx(ref, rel=1e-10)
    # replicate both to the common size 90: empirical measures are unchanged
    ur, vr = u.repeat_interleave(3, dim=1), v.repeat_interleave(2, dim=1)
    for p in (1, 2):
        assert wasserstein_1d(u, v, p=p).item() == pytest.approx(wasserstein_1d(ur, vr, p=p).item(), rel=1e-10)


# --------------------------------------------------------------------------- sliced Wasserstein


def test_random_directions_are_unit_and_deterministic():
    a = random_directions(100, 5, gen(3))
    b = random_directions(100, 5, gen(3))
    assert torch.equal(a, b)
    assert torch.allclose(a.norm(dim=1), torch.ones(100, dtype=a.dtype))


def test_sliced_wasserstein_zero_for_identical_sets():
    x = gaussian(500, [0.0, 0.0], 0)
    assert sliced_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)
    assert sliced_wasserstein(x, x, p=2) == pytest.approx(0.0, abs=1e-12)
    # unequal sizes with the same empirical measure
    assert sliced_wasserstein(x, torch.cat([x, x])) == pytest.approx(0.0, abs=1e-12)
    # a permutation does not matter
    assert sliced_wasserstein(x, x.flip(0)) == pytest.approx(0.0, abs=1e-12)


def test_sliced_wasserstein_default_generator_is_deterministic():
    x, y = gaussian(300, [0.0, 0.0], 0), gaussian(300, [1.0, 0.0], 1)
    assert sliced_wasserstein(x, y) == sliced_wasserstein(x, y)
    assert sliced_wasserstein(x, y, generator=gen(5)) == sliced_wasserstein(x, y, generator=gen(5))


def test_sliced_wasserstein_grows_with_shift():
    x = gaussian(2000, [0.0, 0.0], 0)
    values = [sliced_wasserstein(x, gaussian(2000, [s, 0.0], 1)) for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("dim", [2, 5])
def test_sliced_wasserstein_matches_analytic_value_for_shifted_gaussians(dim):
    # x ~ N(0, I), y ~ N(delta, I): every projection is a translation by theta.delta, so
    # W_p(theta#x, theta#y) = |theta.delta|; over uniform directions SW_1 = |delta| E|theta_1|
    # with E|theta_1| = Gamma(D/2) / (sqrt(pi) Gamma((D+1)/2)) (= 2/pi in 2-D), SW_2 = |delta|/sqrt(D).
    delta = torch.zeros(dim, dtype=torch.float64)
    delta[0] = 3.0
    n, n_proj = 5000, 256
    x = gaussian(n, torch.zeros(dim), 0)
    y = gaussian(n, delta, 1)
    sw1 = sliced_wasserstein(x, y, n_projections=n_proj, generator=gen(2))
    sw2 = sliced_wasserstein(x, y, n_projections=n_proj, generator=gen(2), p=2)
    # exact for the directions drawn: only the sampling error of x and y remains
    proj = random_directions(n_proj, dim, gen(2)) @ delta
    assert sw1 == pytest.approx(float(proj.abs().mean()), rel=0.02)
    assert sw2 == pytest.approx(float(proj.pow(2).mean().sqrt()), rel=0.02)
    # and the analytic expectation over directions, within the Monte-Carlo error of 256 directions
    e_abs = math.exp(math.lgamma(dim / 2) - math.lgamma((dim + 1) / 2)) / math.sqrt(math.pi)
    assert sw1 == pytest.approx(3.0 * e_abs, rel=0.08)
    assert sw2 == pytest.approx(3.0 / math.sqrt(dim), rel=0.08)
    if dim == 2:
        assert e_abs == pytest.approx(2 / math.pi)


def test_sliced_wasserstein_flattens_trailing_dims():
    x = gaussian(200, torch.zeros(12), 0)
    y = gaussian(200, torch.ones(12), 1)
    assert sliced_wasserstein(x.reshape(200, 3, 4), y.reshape(200, 3, 4)) == pytest.approx(sliced_wasserstein(x, y))


def test_sliced_wasserstein_errors_are_actionable():
    x = gaussian(10, [0.0, 0.0], 0)
    with pytest.raises(DistillError, match="different sizes"):
        sliced_wasserstein(x, gaussian(10, [0.0, 0.0, 0.0], 1))
    with pytest.raises(DistillError, match="p=1 or p=2"):
        sliced_wasserstein(x, x, p=3)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(DistillError, match="NaN"):
        sliced_wasserstein(bad, x)
    with pytest.raises(DistillError, match="non-empty"):
        sliced_wasserstein(x[:0], x)


# --------------------------------------------------------------------------- MMD


def test_mmd_identical_sets_is_zero_up_to_the_estimator():
    x = gaussian(400, [0.0, 0.0], 0)
    # MMD_u^2(x, x) = 2 (mean off-diagonal kernel - 1) / n + O(1/n^2): tiny and <= 0
    value = mmd_rbf(x, x)
    assert -2.0 / 400 <= value <= 1e-12


def test_mmd_same_distribution_is_near_zero_and_unbiased():
    values = [mmd_rbf(gaussian(500, [0.0, 0.0], s), gaussian(500, [0.0, 0.0], 100 + s)) for s in range(6)]
    mean = sum(values) / len(values)
    assert abs(mean) < 2e-3
    assert min(values) < 0.0 or max(values) < 2e-3  # unbiased: about zero, may be negative


def test_mmd_grows_with_shift():
    x = gaussian(800, [0.0, 0.0], 0)
    bw = median_bandwidths(x)
    values = [mmd_rbf(x, gaussian(800, [s, 0.0], 1), bandwidths=bw) for s in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:])), values
    assert values[-1] > 0.1


def test_mmd_chunking_does_not_change_the_value():
    x, y = gaussian(300, [0.0, 0.0], 0), gaussian(250, [0.5, 0.0], 1)
    assert mmd_rbf(x, y, chunk=64) == pytest.approx(mmd_rbf(x, y, chunk=4096), rel=1e-10)


def test_mmd_single_bandwidth_matches_direct_formula():
    x, y = gaussian(50, [0.0, 0.0], 0), gaussian(40, [1.0, 0.0], 1)
    h = 0.7
    k = lambda a, b: torch.exp(-torch.cdist(a, b) ** 2 / (2 * h * h))  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = 50, 40
    direct = (kxx.sum() - kxx.diag().sum()) / (n * (n - 1)) + (kyy.sum() - kyy.diag().sum()) / (m * (m - 1)) - 2 * kxy.mean()
    assert mmd_rbf(x, y, bandwidths=h) == pytest.approx(float(direct), rel=1e-10)


def test_mmd_errors_are_actionable():
    x = gaussian(10, [0.0, 0.0], 0)
    with pytest.raises(DistillError, match="at least 2"):
        mmd_rbf(x[:1], x)
    with pytest.raises(DistillError, match="positive"):
        mmd_rbf(x, x, bandwidths=[1.0, 0.0])
