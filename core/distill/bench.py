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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from omegaconf import OmegaConf

from distill.cache import cached_tensors, fingerprint
from distill.engine.io import atomic_write_text
from distill.errors import DistillError
from distill.evaluation import (
    Generated,
    Row,
    generate,
    noise_and_cond,
    records_with_speedup,
    score,
    student_sample_fn,
    teacher_sample_fn,
)


# The reference draw's seed sits apart from the noise seeds (seed, seed + 1, ...) and from
# the students' re-noising stream (seed + RENOISE_SEED_OFFSET), so no two share a stream.
REFERENCE_SEED_OFFSET = 2_000_029


@dataclass
class BenchSpec:
    """What ``distill bench <modality>`` runs."""

    teacher_rows: list[dict[str, Any]]  # [{"sampler": "euler", "steps": 1}, ...]; the first flagged "usual" is the baseline
    usual: dict[str, Any]  # the teacher's usual setting, e.g. {"sampler": "heun", "steps": 18}
    base_config: dict[str, Any]  # RunConfig keys shared by every student run
    method_configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-method overrides
    # Two-stage recipes: entry -> the entry whose trained student it starts from (``student.init``:
    # its EMA export). An entry that is not a method name says which method it trains with a
    # "method" key in its method_configs, e.g. {"kd+dmd2": "kd"} with method_configs["kd+dmd2"]
    # = {"method": "dmd2", ...}. Its rows report the two stages' training steps and seconds added.
    warm_starts: dict[str, str] = field(default_factory=dict)
    method_steps: dict[str, list[int]] = field(default_factory=dict)  # default: [1]
    # Training budgets per "method" or "method@steps" ("method@steps" wins). A step budget
    # reproduces bitwise on any machine and lets a learning-rate decay span the run; a
    # wall-clock budget stops at a load-dependent step. A run with both stops at the first.
    max_steps: dict[str, int] = field(default_factory=dict)
    minutes: dict[str, float] = field(default_factory=dict)
    n_samples: int = 20000
    batch_size: int = 10000
    seed: int = 1234
    # Noise seeds per row (seed, seed + 1, ...): scalar metrics are averaged over them, and
    # ``<key>_std`` (sample standard deviation across seeds) is added for each of std_keys.
    seeds: int = 1
    std_keys: list[str] = field(default_factory=list)
    metric_keys: list[str] | None = None  # keep only these metrics in rows (None: all)
    default_steps: list[int] = field(default_factory=lambda: [1])
    # How the modality scores, in words (e.g. how evaluation conditions are drawn); part of
    # the result's header, so --merge never mixes rows scored under two protocols.
    protocol: str = ""


@dataclass
class TrainedStudent:
    """A trained (or reused) student and what training it cost."""

    method: str
    steps: list[int]  # the step counts it is sampled at
    sampler: Any  # the Method whose ``sample`` runs it
    net: Any  # the Denoiser to sample (EMA weights when the run kept them)
    train_steps: int
    train_seconds: float  # the training loop's time (metrics.jsonl), set-up excluded
    run_dir: Path  # where it was trained (its export starts a warm-started entry)


def deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b`` merged into a copy of ``a``, nested dicts key by key (b wins)."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def entry_method(spec: BenchSpec, entry: str) -> str:
    """The registered method a benchmark entry trains: its config's ``method``, else its own name."""
    return spec.method_configs.get(entry, {}).get("method", entry)


def bench_entries(spec: BenchSpec, methods: list[str]) -> list[str]:
    """``methods`` (the compatible registered ones) plus the spec's two-stage entries whose
    method and start are among them, in that order."""
    chained = [e for e in spec.warm_starts
               if entry_method(spec, e) in methods and spec.warm_starts[e] in methods and e not in methods]
    return list(methods) + chained


