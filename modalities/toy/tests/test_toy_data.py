"""Toy datasets: shapes, determinism per generator seed, parameters."""
from __future__ import annotations

import math

import pytest
import torch

from distill.errors import DistillError
from distill.process.mixture import GaussianMixture
from distill_toy.data import DATASETS, RING_UNEQUAL_WEIGHTS, make_dataset

MIXTURES = ("ring8", "ring8_unequal", "grid25")


@pytest.mark.parametrize("name", list(DATASETS))
def test_shapes_dtype_and_determinism(name, gen):
    ds = make_dataset(name)
    a = ds.sample(1000, gen(0))
    b = ds.sample(1000, gen(0))
    c = ds.sample(1000, gen(1))
    assert a.shape == (1000, 2) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.isfinite(a).all()
    assert (a.abs() <= ds.extent).float().mean() > 0.999
    assert ds.has_exact_teacher == (name in MIXTURES)
    assert ds.sample(0, gen(0)).shape == (0, 2)


def test_dataset_names():
    assert set(DATASETS) == {"ring8", "ring8_unequal", "grid25", "checkerboard", "moons"}


@pytest.mark.parametrize("name", MIXTURES)
def test_mixtures_are_gaussian_mixtures(name):
    mix = make_dataset(name).mixture
    assert isinstance(mix, GaussianMixture)
    assert float(mix.weights.sum()) == pytest.approx(1.0)


def test_ring8_parameters():
    mix = make_dataset("ring8").mixture
    assert mix.means.shape == (8, 2)
    assert torch.allclose(mix.means.norm(dim=1), torch.full((8,), 2.0, dtype=mix.means.dtype))
    assert torch.allclose(mix.means[0], torch.tensor([2.0, 0.0], dtype=mix.means.dtype))
    assert torch.allclose(mix.stds, torch.full((8,), 0.1, dtype=mix.stds.dtype))
    assert torch.allclose(mix.weights, torch.full((8,), 1 / 8, dtype=mix.weights.dtype))


def test_ring8_unequal_weights_and_frequencies(gen):
    ds = make_dataset("ring8_unequal")
    assert torch.allclose(ds.mixture.means, make_dataset("ring8").mixture.means)
    w = torch.tensor(RING_UNEQUAL_WEIGHTS, dtype=torch.float64)
    assert torch.allclose(ds.mixture.weights, w)
    comp = ds.mixture.sample(40000, generator=gen(0)).component
    freq = torch.bincount(comp, minlength=8).double() / 40000
    assert torch.allclose(freq, w, atol=0.01)


def test_grid25_parameters():
    mix = make_dataset("grid25").mixture
    assert mix.means.shape == (25, 2)
    assert set(mix.means[:, 0].tolist()) == {-2.0, -1.0, 0.0, 1.0, 2.0}
    assert torch.allclose(mix.stds, torch.full((25,), 0.05, dtype=mix.stds.dtype))


def test_checkerboard_is_on_black_squares(gen):
    x = make_dataset("checkerboard").sample(5000, gen(0))
    assert (x.abs() <= 2.0).all()
    parity = (torch.floor(x[:, 0]) + torch.floor(x[:, 1])).remainder(2)
    assert (parity == 0).all()
    # all 8 black squares are used, roughly equally
    cell = (torch.floor(x[:, 0]) + 2) * 4 + (torch.floor(x[:, 1]) + 2)
    counts = torch.bincount(cell.long(), minlength=16)
    assert (counts > 0).sum() == 8
    assert counts.max() < 1.2 * 5000 / 8


def test_moons_shape(gen):
    x = make_dataset("moons").sample(5000, gen(0))
    assert x[:, 0].abs().max() < 2.6 and x[:, 1].abs().max() < 1.5
    assert abs(float(x.mean(0)[0])) < 0.1


@pytest.mark.parametrize("name", list(DATASETS))
def test_scale_multiplies_lengths(name, gen):
    a = make_dataset(name).sample(500, gen(3))
    b = make_dataset(name, scale=2.5).sample(500, gen(3))
    assert torch.allclose(b, 2.5 * a, atol=1e-5)


def test_unknown_dataset_suggests_a_name():
    with pytest.raises(DistillError, match="Did you mean .ring8."):
        make_dataset("rign8")
    with pytest.raises(DistillError, match="scale"):
        make_dataset("ring8", scale=-1.0)
    with pytest.raises(DistillError, match="scale"):
        make_dataset("ring8", scale=math.nan)
