"""``distill demo``: distil a bundled teacher into a one-step student and write a report.

It needs no network, no GPU and no arguments. Each modality that has a bundled teacher
describes its demo with a classmethod ``demo_plan() -> DemoPlan``; the demo uses the
first installed modality in :data:`PREFERENCE` (the image plugin's digits teacher when
present, else the toy modality's exact 8-mode mixture teacher), trains a one-step
``dmd2`` student within the time budget (its learning-rate decay spans that budget,
so ``--minutes N`` anneals over N minutes), then evaluates teacher and student from
the same noise and writes ``report.md`` with the table and pictures.
"""
from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.errors import DistillError

PREFERENCE = ["image", "toy"]  # the richest demo first


@dataclass
class DemoPlan:
    """What ``distill demo`` runs for a modality."""

    minutes: float  # default distillation budget (wall clock)
    config: dict[str, Any]  # the run config (RunConfig keys); trainer.max_minutes is set from the budget
    teacher: str  # a few words naming the bundled teacher, for the console


def choose_plan(modality: str | None = None) -> tuple[str, DemoPlan]:
    """The (modality name, plan) the demo runs: ``modality`` if given, else the first preferred one installed."""
    from distill.plugins import get_manager

    manager = get_manager()
    installed = [name for name in manager.modalities if hasattr(manager.modality(name), "demo_plan")]
    if modality is not None:
        if modality not in installed:
            raise DistillError(f"modality {modality!r} has no demo here; modalities with a demo: {', '.join(installed) or 'none'}")
        return modality, manager.modality(modality).demo_plan()
    ordered = [n for n in PREFERENCE if n in installed] + sorted(n for n in installed if n not in PREFERENCE)
    if not ordered:
        raise DistillError("no modality with a demo is installed; run `make install` (it installs modalities/toy and modalities/image)")
    return ordered[0], manager.modality(ordered[0]).demo_plan()


def run_demo(minutes: float | None = None, device: str = "cpu", out: str | None = None,
             modality: str | None = None) -> Path:
    from distill.config import _build_run
    from distill.engine.run import train
    from distill.report import evaluate_run

    name, plan = choose_plan(modality)
    run_dir = Path(out or "runs/demo")
    if run_dir.exists():
        shutil.rmtree(run_dir)  # the demo always starts fresh
    config = copy.deepcopy(plan.config)
    config["trainer"] = dict(config.get("trainer", {}), max_minutes=minutes or plan.minutes,
                             accelerator="gpu" if device == "cuda" else "cpu")
    config["output"] = {"dir": str(run_dir)}
    print(f"distill demo ({name}): distilling {plan.teacher} into a one-step {config['method']} student "
          f"for {config['trainer']['max_minutes']:g} minutes on {device}; run directory {run_dir}")
    train(_build_run(config))
    evaluate_run(run_dir)
    print(f"\nreport: {run_dir / 'report.md'}  (pictures in {run_dir / 'samples'})")
    return run_dir
