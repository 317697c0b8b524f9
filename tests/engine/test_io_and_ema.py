"""Atomic writes, safe weight files, EMA half-life."""
from __future__ import annotations


import pytest
import torch
from torch import nn

from distill.engine.ema import ema_decay, ema_update
from distill.engine.io import atomic_write, atomic_write_text, load_into, load_weights, read_sidecar, save_weights
from distill.errors import DistillError


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "good")

    def broken(tmp):
        with open(tmp, "w") as handle:
            handle.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(path, broken)
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]  # no temporary left behind


def test_weights_round_trip_and_clear_errors(tmp_path):
    net = nn.Linear(3, 2)
    path = save_weights(net, tmp_path / "student.safetensors", {"network": {"in": 3}})
    assert read_sidecar(path) == {"network": {"in": 3}}
    other = nn.Linear(3, 2)
    load_into(other, path)
    assert torch.equal(other.weight, net.weight)
    with pytest.raises(DistillError, match="do not fit"):
        load_into(nn.Linear(4, 2), path)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(DistillError, match="not a valid safetensors"):
        load_weights(tmp_path / "bad.safetensors")
    with pytest.raises(DistillError, match="does not exist"):
        load_weights(tmp_path / "missing.safetensors")
    with pytest.raises(DistillError, match="no sidecar"):
        read_sidecar(tmp_path / "bad.safetensors")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DistillError, match="not valid JSON"):
        read_sidecar(tmp_path / "bad.safetensors")


def test_ema_half_life():
    """After h updates towards a fixed source, half of the gap is closed."""
    h = 20
    target, source = nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        target.weight.fill_(0.0)
        source.weight.fill_(1.0)
    for _ in range(h):
        ema_update(target, source, ema_decay(h))
    assert target.weight.item() == pytest.approx(0.5, rel=1e-6)
    with pytest.raises(ValueError):
        ema_decay(0)
