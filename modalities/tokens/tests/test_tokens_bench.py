"""The tokens benchmark: its spec, and a tiny end-to-end run (both languages' bundled teachers)."""
from __future__ import annotations

import json

import pytest

from distill_tokens import bench
from distill_tokens.modality import teacher_file

ROW_KEYS = {"task", "method", "steps", "validity", "nll", "coverage_kl", "distinct", "entropy", "ms_per_sample",
            "speedup_vs_teacher"}


def test_spec_has_the_teacher_rows_and_every_discrete_method():
    for quick in (True, False):
        spec = bench.benchmark("arithmetic", quick)
        assert [r["steps"] for r in spec.teacher_rows] == [64, 16, 8, 4] and spec.usual["steps"] == 64
        assert set(spec.method_steps) == {"sdtt", "lsd", "di4c"} and all(v == [4] for v in spec.method_steps.values())
        # sdtt's budget covers its four halvings 64 -> 4
        assert spec.max_steps["sdtt"] == 4 * spec.method_configs["sdtt"]["method_args"]["steps_per_round"]


def test_tiny_benchmark_end_to_end(tmp_path, monkeypatch):
    if not teacher_file("arithmetic").is_file():
        pytest.skip("the arithmetic teacher is not bundled yet")
    real = bench.benchmark

    def tiny(task, quick=False):
        spec = real(task, quick=True)
        spec.n_samples, spec.batch_size = 40, 40
        spec.method_configs["sdtt"]["method_args"]["steps_per_round"] = 1
        spec.max_steps = {"sdtt": 4}
        return spec

    monkeypatch.setattr(bench, "benchmark", tiny)
    out = tmp_path / "tokens.json"
    result = bench.run_benchmark(quick=True, out=out, methods=["sdtt"], workdir=tmp_path / "work", progress=False,
                                 overrides=["modality_args.task=arithmetic"])
    saved = json.loads(out.read_text())
    assert saved["rows"] == result["rows"]
    rows = result["rows"]
    assert [(r["method"], r["steps"]) for r in rows] == [("teacher", 64), ("teacher", 16), ("teacher", 8),
                                                          ("teacher", 4), ("sdtt", 4)]
    assert all(ROW_KEYS <= set(r) and r["task"] == "arithmetic" for r in rows)
    assert rows[0]["speedup_vs_teacher"] == 1.0 and rows[-1]["speedup_vs_teacher"] > 4
    assert (tmp_path / "work" / "arithmetic" / "samples_sdtt_4.txt").is_file()
