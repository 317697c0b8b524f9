"""Evaluate a run (teacher vs student from the same noise) and write ``report.md``.

``report.md`` is what a person reads first: quality of the teacher at its usual
step count and at one step (the negative control) against the student at the
steps it was trained for, NFE, time per sample measured in the same process, the
speed-up, the paired distance between student and teacher samples drawn from the
same noise, and pictures of each.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from distill.engine.io import atomic_write_text
from distill.evaluation import (
    Row,
    generate,
    noise_and_cond,
    records_with_speedup,
    score,
    student_sample_fn,
    teacher_sample_fn,
)


def teacher_settings(cfg) -> list[dict[str, Any]]:
    usual = dict(cfg.teacher_sampler)
    usual.setdefault("name", "heun")
    usual.setdefault("steps", 18)
    from distill.samplers import DISCRETE_SAMPLERS

    # The negative control: one step of the ODE (Euler), or of the token sampler for a token teacher.
    control = usual["name"] if usual["name"] in DISCRETE_SAMPLERS else "euler"
    return [usual, {"name": control, "steps": 1, "schedule": usual.get("schedule", "uniform")}]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def evaluate_run(run_dir: Path, n: int | None = None, steps: list[int] | None = None, progress: bool = True) -> list[dict[str, Any]]:
    from distill.engine.run import open_run

    run = open_run(run_dir)
    cfg, modality = run.cfg, run.modality
    n = n or cfg.eval.n_samples
    steps = steps or list(cfg.eval.steps)
    noise, cond = noise_and_cond(modality, n, cfg.eval.seed)
    reference = modality.reference(n, torch.Generator().manual_seed(cfg.eval.seed + 1))
    samples_dir = Path(run_dir) / "samples"
    rows: list[Row] = []
    panels: dict[str, torch.Tensor] = {}
    teacher_usual = None
    for setting in (teacher_settings(cfg) if run.teacher is not None else []):
        setting = dict(setting)
        name, k = setting.pop("name"), setting.pop("steps")
        fn = teacher_sample_fn(run.teacher, name, k, **setting)
        gen = generate(fn, noise, cond, cfg.eval.batch_size, label=f"teacher {name} x{k}", progress=progress)
        samples = modality.decode(gen.samples)
        metrics = score(modality, samples, reference, cond, teacher_usual[1] if teacher_usual else None)
        row = Row("teacher", k, gen.nfe, gen.ms_per_sample, metrics, {"sampler": name})
        if teacher_usual is None:
            teacher_usual = (row, samples)
        rows.append(row)
        panels[f"teacher {name}, {gen.nfe} NFE"] = samples
    for k in steps:
        fn = student_sample_fn(run.method, run.student, k)
        gen = generate(fn, noise, cond, cfg.eval.batch_size, label=f"student x{k}", progress=progress)
        samples = modality.decode(gen.samples)
        metrics = score(modality, samples, reference, cond, teacher_usual[1] if teacher_usual else None)
        if teacher_usual is None:
            teacher_usual = (Row(cfg.method, k, gen.nfe, gen.ms_per_sample), samples)  # the baseline row
        rows.append(Row(cfg.method, k, gen.nfe, gen.ms_per_sample, metrics, {"sampler": "student"}))
        panels[f"student ({cfg.method}), {gen.nfe} NFE"] = samples
    records = records_with_speedup(rows, teacher_usual[0].ms_per_sample)
    pictures = save_panels(modality, panels, samples_dir, cond)
    atomic_write_text(Path(run_dir) / "eval.json", json.dumps({"rows": records}, indent=2))
    _write_report(run, records, pictures, n)
    _print_rows(records)
    return records


def save_panels(modality, panels: dict[str, torch.Tensor], samples_dir: Path, cond: Any = None,
                name: str = "comparison") -> list[Path]:
    """``panels`` side by side in ``samples_dir/<name>.png`` (the modality's comparison writer),
    or one ``save_samples`` file per panel for a modality without one."""
    samples_dir.mkdir(parents=True, exist_ok=True)
    compare = getattr(modality, "save_comparison", None)
    if compare is not None:
        target = samples_dir / f"{name}.png"
        return list(compare(panels, target, cond=cond) or [target])
    files: list[Path] = []
    for i, (title, samples) in enumerate(panels.items()):
        files.extend(modality.save_samples(samples, samples_dir / f"{name}_panel{i}.png", title=title, cond=cond))
    return files


def diagnostics_section(run_dir: Path) -> list[str]:
    """Report lines on the training diagnostics in ``metrics.jsonl`` (empty when there were none)."""
    metrics_file = Path(run_dir) / "metrics.jsonl"
    if not metrics_file.is_file():
        return []
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    checks = [r for r in records if "diagnostics/diversity" in r]
    if not checks:
        return []
    lines = ["", "## Training diagnostics", ""]
    collapsed = [str(r["step"]) for r in checks if r.get("diagnostics/collapse")]
    diverged = [str(r["step"]) for r in checks if r.get("diagnostics/divergence")]
    if collapsed:
        lines.append(f"**Collapse alarm** at step(s) {', '.join(collapsed)}: the student's sample diversity fell below "
                     "`eval.collapse_fraction` of the teacher's (see `metrics.jsonl`, `diagnostics/*`).")
    if diverged:
        lines.append(f"**Divergence alarm** at step(s) {', '.join(diverged)}: the student's sample diversity rose above "
                     "`1 / eval.collapse_fraction` times the teacher's.")
    if not collapsed and not diverged:
        lines.append("No alarm: the student's sample diversity stayed within `eval.collapse_fraction` of the teacher's, "
                     "and below its inverse.")
    if any("diagnostics/diversity_ratio" in r for r in checks):
        trend = ", ".join(f"{r['step']}: {r['diagnostics/diversity_ratio']:.2f}" for r in checks[-8:])
        lines += ["", f"Diversity relative to the teacher (step: ratio): {trend}."]
    signal = {k.split("t=")[-1]: v for k, v in checks[-1].items() if k.startswith("diagnostics/critic_signal/")}
    if signal:
        values = ", ".join(f"t={t}: {q:.2f}" for t, q in signal.items())
        lines += ["", f"Critic signal at the last check (step {checks[-1]['step']}), by noise level: {values}. 1: the score "
                  "difference the critic feeds the student is all signal; 0: its error is as large as the signal; -1: "
                  "all error (`distill.engine.diagnostics.critic_signal`)."]
    pictures = sorted((Path(run_dir) / "samples" / "diagnostics").glob("step_*"))
    if pictures:
        last = pictures[-1]
        lines += ["", "Student samples, and the teacher's and critic's x0 predictions of them re-noised, at the last check:",
                  "", f"![{last.stem}]({last.relative_to(run_dir)})"]
    return lines


def _write_report(run, records: list[dict[str, Any]], pictures: list[Path], n: int) -> None:
    cfg = run.cfg
    keys = ["method", "sampler", "steps", "nfe"]
    metric_keys = [k for k in records[0] if k not in keys + ["ms_per_sample", "speedup_vs_teacher"] and not isinstance(records[0][k], list)]
    extra = [k for r in records for k in r if k not in keys + metric_keys + ["ms_per_sample", "speedup_vs_teacher"] and not isinstance(r[k], list)]
    metric_keys += sorted(set(extra))
    header = keys + metric_keys + ["ms_per_sample", "speedup_vs_teacher"]
    if run.teacher is not None:
        teacher = json.dumps(cfg.teacher) if cfg.teacher else json.dumps(run.modality.default_teacher())
        who = (f"Student: `{run.student_file.name}` ({cfg.student.steps}-step training); teacher `{teacher}` "
               f"at its usual setting `{json.dumps(cfg.teacher_sampler)}` and at 1 NFE (the negative control).")
    else:
        who = f"Model: `{run.student_file.name}` trained from data by `{cfg.method}` (no teacher), sampled at several step counts."
    lines = [
        f"# distill report: {cfg.method} on {cfg.modality}",
        "",
        f"{who} {n} samples per row from the same noise (seed {cfg.eval.seed}). "
        "Times are per sample, measured in this process; compare them as ratios.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in records:
        lines.append("| " + " | ".join(_fmt(r.get(k, "")) for k in header) + " |")
    lines += ["", "`paired_*`: distance to the teacher's sample from the same noise (its usual setting).", ""]
    for p in pictures:
        lines.append(f"![{p.stem}]({Path(p).relative_to(run.run_dir)})")
    lines += diagnostics_section(run.run_dir)
    metrics_file = Path(run.run_dir) / "metrics.jsonl"
    if metrics_file.is_file():
        last = metrics_file.read_text().strip().splitlines()[-1:]
        if last:
            lines += ["", "Last training log line (`metrics.jsonl`):", "", "```", last[0], "```"]
    atomic_write_text(Path(run.run_dir) / "report.md", "\n".join(lines) + "\n")


def _print_rows(records: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="teacher vs student")
    keys = [k for k in records[0] if not isinstance(records[0][k], list)]
    for k in keys:
        table.add_column(k)
    for r in records:
        table.add_row(*[_fmt(r.get(k, "")) for k in keys])
    Console(width=max(120, 14 * len(keys))).print(table)