def _budget(spec: BenchSpec, method: str, steps: int) -> dict[str, Any]:
    """Trainer overrides for the budget of (method, steps): ``method@steps`` beats ``method``."""
    out: dict[str, Any] = {}
    for key, table in (("max_steps", spec.max_steps), ("max_minutes", spec.minutes)):
        value = table.get(f"{method}@{steps}", table.get(method))
        if value is not None:
            out[key] = value
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
    merge: bool = False,
    overrides: list[str] | None = None,
    reuse: bool = False,
) -> dict[str, Any]:
    """Train every chosen method's students, then sample and score the teacher rows and theirs.

    Students train first, so a recipe that fails stops the run before any sampling. The
    teacher's samples (its usual setting is the costliest row, and the paired metrics'
    baseline) come from the on-disk cache (:mod:`distill.cache`) when the same teacher drew
    the same noise before; their ``ms_per_sample`` is then timed on one fresh batch.
    ``methods=[]`` measures the teacher rows only (and fills the cache). With ``merge``,
    rows of methods this run does not train are kept from ``out`` (same modality, budget
    kind, sample count, seeds and teacher, or an error), so a long benchmark can be run a
    few methods at a time, in parallel processes: the read-merge-write of ``out`` is locked.
    Each method row's ``speedup_vs_teacher`` is against the teacher timed in its own process.
    With ``reuse`` (needs ``workdir``), a student whose run directory in ``workdir`` holds a
    finished run of exactly the config this benchmark would train is loaded instead of
    retrained (its ``train_seconds`` are the ones that run logged), so a change in scoring
    re-scores the same students.
    ``overrides`` (``key=value`` dotlist, e.g. ``modality_args.dataset=ring8_unequal``) change
    the config of every run, the teacher's included; they are recorded in the result.
    """
    from distill.config import _build_run
    from distill.engine.run import build_modality, load_teacher
    from distill.methods.pairs import teacher_identity
    from distill.plugins import get_manager

    manager = get_manager()
    modality_cls = manager.modality(modality_name)
    if hasattr(modality_cls, "run_benchmark"):  # a benchmark that is not sample-and-score (e.g. rollouts)
        return modality_cls.run_benchmark(quick=quick, out=out, device=device, methods=methods, workdir=workdir,
                                          progress=progress, markdown=markdown, merge=merge, overrides=overrides,
                                          reuse=reuse)
    if not hasattr(modality_cls, "benchmark"):
        raise DistillError(f"modality {modality_name!r} defines no benchmark (Modality.benchmark)")
    spec: BenchSpec = modality_cls.benchmark(quick)
    base = bench_base_config(spec, modality_name, overrides, device)
    cfg0 = _build_run(deep_merge(base, {"method": "kd"}))
    modality = build_modality(cfg0)
    teacher = load_teacher(cfg0, modality)
    dev = torch.device("cuda" if device == "cuda" else "cpu")
    teacher.to(dev)
    # Methods that distil a teacher (not `diffusion`, which trains teachers), then two-stage entries.
    compatible = bench_entries(spec, [e.name for e in manager.methods.entries()
                                      if modality_cls.kind in e.obj.kinds and e.obj.needs_teacher])
    chosen = compatible if methods is None else list(methods)  # []: the teacher rows only
    bad = [m for m in chosen if m not in compatible]
    if bad:
        raise DistillError(f"methods {bad} do not support modality {modality_name!r}; compatible: {', '.join(compatible)}")
    if spec.seeds < 1:
        raise DistillError(f"BenchSpec.seeds must be at least 1; got {spec.seeds}")
    if merge and not out:
        raise DistillError("--merge needs --out: the file whose other methods' rows to keep")
    if reuse and not workdir:
        raise DistillError("--reuse needs --workdir: the folder whose finished student runs to reuse")

    draws = [noise_and_cond(modality, spec.n_samples, spec.seed + s, dev) for s in range(spec.seeds)]
    header = {
        "modality": modality_name,
        "quick": quick,
        "device": _device_name(device),
        "n_samples": spec.n_samples,
        "seeds": spec.seeds,
        "teacher_fingerprint": fingerprint(teacher_identity(teacher, *draws[0])),
        "overrides": sorted(overrides or []),
        "protocol": spec.protocol,
    }
    if merge:
        _merge_base(Path(out), header)  # fail before hours of training, not after

    # 1. Train.
    trained = train_students(spec, base, chosen, workdir, progress, reuse)

    reference = modality.reference(spec.n_samples, torch.Generator().manual_seed(spec.seed + REFERENCE_SEED_OFFSET))
    usual_samples: list[torch.Tensor] = []  # the teacher's usual-setting samples, per seed

    def measure(make_fn, label: str, cache_key: str | None = None) -> tuple[int, float, dict[str, Any], list[torch.Tensor]]:
        """Sample and score one row on every noise seed; returns nfe, ms/sample, metrics, samples."""
        per_seed, times, outputs, nfe = [], [], [], 0
        for s, (noise, cond) in enumerate(draws):
            seed_label = label + (f" (seed {s + 1}/{spec.seeds})" if spec.seeds > 1 else "")
            if cache_key is None:
                gen = generate(make_fn(s), noise, cond, spec.batch_size, label=seed_label, progress=progress)
            else:
                gen = _cached_generate(make_fn(s), noise, cond, spec.batch_size, seed_label, progress,
                                       fingerprint(cache_key, noise, cond if isinstance(cond, torch.Tensor) else repr(cond)))
            samples = modality.decode(gen.samples)
            metrics = score(modality, samples, reference, cond, usual_samples[s] if len(usual_samples) > s else None)
            if spec.metric_keys is not None:
                metrics = {k: v for k, v in metrics.items() if k in spec.metric_keys or k.startswith("paired_")}
            per_seed.append(metrics)
            times.append(gen.ms_per_sample)
            outputs.append(samples)
            nfe = gen.nfe
        return nfe, sum(times) / len(times), aggregate_seeds(per_seed, spec.std_keys), outputs

    # 2. The teacher rows; the usual setting first (the speed-up baseline and paired metrics' reference).
    rows: list[Row] = []
    settings = [dict(spec.usual, usual=True)] + [dict(s) for s in spec.teacher_rows if dict(s) != spec.usual]
    for setting in settings:
        usual = setting.pop("usual", False)
        name, k = setting.pop("sampler"), setting.pop("steps")
        key = fingerprint("bench-teacher", header["teacher_fingerprint"], name, k, setting)
        nfe, ms, metrics, outputs = measure(lambda s: teacher_sample_fn(teacher, name, k, **setting),
                                            f"teacher {name} x{k}", cache_key=key)
        if usual:
            usual_samples = outputs
        rows.append(Row("teacher", k, nfe, ms, metrics, {"sampler": name, "usual": usual}))

    # 3. The students' rows.
    for done in trained:
        student = done.net.to(dev).eval()
        for steps in done.steps:
            nfe, ms, metrics, _ = measure(lambda s: student_sample_fn(done.sampler, student, steps, seed=spec.seed + s),
                                          f"{done.method} x{steps}")
            rows.append(Row(done.method, steps, nfe, ms, metrics, {
                "train_steps": done.train_steps, "train_seconds": round(done.train_seconds, 1)}))
    result = dict(header, rows=records_with_speedup(rows, rows[0].ms_per_sample))
    if out:
        with FileLock(str(out) + ".lock"):
            if merge:
                result = _merged(_merge_base(Path(out), header), result, order=compatible)
            atomic_write_text(Path(out), json.dumps(result, indent=2) + "\n")
            if markdown:  # under the lock too: a parallel part must not overwrite a later merge's table
                atomic_write_text(Path(markdown), markdown_table(result))
    elif markdown:
        atomic_write_text(Path(markdown), markdown_table(result))
    _print(result)
    return result


