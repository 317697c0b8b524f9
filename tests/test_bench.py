"""`distill bench`: the JSON shape every modality's benchmark shares, on the fixture modality."""
from __future__ import annotations

import json

from distill.bench import markdown_table, run_bench


def test_bench_rows_and_file_shape(tmp_path, fixture_plugins):
    out = tmp_path / "mix.json"
    result = run_bench("mix", out=out, workdir=tmp_path / "work", progress=False, methods=["kd", "dmd2"],
                       markdown=tmp_path / "mix.md")
    saved = json.loads(out.read_text())
    assert saved["modality"] == "mix" and saved["rows"] == result["rows"]
    rows = saved["rows"]
    teacher = [r for r in rows if r["method"] == "teacher"]
    assert [(r["sampler"], r["nfe"]) for r in teacher] == [("heun", 11), ("euler", 1), ("euler", 2)]
    assert teacher[0]["speedup_vs_teacher"] == 1.0
    students = {(r["method"], r["steps"]) for r in rows if r["method"] != "teacher"}
    assert students == {("kd", 1), ("dmd2", 1), ("dmd2", 2)}  # kd trains one-step students only
    for r in rows:
        assert {"method", "steps", "nfe", "sliced_wasserstein", "ms_per_sample", "speedup_vs_teacher"} <= set(r)
        assert r["ms_per_sample"] > 0
    for r in rows:
        if r["method"] != "teacher":
            assert r["nfe"] == r["steps"] and r["train_steps"] == 3 and "paired_rmse_vs_teacher" in r
    table = (tmp_path / "mix.md").read_text()
    assert table.count("\n") == len(rows) + 2 and "| teacher |" in table
    assert markdown_table(saved) == table


def test_seeds_average_metrics_and_report_their_spread():
    from distill.bench import aggregate_seeds

    per_seed = [{"fd": 10.0, "acc": 0.9, "weights": [0.5, 0.5]}, {"fd": 14.0, "acc": 0.8, "weights": [0.4, 0.6]},
                {"fd": 12.0, "acc": 0.85, "weights": [0.3, 0.7]}]
    out = aggregate_seeds(per_seed, ["fd"])
    assert out["fd"] == 12.0 and out["fd_std"] == 2.0  # sample std (n - 1) of 10, 14, 12
    assert abs(out["acc"] - 0.85) < 1e-12 and "acc_std" not in out
    assert out["weights"] == [0.5, 0.5]  # lists are not averaged: the first seed's
    assert aggregate_seeds(per_seed[:1], ["fd"]) == per_seed[0]  # one seed: no spread to report


def test_bench_over_several_noise_seeds(tmp_path, fixture_plugins, monkeypatch):
    from distill.plugins import get_manager

    cls = get_manager().modality("mix")
    original = cls.benchmark.__func__

    def three_seeds(klass, quick=False):
        spec = original(klass, quick)
        spec.seeds, spec.std_keys = 3, ["sliced_wasserstein"]
        return spec

    monkeypatch.setattr(cls, "benchmark", classmethod(three_seeds))
    result = run_bench("mix", workdir=tmp_path / "work", progress=False, methods=["kd"])
    assert result["seeds"] == 3
    assert all("sliced_wasserstein_std" in r for r in result["rows"])
    # Three noise draws give three different Heun samples, hence a spread (the 1-NFE teacher
    # collapses every draw onto the mixture mean, so its spread may be exactly 0).
    assert result["rows"][0]["sliced_wasserstein_std"] > 0
    assert {r["method"] for r in result["rows"]} == {"teacher", "kd"}
