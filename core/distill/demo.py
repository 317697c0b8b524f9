"""``distill demo``: distil a bundled teacher into a one-step student and write a report.

It needs no network, no GPU and no arguments. It uses the richest modality that is
installed (the image plugin's digits teacher when present, else the toy modality's
exact 8-mode mixture teacher), trains a one-step ``dmd2`` student within the time
budget, then evaluates teacher and student from the same noise and writes
``report.md`` with the table and pictures.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from distill.errors import DistillError

# Demo plans in order of preference: (modality, default minutes, run config).
PLANS: list[tuple[str, float, dict[str, Any]]] = [
    ("toy", 3.0, {
        "modality": "toy",
        "modality_args": {"dataset": "ring8"},
        "method": "dmd2",
        "method_args": {"critic_updates": 2, "student_lr": 1e-3, "critic_lr": 3e-3, "critic_prediction": "flow"},
        "teacher": {"loader": "exact", "process": "flow"},
        "teacher_sampler": {"name": "heun", "steps": 18},
        "student": {"steps": 1},
        "data": {"batch_size": 512},
        "ema": {"half_life": 200},
        "trainer": {"max_steps": 1_000_000, "log_every": 500, "checkpoint_every": 5000},
        "eval": {"n_samples": 50_000, "steps": [1], "batch_size": 10_000},  # a one-step student
    }),
]


def run_demo(minutes: float | None = None, device: str = "cpu", out: str | None = None) -> Path:
    from distill.config import _build_run
    from distill.engine.run import train
    from distill.plugins import get_manager
    from distill.report import evaluate_run

    manager = get_manager()
    plan = next((p for p in PLANS if p[0] in manager.modalities), None)
    if plan is None:
        raise DistillError("no demo modality is installed; run `make install` (it installs modalities/toy)")
    name, default_minutes, config = plan
    run_dir = Path(out or "runs/demo")
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts fresh
    config = dict(config)
    config["trainer"] = dict(config["trainer"], max_minutes=minutes or default_minutes,
                             accelerator="gpu" if device == "cuda" else "cpu")
    config["output"] = {"dir": str(run_dir)}
    print(f"distill demo: distilling the bundled {name} teacher into a one-step dmd2 student "
          f"for {config['trainer']['max_minutes']:g} minutes on {device}; run directory {run_dir}")
    train(_build_run(config))
    evaluate_run(run_dir)
    print(f"\nreport: {run_dir / 'report.md'}  (pictures in {run_dir / 'samples'})")
    return run_dir
