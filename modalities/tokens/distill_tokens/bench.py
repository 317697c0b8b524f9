"""``distill bench tokens [--quick] --out FILE.json``: both languages, the teacher at 64/16/8/4
ancestral steps and every discrete distillation method at 4 steps.

Rows: ``{"task", "method", "steps", "nfe", "validity", "nll", "coverage_kl", "distinct",
"entropy", "ms_per_sample", "speedup_vs_teacher", ...}``; teacher rows carry ``"sampler":
"ancestral"``, student rows their training steps and seconds. Every row of a task samples from
the same noise (the teacher's prior draw and the students' are the same function of it); the
speed-up is against the teacher's 64-step row of the same task, timed in this process.

The core's ``run_bench`` scores one data set per modality; here each language is its own task
(its own bundled teacher), so this module runs the same protocol once per task with the core's
public pieces (:func:`distill.bench.train_students`, :func:`distill.evaluation.generate`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from distill.bench import (BenchSpec, _device_name, _print, bench_base_config, deep_merge, markdown_table,
                          split_task_override, train_students)
from distill.engine.io import atomic_write_text
from distill.errors import DistillError
from distill.evaluation import generate, noise_and_cond, student_sample_fn, teacher_sample_fn

TASKS = ("arithmetic", "chain")
TEACHER_STEPS = (64, 16, 8, 4)
METRICS = ("validity", "nll", "coverage_kl", "distinct", "entropy", "equation_validity")
ORDER = ("sdtt", "lsd", "di4c")
PROTOCOL = ("tokens: teacher and students sample from the same noise per task (prior draw = process.prior_from_noise); "
            "metrics exact under the generating language; nll over valid samples only")


def benchmark(task: str, quick: bool = False) -> BenchSpec:
    """The spec of one task: teacher rows, shared config, per-method recipes and budgets (in steps,
    so a run reproduces on any machine). Students are trained for 4 steps, as the acceptance asks."""
    rounds = 60 if quick else 200  # sdtt: 64 -> 32 -> 16 -> 8 -> 4 is four rounds
    return BenchSpec(
        usual={"sampler": "ancestral", "steps": 64},
        teacher_rows=[{"sampler": "ancestral", "steps": k} for k in TEACHER_STEPS],
        base_config={
            "modality": "tokens",
            "modality_args": {"task": task},
            "data": {"batch_size": 64},
            "ema": {"half_life": 50},
            "trainer": {"cpu_threads": 1, "checkpoint_every": 0, "log_every": 20},
            "eval": {"every": 0},
        },
        method_configs={
            "sdtt": {"method_args": {"teacher_steps": 64, "steps_per_round": rounds, "lr": 3e-4}},
            # lsd with a learned reveal order fitted to the language's data (docs/methods/lsd.md: the
            # data-free variant, fitted to the teacher's samples, inherits the teacher's mistakes)
            "lsd": {"method_args": {"reveal_order": "learned", "order_targets": "data", "lr": 5e-2}},
            "di4c": {"method_args": {"teacher_steps": 64, "components": 4, "lr": 3e-4}, "data": {"batch_size": 32}},
        },
        method_steps={m: [4] for m in ORDER},
        max_steps={"sdtt": 4 * rounds, "lsd": 100 if quick else 300, "di4c": 200 if quick else 800},
        n_samples=1000 if quick else 4000,
        batch_size=1000,
        seed=1234,
        protocol=PROTOCOL,
    )


def _row(task: str, method: str, steps: int, nfe: int, ms: float, metrics: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"task": task, "method": method, "steps": steps, "nfe": nfe, **extra}
    row.update({k: metrics[k] for k in METRICS if k in metrics})
    row["ms_per_sample"] = round(ms, 6)
    return row


def run_task(task: str, quick: bool, device: str, methods: list[str] | None, workdir: Path | None, progress: bool,
             overrides: list[str] | None, reuse: bool) -> list[dict[str, Any]]:
    """Train the students of ``task``, then sample and score the teacher rows and theirs."""
    from distill.config import _build_run
    from distill.engine.run import build_modality, load_teacher
    from distill.plugins import get_manager

    spec = benchmark(task, quick)
    base = bench_base_config(spec, "tokens", overrides, device)
    cfg0 = _build_run(deep_merge(base, {"method": "sdtt"}))
    modality = build_modality(cfg0)
    teacher = load_teacher(cfg0, modality)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    teacher.to(dev).eval()
    compatible = [e.name for e in get_manager().methods.entries() if "discrete" in e.obj.kinds and e.obj.needs_teacher]
    chosen = compatible if methods is None else list(methods)
    bad = [m for m in chosen if m not in compatible]
    if bad:
        raise DistillError(f"methods {bad} do not support the tokens modality; compatible: {', '.join(compatible)}")
    trained = train_students(spec, base, chosen, (workdir / task) if workdir else None, progress, reuse)

    noise, cond = noise_and_cond(modality, spec.n_samples, spec.seed, dev)
    rows: list[dict[str, Any]] = []
    for k in TEACHER_STEPS:
        gen = generate(teacher_sample_fn(teacher, "ancestral", k), noise, cond, spec.batch_size,
                       label=f"{task}: teacher x{k}", progress=progress)
        rows.append(_row(task, "teacher", k, gen.nfe, gen.ms_per_sample, modality.evaluate(gen.samples),
                         {"sampler": "ancestral"}))
    for done in trained:
        student = done.net.to(dev).eval()
        for steps in done.steps:
            gen = generate(student_sample_fn(done.sampler, student, steps, seed=spec.seed), noise, cond,
                           spec.batch_size, label=f"{task}: {done.method} x{steps}", progress=progress)
            rows.append(_row(task, done.method, steps, gen.nfe, gen.ms_per_sample, modality.evaluate(gen.samples),
                             {"train_steps": done.train_steps, "train_seconds": round(done.train_seconds, 1)}))
            if workdir:
                modality.save_samples(gen.samples, workdir / task / f"samples_{done.method}_{steps}.txt",
                                      title=f"{task}: {done.method} x{steps}")
    base_ms = rows[0]["ms_per_sample"]
    for row in rows:
        row["speedup_vs_teacher"] = round(base_ms / row["ms_per_sample"], 3) if row["ms_per_sample"] > 0 else None
    return rows


def run_benchmark(quick: bool = False, out: str | Path | None = None, device: str = "cpu",
                  methods: list[str] | None = None, workdir: str | Path | None = None, progress: bool = True,
                  markdown: str | Path | None = None, merge: bool = False, overrides: list[str] | None = None,
                  reuse: bool = False, tasks: tuple[str, ...] = TASKS) -> dict[str, Any]:
    """Every task in turn (same arguments as :func:`distill.bench.run_bench`); one JSON file."""
    if merge and not out:
        raise DistillError("--merge needs --out: the file whose other methods' rows to keep")
    if reuse and not workdir:
        raise DistillError("--reuse needs --workdir: the folder whose finished student runs to reuse")
    work = Path(workdir) if workdir else None
    # `--set modality_args.task=arithmetic` runs that task only (not recorded as an override)
    named, recorded = split_task_override(overrides, TASKS, "tokens")
    if named:
        tasks = (named,)
    spec = benchmark(tasks[0], quick)
    header = {"modality": "tokens", "quick": quick, "device": _device_name(device), "n_samples": spec.n_samples,
              "seeds": 1, "protocol": PROTOCOL, "overrides": sorted(recorded)}
    rows: list[dict[str, Any]] = []
    for task in tasks:
        rows += run_task(task, quick, device, methods, work, progress, overrides, reuse)
    if merge and Path(out).exists():
        saved = json.loads(Path(out).read_text())
        differ = [k for k in ("quick", "n_samples", "overrides", "protocol") if saved.get(k) != header[k]]
        if differ:
            raise DistillError(f"--merge: {out} was measured under another protocol ({', '.join(differ)}); use another --out")
        ran = {(r["task"], r["method"]) for r in rows}
        rows += [r for r in saved["rows"] if (r["task"], r["method"]) not in ran]
        rank = {m: i for i, m in enumerate(("teacher",) + ORDER)}
        rows.sort(key=lambda r: (TASKS.index(r["task"]) if r["task"] in TASKS else 99, rank.get(r["method"], 99), r["steps"] * (-1 if r["method"] == "teacher" else 1)))
    result = dict(header, rows=rows)
    if out:
        atomic_write_text(Path(out), json.dumps(result, indent=2) + "\n")
    if markdown:
        atomic_write_text(Path(markdown), markdown_table(result))
    _print(result)
    return result
