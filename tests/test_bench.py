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