TASK_OVERRIDE = "modality_args.task="


def split_task_override(overrides: list[str] | None, tasks: tuple[str, ...] | list[str],
                        bench: str) -> tuple[str | None, list[str]]:
    """``(task, other overrides)`` of a multi-task benchmark's ``--set`` list.

    ``--set modality_args.task=NAME`` runs task NAME only. The task is a column of the rows,
    not a change of protocol, so it is not returned with the other overrides (which a result
    file records): one task's rows then merge with another's under ``--merge``.
    """
    named = [o[len(TASK_OVERRIDE):] for o in overrides or [] if o.startswith(TASK_OVERRIDE)]
    rest = [o for o in overrides or [] if not o.startswith(TASK_OVERRIDE)]
    if named and named[-1] not in tasks:
        raise DistillError(f"--set {TASK_OVERRIDE}{named[-1]}: the {bench} benchmark's tasks are {', '.join(tasks)}")
    return (named[-1] if named else None), rest


def bench_base_config(spec: BenchSpec, modality_name: str, overrides: list[str] | None = None,
                      device: str = "cpu") -> dict[str, Any]:
    """The config every run of a benchmark shares: the spec's, the modality, ``--set`` overrides."""
    base = deep_merge(spec.base_config, {"modality": modality_name})
    if overrides:
        bad_pairs = [o for o in overrides if "=" not in o]
        if bad_pairs:
            raise DistillError(f"--set takes key=value pairs (e.g. modality_args.dataset=ring8_unequal); got {bad_pairs}")
        try:
            base = deep_merge(base, OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides))))
        except Exception as err:  # noqa: BLE001 -- OmegaConf's parse errors have no common base
            raise DistillError(f"--set: cannot parse {overrides} as key=value pairs ({err})") from err
    if device == "cuda":
        base = deep_merge(base, {"trainer": {"accelerator": "gpu"}})
    return base


