"""``distill bench policy`` end to end on a tiny budget (the bundled two_route teacher)."""
from __future__ import annotations

import json

import pytest

import distill_policy.bench as bench

ROW_KEYS = {"task", "method", "steps", "nfe", "success", "success_ci95", "collision", "mode_fractions", "ms_per_chunk",
            "hz", "speedup_vs_teacher"}


@pytest.mark.slow
def test_bench_rows_pictures_and_merge(tmp_path, monkeypatch):
    # 8 episodes, teacher rows at 4/2/1 steps, 2 training steps per student, 2 latency calls
    monkeypatch.setattr(bench, "EPISODES", {"quick": 8, "full": 8})
    monkeypatch.setattr(bench, "QUICK_STEPS", {"dmd2": 2, "cd": 2})
    monkeypatch.setattr(bench, "TEACHER_ROWS", (("DDPM", "ddim", 4, {"eta": 1.0}), ("DDIM", "ddim", 2, {"eta": 0.0}),
                                                ("DDIM", "ddim", 1, {"eta": 0.0})))
    monkeypatch.setattr(bench, "LATENCY", {"calls": 2, "min_calls": 1, "max_seconds": 1.0})
    out = tmp_path / "policy.json"
    result = bench.run_policy_bench(quick=True, out=out, methods=["dmd2"], workdir=tmp_path / "work", progress=False,
                                    markdown=tmp_path / "policy.md")
    rows = result["rows"]
    assert [(r["method"], r["steps"]) for r in rows] == [("teacher", 4), ("teacher", 2), ("teacher", 1), ("dmd2", 1)]
    for row in rows:
        assert ROW_KEYS <= set(row) and row["task"] == "two_route" and row["episodes"] == 8
        lo, hi = row["success_ci95"]
        assert 0.0 <= lo <= row["success"] <= hi <= 1.0
        assert set(row["mode_fractions"]) == {"left", "right"} and sum(row["mode_fractions"].values()) <= 1.0 + 1e-9
        assert row["hz"] == pytest.approx(1000.0 / row["ms_per_chunk"], rel=1e-3)
    assert rows[0]["speedup_vs_teacher"] == 1.0
    assert rows[3]["train_steps"] == 2
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and saved["quick"] is True and saved["tasks"] == ["two_route"]
    assert (tmp_path / "policy_two_route_rollouts.png").is_file() and "| task |" in (tmp_path / "policy.md").read_text()
    # --merge: a cd-only run keeps the dmd2 row and replaces the teacher rows
    merged = bench.run_policy_bench(quick=True, out=out, methods=["cd"], workdir=tmp_path / "work", progress=False,
                                    merge=True)
    assert [(r["method"], r["steps"]) for r in merged["rows"]] == [("teacher", 4), ("teacher", 2), ("teacher", 1),
                                                                   ("cd", 1), ("dmd2", 1)]


def test_yaml_recipes_are_the_benchmark_recipes():
    """configs/policy/<method>.yaml train what `distill bench policy` trains (same method and student settings)."""
    import pathlib

    from omegaconf import OmegaConf

    root = pathlib.Path(__file__).resolve().parents[3] / "configs" / "policy"
    for method, recipe in bench.METHOD_CONFIGS.items():
        cfg = OmegaConf.to_container(OmegaConf.load(root / f"{method}.yaml"))
        assert cfg["method"] == method and cfg["modality_args"]["task"] == "two_route"
        assert cfg["method_args"] == recipe["method_args"]
        assert cfg["student"] == recipe["student"] and cfg["ema"] == recipe["ema"] and cfg["optim"] == recipe["optim"]
        assert cfg["trainer"]["max_steps"] == bench.STEPS[method]
        assert cfg["teacher_sampler"] == {"name": "ddim", "steps": 100, **bench.TEACHER_ROWS[0][3]}


def test_task_arguments_are_the_teacher_runs():
    """Students must be distilled on the teacher's demonstrations (its normaliser's statistics)."""
    import pathlib

    from omegaconf import OmegaConf

    root = pathlib.Path(__file__).resolve().parents[3] / "configs" / "policy"
    defaults = {"n_obs_steps": 2, "horizon": 16, "n_action_steps": 8, "n_demos": 500}
    for task, args in bench.TASK_ARGS.items():
        teacher = OmegaConf.to_container(OmegaConf.load(root / f"{task}_teacher.yaml"))["modality_args"]
        assert {**defaults, **args} == {**defaults, **teacher}


def test_merge_keeps_other_tasks_and_refuses_a_changed_teacher(tmp_path):
    """A run of one task (``--set modality_args.task=pointmaze``) merges into a file measured on
    another: each task's rows carry their own teacher fingerprint, checked where both files have it."""
    from distill.errors import DistillError

    def header(fingerprints):
        return {"modality": "policy", "quick": False, "n_samples": 300, "seeds": 1, "overrides": [],
                "protocol": bench.PROTOCOL, "teacher_fingerprints": fingerprints, "tasks": list(fingerprints),
                "pictures": [f"policy_{t}_rollouts.png" for t in fingerprints]}

    def row(task, method, steps=1):
        return {"task": task, "method": method, "steps": steps}

    path = tmp_path / "policy.json"
    path.write_text(json.dumps(dict(header({"two_route": "a"}), rows=[row("two_route", "teacher", 100), row("two_route", "cd")])))
    new = header({"pointmaze": "b"})
    merged = bench._merged(path, new, dict(new, rows=[row("pointmaze", "teacher", 100), row("pointmaze", "cd")]))
    assert [(r["task"], r["method"]) for r in merged["rows"]] == [("two_route", "teacher"), ("two_route", "cd"),
                                                                  ("pointmaze", "teacher"), ("pointmaze", "cd")]
    assert merged["teacher_fingerprints"] == {"two_route": "a", "pointmaze": "b"}
    assert merged["tasks"] == ["two_route", "pointmaze"] and len(merged["pictures"]) == 2
    changed = header({"two_route": "c"})
    with pytest.raises(DistillError, match="two_route teacher or task definition differs"):
        bench._merged(path, changed, dict(changed, rows=[row("two_route", "dmd2")]))
