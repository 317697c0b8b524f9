"""``distill bench policy``: closed-loop success and chunk latency of teachers and one-step students.

For each task (``two_route``; ``pointmaze`` when gymnasium-robotics is installed, full runs
only) the bundled teacher -- a DDPM epsilon-prediction diffusion policy with 100 training
steps -- is rolled out at 100 DDPM steps (``ddim`` with ``eta = 1``, the ancestral sampler it
was trained for: the speed-up baseline), at 10 DDIM steps and at 1 DDIM step (the negative
control: one step of this eps teacher from ``alpha(t_max) = 5e-4`` returns its noise-prediction
error magnified 2,000-fold and clipped to the action box, chunks that zig-zag and arrive late).
One-step students of ``dmd2`` (OneDP-style options, Wang et al. 2024) and ``cd`` (consistency
distillation, as Consistency Policy, Prasad et al. 2024) are trained with
:func:`distill.bench.train_students` and rolled out the same way.

Every row rolls out the same episodes (``episodes`` starts from the environment seed) in
lock-step with batched inference (:func:`distill_policy.rollout.rollout`) and reports
``success`` with its Wilson 95 % interval, ``collision`` and ``mode_fractions``. Latency is a
separate measurement of one robot: the policy at batch 1 on demonstration histories, median
milliseconds per action chunk (``ms_per_chunk``, ``hz = 1000 / ms_per_chunk``, chunks per
second) and ``speedup_vs_teacher`` against the 100-step row timed in the same process.
The recipes are the ones in ``configs/policy/<method>.yaml``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from distill.bench import BenchSpec, bench_base_config, deep_merge, markdown_table, split_task_override, train_students
from distill.cache import fingerprint
from distill.engine.io import atomic_write_text
from distill.errors import DistillError

TASKS = ("two_route", "pointmaze")
QUICK_TASKS = ("two_route",)
METHODS = ("dmd2", "cd")
# (label, sampler, steps, options): the first row is the speed-up baseline
# x0 clipped to the normalised action box at every step: diffusers' clip_sample, on in the
# diffusion-policy configuration (without it, x0 = (x - sigma eps) / alpha at t_max magnifies the
# network's error 2,000-fold and few-step DDIM fails for that reason alone)
CLIP = {"clip_x0": 1.0}
TEACHER_ROWS = (
    ("DDPM", "ddim", 100, {"eta": 1.0, **CLIP}),
    ("DDIM", "ddim", 10, {"eta": 0.0, **CLIP}),
    ("DDIM", "ddim", 1, {"eta": 0.0, **CLIP}),
)
COSINE = {"student": {"decay": "cosine"}}
# OneDP (Wang et al. 2024) distils with DMD's reverse-KL gradient and an action-score network
# initialised from the policy, one score update per generator update, no GAN and no regression.
# Both students keep the teacher's weights but read their output as v (student.prediction): an eps
# network at t_max, where alpha = 5e-4, gives x0 = (x - sigma eps) / alpha, 2,000 times more sensitive
# to its weights than x0 = alpha x - sigma v.
STUDENT = {"steps": 1, "prediction": "v"}
METHOD_CONFIGS: dict[str, dict[str, Any]] = {
    # t_hi = 0.9 (alpha = 0.15) keeps the teacher's and critic's x0, (x - sigma eps) / alpha, within 7x
    # of their eps error; two critic updates per student update. After 300 steps: 97 % success, modes
    # 40/60 (t_hi 0.98 and one critic update: 85 %, 12/87).
    "dmd2": {"method_args": {"critic_updates": 2, "student_lr": 1.0e-4, "critic_lr": 2.0e-4, "t_lo": 0.02, "t_hi": 0.9,
                             "backward_simulation": False, "gan_weight": 0.0},
             "student": STUDENT, "optim": COSINE, "ema": {"half_life": 25}},
    # Consistency Policy (Prasad et al. 2024) distils the teacher's ODE; here a 20-interval DDIM grid with
    # the teacher's x0 clipped as in its sampler (unclipped, the first DDIM step from alpha = 5e-4
    # scrambles routes). The grid sets the route split the student inherits: the teacher's 10-step DDIM
    # sends 34 % of two_route episodes left, its 20- and 100-step DDIM 38-44 % and 39-47 % (two
    # environment seeds), the DDPM sampler 49-52 %; a 20-interval student: 39-45 %.
    "cd": {"method_args": {"num_steps": 20, "skip": 1, "teacher_solver": "ddim", "teacher_clip_x0": 1.0,
                           "target_ema": 0.95, "parameterization": "edm", "sigma_data": 0.5,
                           "distance": "pseudo_huber", "lr": 1.0e-4},
           "student": STUDENT, "optim": COSINE, "ema": {"half_life": 25}},
}
# the modality_args of each task's teacher run (configs/policy/<task>_teacher.yaml): the same
# demonstrations, so the students see observations scaled as the teacher's normaliser scales them
TASK_ARGS = {"two_route": {"task": "two_route"}, "pointmaze": {"task": "pointmaze", "n_demos": 300}}
STEPS = {"dmd2": 600, "cd": 600}
# --quick keeps the students' full budgets (two_route trains both in ~6 CPU minutes) and rolls out fewer
# episodes of one task: at 300 steps the 20-interval cd student was not there yet (77 % success)
QUICK_STEPS = dict(STEPS)
EPISODES = {"quick": 100, "full": 300}
SEED = 1234
LATENCY = {"calls": 20, "min_calls": 3, "max_seconds": 20.0}  # per row: the median of up to 20 batch-1 calls
PROTOCOL = ("episodes from env seed 1234, lock-step batched rollouts; latency = median ms per chunk at batch 1 "
            "on demonstration histories, same process")


def bench_spec(task: str, quick: bool) -> BenchSpec:
    """The students' training spec of one task (rollouts are run here, not by the core's runner)."""
    return BenchSpec(
        teacher_rows=[{"sampler": s, "steps": k, **o} for _, s, k, o in TEACHER_ROWS],
        usual={"sampler": "ddim", "steps": 100, "eta": 1.0},
        base_config={
            "modality_args": dict(TASK_ARGS[task]),
            "data": {"batch_size": 128},
            "trainer": {"max_minutes": None, "log_every": 50, "checkpoint_every": 0, "cpu_threads": None},
        },
        method_configs=METHOD_CONFIGS,
        method_steps={m: [1] for m in METHOD_CONFIGS},
        max_steps=dict(QUICK_STEPS if quick else STEPS),
        n_samples=EPISODES["quick" if quick else "full"],
        seed=SEED,
        protocol=PROTOCOL,
    )


def available_tasks(quick: bool) -> list[str]:
    """Tasks of a run: ``two_route`` always; ``pointmaze`` in full runs when its dependencies import
    and its teacher is installed."""
    from distill_policy.modality import teacher_file

    if quick:
        return list(QUICK_TASKS)
    tasks = ["two_route"]
    if not teacher_file("pointmaze").is_file():
        print("pointmaze skipped: no bundled pointmaze teacher (distill train configs/policy/pointmaze_teacher.yaml)")
        return tasks
    try:
        from distill_policy.tasks import make_task

        make_task("pointmaze")
        tasks.append("pointmaze")
    except (DistillError, ImportError) as error:
        print(f"pointmaze skipped: {error}")
    return tasks


def run_policy_bench(quick: bool = False, out: str | Path | None = None, device: str = "cpu", methods: list[str] | None = None,
                     workdir: str | Path | None = None, progress: bool = True, markdown: str | Path | None = None,
                     merge: bool = False, overrides: list[str] | None = None, reuse: bool = False,
                     tasks: list[str] | None = None) -> dict[str, Any]:
    """Train the students, roll out every row, write ``out`` (JSON), ``markdown`` and rollout plots."""
    from distill.config import _build_run
    from distill.engine.run import build_modality, load_teacher
    from distill.bench import _device_name

    chosen = list(METHODS) if methods is None else list(methods)
    unknown = [m for m in chosen if m not in METHOD_CONFIGS]
    if unknown:
        raise DistillError(f"the policy benchmark has recipes for {', '.join(METHOD_CONFIGS)}; got {unknown}")
    if merge and not out:
        raise DistillError("--merge needs --out: the file whose other rows to keep")
    if reuse and not workdir:
        raise DistillError("--reuse needs --workdir: the folder whose finished student runs to reuse")
    # `--set modality_args.task=pointmaze` runs that task only (not recorded as an override)
    named, overrides = split_task_override(overrides, TASKS, "policy")
    if named:
        tasks = [named]
    tasks = list(tasks) if tasks is not None else available_tasks(quick)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    rows: list[dict[str, Any]] = []
    identities: dict[str, str] = {}
    pictures: list[str] = []
    for task in tasks:
        spec = bench_spec(task, quick)
        base = bench_base_config(spec, "policy", overrides, device)
        cfg0 = _build_run(deep_merge(base, {"method": "kd"}))
        modality = build_modality(cfg0)
        teacher = load_teacher(cfg0, modality).to(dev).eval()
        _check_teacher(teacher, modality, task)
        # the task's definition (time limit, scene) is part of it: rows scored under another one do not merge
        identities[task] = fingerprint(teacher, repr(teacher.process), teacher.prediction, modality.task.describe())
        task_dir = Path(workdir) / task if workdir else None
        trained = train_students(spec, base, chosen, task_dir, progress, reuse)
        task_rows, panels = _rollout_rows(task, modality, teacher, trained, spec, dev, progress)
        rows += task_rows
        if out:
            picture = Path(out).with_name(f"{Path(out).stem}_{task}_rollouts.png")
            from distill_policy.plots import save_rollout_panels

            save_rollout_panels(modality.task, panels, picture, title=f"{task}: {spec.n_samples} episodes, first 100 drawn")
            pictures.append(picture.name)
    header = {
        "modality": "policy",
        "quick": quick,
        "device": _device_name(device),
        "n_samples": EPISODES["quick" if quick else "full"],
        "seeds": 1,
        "teacher_fingerprints": identities,  # per task: rows of another task merge when its teacher is unchanged
        "overrides": sorted(overrides or []),
        "protocol": PROTOCOL,
        "tasks": tasks,
        "pictures": pictures,
    }
    result = dict(header, rows=rows)
    if out:
        with FileLock(str(out) + ".lock"):
            if merge:
                result = _merged(Path(out), header, result)
            atomic_write_text(Path(out), json.dumps(result, indent=2) + "\n")
    if markdown:
        atomic_write_text(Path(markdown), markdown_table(result))
    _print(result)
    return result


def _check_teacher(teacher: Any, modality: Any, task: str) -> None:
    from distill_policy.policies import policy_normalizer

    normalizer = policy_normalizer(teacher)
    normalizer.check("teacher")
    if not normalizer.matches(modality.normalizer):
        raise DistillError(
            f"the {task} teacher's normaliser differs from the statistics of this modality's demonstrations "
            "(modality_args n_demos / data_seed / task differ from the teacher's training run); students would be "
            "distilled on observations scaled differently from the teacher's. Use the teacher's modality_args"
        )


def _rollout_rows(task: str, modality: Any, teacher: Any, trained: list[Any], spec: BenchSpec, dev: torch.device,
                  progress: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    from distill_policy.policies import policy_normalizer, student_act, teacher_act
    from distill_policy.rollout import chunk_latency, rollout

    o = modality.options
    normalizer = policy_normalizer(teacher).cpu()
    bank, _ = modality.normalised()
    bank = bank[torch.randperm(bank.shape[0], generator=torch.Generator().manual_seed(spec.seed))[:64]].to(dev)
    horizon, action_dim = modality.sample_shape

    def on_device(act):
        def run(cond, noise, generator):
            return act(cond.to(dev), noise.to(dev), generator).cpu()
        return run

    def measure(act, label: str) -> tuple[dict[str, Any], Any]:
        act = on_device(act)
        result = rollout(modality.task, act, normalizer, spec.n_samples, spec.seed, int(o.n_obs_steps), int(o.horizon),
                         int(o.n_action_steps), progress=progress, label=f"{task}: {label}")
        latency = chunk_latency(act, bank.cpu(), horizon, action_dim, **LATENCY)
        summary = result.summary()
        summary.pop("episodes")
        return {**summary, **latency}, result

    rows: list[dict[str, Any]] = []
    panels: dict[str, Any] = {}
    for label, sampler, steps, options in TEACHER_ROWS:
        metrics, result = measure(teacher_act(teacher, sampler, steps, **options), f"teacher {label} x{steps}")
        rows.append({"task": task, "method": "teacher", "steps": steps, "nfe": steps,
                     "sampler": f"{label} ({sampler}, eta {options.get('eta', 0.0):g}, clip_x0 {options.get('clip_x0')})",
                     **metrics})
        panels[f"teacher {label} {steps}"] = result
    for done in trained:
        student = done.net.to(dev).eval()
        for steps in done.steps:
            metrics, result = measure(student_act(done.sampler, student, steps), f"{done.method} x{steps}")
            rows.append({"task": task, "method": done.method, "steps": steps, "nfe": steps, **metrics,
                         "train_steps": done.train_steps, "train_seconds": round(done.train_seconds, 1)})
            panels[f"{done.method} {steps}"] = result
    base_ms = rows[0]["ms_per_chunk"]
    for row in rows:
        row["speedup_vs_teacher"] = round(base_ms / row["ms_per_chunk"], 2)
        row["episodes"] = spec.n_samples
        for key in ("success", "collision", "ms_per_chunk", "hz", "jerk"):
            row[key] = None if row[key] is None else round(row[key], 4)
        row["mode_fractions"] = {k: round(v, 4) for k, v in row["mode_fractions"].items()}
    return rows, panels


def _merged(path: Path, header: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Rows of ``result`` plus the saved rows of (task, method) pairs this run did not roll out."""
    from distill.bench import _merge_base

    saved = _merge_base(path, {k: v for k, v in header.items() if k not in ("tasks", "pictures", "teacher_fingerprints")})
    if saved is None:
        return result
    before = saved.get("teacher_fingerprints", {})
    changed = [t for t, f in header["teacher_fingerprints"].items() if t in before and before[t] != f]
    if changed:
        raise DistillError(f"--merge: the {', '.join(changed)} teacher or task definition differs from the one {path} was measured with; "
                           "rerun every method of that task without --merge, or write to another --out")
    ran = {(r["task"], r["method"]) for r in result["rows"]}
    kept = [r for r in saved["rows"] if (r["task"], r["method"]) not in ran]
    rows = result["rows"] + kept
    order = {t: i for i, t in enumerate(TASKS)}
    rows.sort(key=lambda r: (order.get(r["task"], 99), r["method"] != "teacher", r["method"], -r["steps"] if r["method"] == "teacher" else r["steps"]))
    fingerprints = {**before, **header["teacher_fingerprints"]}
    pictures = list(dict.fromkeys(saved.get("pictures", []) + result["pictures"]))
    return dict(result, rows=rows, tasks=sorted({r["task"] for r in rows}, key=lambda t: order.get(t, 99)),
                teacher_fingerprints=fingerprints, pictures=pictures)


def _print(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    keys = ["task", "method", "steps", "nfe", "success", "success_ci95", "collision", "mode_fractions", "ms_per_chunk",
            "hz", "speedup_vs_teacher"]
    table = Table(title="distill bench policy")
    for k in keys:
        table.add_column(k)

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, dict):
            return ", ".join(f"{a} {b:.2f}" for a, b in v.items())
        if isinstance(v, list):
            return "[" + ", ".join(f"{x:.2f}" for x in v) + "]"
        return str(v)

    for r in result["rows"]:
        table.add_row(*[cell(r.get(k, "")) for k in keys])
    Console(width=180).print(table)