def train_students(spec: BenchSpec, base: dict[str, Any], methods: list[str], workdir: str | Path | None = None,
                   progress: bool = True, reuse: bool = False) -> list[TrainedStudent]:
    """One student per (entry, step count) of ``spec``, trained in ``workdir/<entry>-<steps>``
    (a new temporary folder by default); a step-agnostic method (its training ignores
    ``student.steps``) trains one student, sampled at each of its step counts. With ``reuse``,
    a finished run of the same config already in its folder is loaded instead. A two-stage
    entry (``spec.warm_starts``) starts from its start entry's first student, trained first
    (or reused) when ``methods`` does not list it; only the entries in ``methods`` are returned."""
    from distill.config import _build_run
    from distill.engine.run import student_export, train
    from distill.plugins import get_manager

    manager = get_manager()
    trained: dict[str, list[TrainedStudent]] = {}
    tmp = Path(workdir or tempfile.mkdtemp(prefix="distill-bench-"))

    def train_entry(entry: str, chain: tuple[str, ...] = ()) -> list[TrainedStudent]:
        if entry in trained:
            return trained[entry]
        if entry in chain:
            raise DistillError(f"bench: warm starts form a cycle: {' -> '.join((*chain, entry))}")
        start = None
        if entry in spec.warm_starts:
            starts = train_entry(spec.warm_starts[entry], (*chain, entry))
            start = starts[0]
        method = entry_method(spec, entry)
        method_cls = manager.method(method)
        steps_list = [k for k in spec.method_steps.get(entry, spec.default_steps)
                      if method_cls.max_student_steps is None or k <= method_cls.max_student_steps]
        groups = [steps_list] if method_cls.step_agnostic and steps_list else [[k] for k in steps_list]
        students: list[TrainedStudent] = []
        for group in groups:
            steps = group[0]
            run_cfg = deep_merge(base, spec.method_configs.get(entry, {}))
            run_cfg = deep_merge(run_cfg, {"trainer": _budget(spec, entry, steps)})
            run_cfg = deep_merge(run_cfg, {"method": method, "student": {"steps": steps},
                                           "output": {"dir": str(tmp / f"{entry}-{steps}")},
                                           "trainer": {"progress": progress}})
            if start is not None:
                run_cfg = deep_merge(run_cfg, {"student": {"init": str(student_export(start.run_dir))}})
            cfg = _build_run(run_cfg)
            done = _finished_run(cfg, entry, group) if reuse else None
            if done is None:
                if Path(cfg.output.dir).exists():
                    shutil.rmtree(cfg.output.dir)
                run = train(cfg)
                done = TrainedStudent(entry, group, run.module.method, run.module.student_for_sampling(ema=True),
                                      int(run.module.distill_step), _last_record(run.run_dir).get("seconds", 0.0),
                                      Path(run.run_dir))
            if start is not None:  # what the recipe cost: both stages
                done.train_steps += start.train_steps
                done.train_seconds += start.train_seconds
            students.append(done)
        trained[entry] = students
        return students

    return [student for entry in methods for student in train_entry(entry)]


def _finished_run(cfg: Any, method: str, steps: list[int]) -> TrainedStudent | None:
    """The student of a finished run of exactly ``cfg`` in ``cfg.output.dir`` (None when there
    is none: no run, another config, or a run that stopped before ``trainer.max_steps``)."""
    from distill.config import load_config
    from distill.engine.run import open_run

    run_dir = Path(cfg.output.dir)
    saved, log = run_dir / "config.yaml", run_dir / "metrics.jsonl"
    if not saved.is_file() or not log.is_file():
        return None

    def comparable(c: Any) -> dict[str, Any]:
        data = OmegaConf.to_container(OmegaConf.structured(c))
        data["trainer"].pop("progress", None)  # how it was displayed, not what it trained
        data["output"].pop("dir", None)  # where it was written (a copied run folder still counts)
        return data

    if comparable(load_config(saved)) != comparable(cfg):
        print(f"--reuse: {run_dir} was trained with another config; retraining it")
        return None
    last = _last_record(run_dir)
    if last.get("step") != cfg.trainer.max_steps:
        print(f"--reuse: {run_dir} stopped at step {last.get('step')} of {cfg.trainer.max_steps}; retraining it")
        return None
    opened = open_run(run_dir, load_teacher_too=False)
    print(f"--reuse: {method} x{steps} from {run_dir} ({opened.student_file.name})")
    return TrainedStudent(method, steps, opened.method, opened.student, int(last["step"]), float(last.get("seconds", 0.0)),
                          run_dir)


