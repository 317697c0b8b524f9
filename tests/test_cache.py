"""The on-disk teacher-output cache: keys that see every input, hits, off switch, damage."""
from __future__ import annotations

import torch

from distill.cache import cache_dir, cached_tensors, fingerprint


def test_fingerprint_sees_values_shapes_dtypes_and_weights():
    a = torch.arange(6.0)
    assert fingerprint("x", a) == fingerprint("x", a.clone())
    assert fingerprint("x", a) != fingerprint("y", a)
    assert fingerprint("x", a) != fingerprint("x", a.reshape(2, 3))  # same bytes, other shape
    assert fingerprint("x", a) != fingerprint("x", a.double())
    b = a.clone()
    b[3] += 1e-6
    assert fingerprint(a) != fingerprint(b)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    key = fingerprint(net)
    with torch.no_grad():
        net.weight[0, 0] += 1e-4
    assert fingerprint(net) != key
    assert fingerprint(None, {"k": 1}) == fingerprint(None, {"k": 1}) != fingerprint(None, {"k": 2})
    assert fingerprint(torch.zeros(2, dtype=torch.bfloat16)) != fingerprint(torch.zeros(2, dtype=torch.float16))


def test_cached_tensors_computes_once_and_reads_back(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(4.0)}

    first = cached_tensors("demo", "k1", compute)
    second = cached_tensors("demo", "k1", compute)
    assert len(calls) == 1 and torch.equal(first["x"], second["x"])
    assert (tmp_path / "demo" / "k1.safetensors").exists()
    cached_tensors("demo", "k2", compute)  # another key: computed
    assert len(calls) == 2


def test_cache_off_and_damaged_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILL_CACHE_DIR", "off")
    assert cache_dir() is None
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.ones(2)}

    cached_tensors("demo", "k", compute)
    cached_tensors("demo", "k", compute)
    assert len(calls) == 2  # off: nothing kept
    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    path = tmp_path / "demo" / "k.safetensors"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a safetensors file")
    out = cached_tensors("demo", "k", compute)  # damaged: solved again and replaced
    assert len(calls) == 3 and torch.equal(out["x"], torch.ones(2))
    assert torch.equal(cached_tensors("demo", "k", compute)["x"], torch.ones(2)) and len(calls) == 3


def test_teacher_pairs_are_solved_once_per_teacher_and_settings(tmp_path, monkeypatch, fixture_plugins):
    from distill.config import _build_run
    from distill.engine.run import build_modality, load_teacher
    from distill.methods.pairs import TeacherODE

    monkeypatch.setenv("DISTILL_CACHE_DIR", str(tmp_path))
    cfg = _build_run({"modality": "mix", "method": "kd", "teacher": {"loader": "mix_exact"}})
    modality = build_modality(cfg)
    teacher = load_teacher(cfg, modality)
    ode = TeacherODE("heun", 3)
    solved = []
    original = TeacherODE.endpoint

    def counting(self, *args):
        solved.append(1)
        return original(self, *args)

    monkeypatch.setattr(TeacherODE, "endpoint", counting)
    first = ode.cache(teacher, modality, 64, 32, "test")
    assert len(solved) == 2  # two chunks
    again = ode.cache(teacher, modality, 64, 32, "test")
    assert len(solved) == 2 and torch.equal(first.x0, again.x0) and torch.equal(first.noise, again.noise)
    TeacherODE("heun", 4).cache(teacher, modality, 64, 32, "test")  # other settings: solved
    assert len(solved) == 4
    # another teacher of the same class, whose difference lives outside any state dict: solved
    forward = teacher.net.forward
    monkeypatch.setattr(teacher.net, "forward", lambda *a, **k: forward(*a, **k) + 0.1)
    TeacherODE("heun", 3).cache(teacher, modality, 64, 32, "test")
    assert len(solved) == 4 + 2
    monkeypatch.setattr(teacher.net, "forward", forward)
    # the cached endpoints are the ones a fresh solve gives
    monkeypatch.setenv("DISTILL_CACHE_DIR", "off")
    assert torch.allclose(ode.cache(teacher, modality, 64, 32, "test").x0, first.x0)
