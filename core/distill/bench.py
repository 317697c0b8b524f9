"""``distill bench MODALITY``: every compatible method against the teacher, one JSON file.

Each modality describes its benchmark with :class:`BenchSpec` (``Modality.benchmark(quick)``):
the teacher settings to report (with its usual setting, the speed-up baseline), the
run config shared by all students, per-method overrides and training budgets, and
which step counts each method is trained for. The runner trains one student per
(method, steps) within the budget, then samples every row from the same noise and
scores it with ``modality.evaluate``. Rows: ``{"method", "steps", "nfe", <metrics>,
"ms_per_sample", "speedup_vs_teacher", ...}``; teacher rows carry ``"sampler"``.
Times are measured in this one process, so compare them only as ratios.
"""
from __future__ import annotations

import copy
import json
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from distill.engine.io import atomic_write_text
from distill.errors import DistillError
from distill.evaluation import (
    Row,
    generate,
    noise_and_cond,
    paired_rmse,
    records_with_speedup,
    student_sample_fn,
    teacher_sample_fn,
)


@dataclass
class BenchSpec:
    """What ``distill bench <modality>`` runs."""

    teacher_rows: list[dict[str, Any]]  # [{"sampler": "euler", "steps": 1}, ...]; the first flagged "usual" is the baseline
    usual: dict[str, Any]  # the teacher's usual setting, e.g. {"sampler": "heun", "steps": 18}
    base_config: dict[str, Any]  # RunConfig keys shared by every student run
    method_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method overrides
    method_steps: dict[str, list[int]] = field(default_factory=dict)  # default: [1]
    minutes: dict[str, float] = field(default_factory=dict)  # training budget per "method" or "method@steps"
    n_samples: int = 20000
    batch_size: int = 10000
    seed: int = 1234
    metric_keys: list[str] | None = None  # keep only these metrics in rows (None: all)
    default_steps: list[int] = field(default_factory=lambda: [1])


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def run_bench(
    modality_name: str,
    quick: bool = False,
    out: str | Path | None = None,
    device: str = "cpu",
    methods: list[str] | None = None,
    workdir: str | Path | None = None,
    progress: bool = True,
    markdown: str | Path | None = None,
) -> dict[str, Any]:
    from distill.config import _build_run
    from distill.engine.run import build_method, build_modality, load_teacher, train
    from distill.plugins import get_manager

    manager = get_manager()
    modality_cls = manager.modality(modality_name)
    if not hasattr(modality_cls, "benchmark"):
        raise DistillError(f"modality {modality_name!r} defines no benchmark (Modality.benchmark)")
    spec: BenchSpec = modality_cls.benchmark(quick)
    base = _merge(spec.base_config, {"modality": modality_name})
    if device == "cuda":
        base = _merge(base, {"trainer": {"accelerator": "gpu"}})
    cfg0 = _build_run(_merge(base, {"method": "kd"}))
    modality = build_modality(cfg0)
    teacher = load_teacher(cfg0, modality)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    teacher.to(dev)
    # Methods that distil a teacher (not `diffusion`, which trains teachers).
    compatible = [e.name for e in manager.methods.entries() if modality_cls.kind in e.obj.kinds and e.obj.needs_teacher]
    chosen = methods or compatible
    bad = [m for m in chosen if m not in compatible]
    if bad:
        raise DistillError(f"methods {bad} do not support modality {modality_name!r}; compatible: {', '.join(compatible)}")

    noise, cond = noise_and_cond(modality, spec.n_samples, spec.seed, dev)
    reference = modality.reference(spec.n_samples, torch.Generator().manual_seed(spec.seed + 1))

    def score(samples: torch.Tensor) -> dict[str, Any]:
        metrics = modality.evaluate(modality.decode(samples), reference, cond=cond)
        if spec.metric_keys is not None:
            metrics = {k: v for k, v in metrics.items() if k in spec.metric_keys}
        return metrics

    rows: list[Row] = []
    usual_samples = None
    settings = [dict(spec.usual, usual=True)] + [dict(s) for s in spec.teacher_rows if dict(s) != spec.usual]
    for setting in settings:
        usual = setting.pop("usual", False)
        name, k = setting.pop("sampler"), setting.pop("steps")
        gen = generate(teacher_sample_fn(teacher, name, k, **setting), noise, cond, spec.batch_size,
                       label=f"teacher {name} x{k}", progress=progress)
        row = Row("teacher", k, gen.nfe, gen.ms_per_sample, score(gen.samples), {"sampler": name, "usual": usual})
        if usual:
            usual_samples = gen.samples
        rows.append(row)

    tmp = Path(workdir or tempfile.mkdtemp(prefix="distill-bench-"))
    for method in chosen:
        method_cls = manager.method(method)
        steps_list = spec.method_steps.get(method, spec.default_steps)
        for steps in steps_list:
            if method_cls.max_student_steps is not None and steps > method_cls.max_student_steps:
                continue
            run_cfg = _merge(base, spec.method_configs.get(method, {}))
            budget = spec.minutes.get(f"{method}@{steps}", spec.minutes.get(method))
            if budget is not None:
                run_cfg = _merge(run_cfg, {"trainer": {"max_minutes": budget}})
            run_cfg = _merge(run_cfg, {"method": method, "student": {"steps": steps},
                                       "output": {"dir": str(tmp / f"{method}-{steps}")},
                                       "trainer": {"progress": progress}})
            cfg = _build_run(run_cfg)
            if Path(cfg.output.dir).exists():
                shutil.rmtree(cfg.output.dir)
            began = time.perf_counter()
            run = train(cfg)
            seconds = time.perf_counter() - began
            module = run.module
            student = module.student_for_sampling(ema=True).to(dev).eval()
            gen = generate(student_sample_fn(module.method, student, steps, seed=spec.seed), noise, cond,
                           spec.batch_size, label=f"{method} x{steps}", progress=progress)
            metrics = score(gen.samples)
            metrics["paired_rmse_vs_teacher"] = paired_rmse(gen.samples, usual_samples)
            rows.append(Row(method, steps, gen.nfe, gen.ms_per_sample, metrics, {
                "train_steps": int(module.distill_step), "train_seconds": round(seconds, 1)}))
    records = records_with_speedup(rows, rows[0].ms_per_sample)
    result = {
        "modality": modality_name,
        "quick": quick,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "n_samples": spec.n_samples,
        "rows": records,
    }
    if out:
        atomic_write_text(Path(out), json.dumps(result, indent=2) + "\n")
    if markdown:
        atomic_write_text(Path(markdown), markdown_table(result))
    _print(result)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The rows as a Markdown table (what docs/benchmarks.md shows)."""
    rows = result["rows"]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and k != "usual"]

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.4g}"
        if isinstance(value, list):
            return "[" + ", ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in value) + "]"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    rows = result["rows"]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys and not isinstance(r[k], (list, dict))]
    table = Table(title=f"distill bench {result['modality']}")
    for k in keys:
        table.add_column(k)
    for r in rows:
        table.add_row(*[(f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, ""))) for k in keys])
    Console(width=max(160, 12 * len(keys))).print(table)