def _last_record(run_dir: Path) -> dict[str, Any]:
    """The last line of a run's ``metrics.jsonl`` (its ``seconds``: the training loop's time,
    without set-up such as solving teacher pairs, which the on-disk cache may have held)."""
    log = Path(run_dir) / "metrics.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    return json.loads(lines[-1]) if lines else {}


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _cached_generate(sample_fn, noise: torch.Tensor, cond: Any, batch_size: int, label: str, progress: bool,
                     key: str) -> Generated:
    """:func:`generate` through the on-disk cache; a cached draw is timed on one fresh batch."""
    fresh: list[Generated] = []

    def compute() -> dict[str, torch.Tensor]:
        fresh.append(generate(sample_fn, noise, cond, batch_size, label=label, progress=progress))
        return {"samples": fresh[0].samples, "nfe": torch.tensor([fresh[0].nfe])}

    saved = cached_tensors("bench-samples", key, compute)
    if fresh:
        return fresh[0]
    n = min(batch_size, noise.shape[0])
    timing = generate(sample_fn, noise[:n], cond[:n] if isinstance(cond, torch.Tensor) else cond, n,
                      label=label + " (timing one batch; samples cached)", progress=progress)
    return Generated(saved["samples"], int(saved["nfe"][0]), timing.seconds * noise.shape[0] / n, noise.shape[0])


MERGE_KEYS = ("modality", "quick", "n_samples", "seeds", "teacher_fingerprint", "overrides", "protocol")


def _merge_base(path: Path, header: dict[str, Any]) -> dict[str, Any] | None:
    """The saved results to merge into (None when ``path`` does not exist yet); an error when
    they were measured under another protocol, so rows of two protocols never share a table."""
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DistillError(f"--merge: cannot read {path} ({err}); move it away or drop --merge") from err
    # a modality's own benchmark may keep a key in another form (policy: a teacher fingerprint per task)
    differ = [f"{k}: {saved.get(k)!r} there, {header[k]!r} here" for k in MERGE_KEYS
              if k in header and saved.get(k, {"overrides": [], "protocol": ""}.get(k)) != header[k]]
    if differ:
        raise DistillError(f"--merge: {path} was measured under another protocol ({'; '.join(differ)}); "
                           "write to another --out, or rerun every method without --merge")
    return saved


def _merged(saved: dict[str, Any] | None, result: dict[str, Any], order: list[str]) -> dict[str, Any]:
    """``result``'s rows (teacher rows included) plus ``saved``'s rows of the methods it did not run."""
    if saved is None:
        return result
    ran = {r["method"] for r in result["rows"]}
    kept = [r for r in saved["rows"] if r["method"] not in ran]
    rank = {m: i for i, m in enumerate(order)}
    students = sorted([r for r in result["rows"] + kept if r["method"] != "teacher"],
                      key=lambda r: (rank.get(r["method"], len(rank)), r["method"], r["steps"]))
    devices = list(dict.fromkeys(str(saved.get("device", "")).split("; ") + [result["device"]]))
    teacher = [r for r in result["rows"] if r["method"] == "teacher"]
    return dict(result, device="; ".join(d for d in devices if d), rows=teacher + students)


def aggregate_seeds(per_seed: list[dict[str, Any]], std_keys: list[str]) -> dict[str, Any]:
    """Mean of each scalar metric over noise seeds, plus ``<key>_std`` (sample std, n-1) for
    ``std_keys``; non-scalar metrics (lists) are kept from the first seed."""
    if len(per_seed) == 1:
        return dict(per_seed[0])
    out: dict[str, Any] = {}
    for key, first in per_seed[0].items():
        values = [m.get(key) for m in per_seed]
        if isinstance(first, (int, float)) and not isinstance(first, bool) and all(isinstance(v, (int, float)) for v in values):
            mean = sum(values) / len(values)
            out[key] = mean
            if key in std_keys:
                out[f"{key}_std"] = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        else:
            out[key] = first
    return out


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
