"""Run configuration: one YAML file plus ``key=value`` overrides, validated.

The schema is a tree of dataclasses (:class:`RunConfig`) read with OmegaConf.
Method and modality options are the plugins' own dataclasses (``Method.Options``,
``Modality.Options``), validated when the run is built. Every unknown key fails
with the closest known key (``unknown key 'trainer.max_step'; did you mean
'max_steps'?``). The resolved config is written to the run directory.
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from distill.errors import DistillError


@dataclass
class StudentConfig:
    steps: int = 1  # sampling steps the student is trained for and evaluated at
    # override the method's init of the student role: teacher | fresh, or a student export
    # (FILE.safetensors with its .json sidecar, e.g. a previous run's student_ema.safetensors) to warm-start from
    init: str | None = None
    # the student's native prediction type (x0 | eps | v | flow); None: the teacher's (or the role's).
    # With init teacher the student keeps the teacher's weights and reads its output as this type.
    prediction: str | None = None
    network: dict[str, Any] = field(default_factory=dict)  # overrides for modality.build_network


@dataclass
class OptimConfig:
    lr: float | None = None
    betas: list[float] | None = None
    weight_decay: float | None = None
    grad_clip: float | None = None
    warmup_steps: int = 0  # linear warm-up, in distillation steps
    decay: str = "none"  # none | cosine | linear, from the end of warm-up to trainer.max_steps
    final_lr_fraction: float = 0.0  # the decayed rate at max_steps, as a fraction of lr


@dataclass
class DataConfig:
    batch_size: int = 256
    num_workers: int = 0


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    max_minutes: float | None = None  # wall-clock budget; stops at whichever comes first
    accelerator: str = "auto"  # cpu | gpu | auto
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | single | ddp | fsdp
    precision: str = "auto"  # auto: 32-true on CPU, bf16-mixed on GPU
    seed: int = 0
    cpu_threads: int | None = None  # torch intra-op threads on CPU (small models often run fastest on 1)
    log_every: int = 50
    checkpoint_every: int = 500
    progress: bool = True


@dataclass
class EMAConfig:
    half_life: float | None = None  # in distillation steps; None disables the student EMA


@dataclass
class EvalConfig:
    every: int = 0  # training diagnostics every N steps (0: none): diversity, collapse alarm, pictures
    collapse_fraction: float = 0.5  # alarm when the student's diversity < this fraction of the teacher's
    diagnostics_samples: int = 64  # samples per diagnostic check
    diagnostics_t: float = 0.5  # noise level of the teacher/critic views, as a fraction of [t_min, t_max]
    # the evaluation at the end of training (report.md)
    n_samples: int = 4096
    steps: list[int] = field(default_factory=lambda: [1])
    batch_size: int = 4096
    seed: int = 1234

    def __post_init__(self) -> None:
        if self.every < 0:
            raise DistillError(f"eval.every must be >= 0 (0 turns the training diagnostics off), got {self.every}")
        if not 0.0 < self.collapse_fraction <= 1.0:
            raise DistillError(f"eval.collapse_fraction must be in (0, 1], got {self.collapse_fraction}")
        if self.diagnostics_samples < 2:
            raise DistillError(f"eval.diagnostics_samples must be at least 2 (diversity compares pairs), got {self.diagnostics_samples}")
        if not 0.0 <= self.diagnostics_t <= 1.0:
            raise DistillError(f"eval.diagnostics_t must be a fraction in [0, 1], got {self.diagnostics_t}")


@dataclass
class OutputConfig:
    dir: str | None = None  # default: runs/<method>-<modality>


@dataclass
class RunConfig:
    modality: str = "toy"
    method: str = "kd"
    modality_args: dict[str, Any] = field(default_factory=dict)
    method_args: dict[str, Any] = field(default_factory=dict)
    teacher: dict[str, Any] = field(default_factory=dict)  # loader, path, ... (loader-specific)
    teacher_sampler: dict[str, Any] = field(default_factory=lambda: {"name": "heun", "steps": 18, "schedule": "uniform"})
    student: StudentConfig = field(default_factory=StudentConfig)
    optim: dict[str, OptimConfig] = field(default_factory=dict)  # per role
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


def _unknown_key(key: str, known: list[str], where: str) -> DistillError:
    close = difflib.get_close_matches(key, known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return DistillError(f"unknown key '{where}{key}'{hint} (known keys: {', '.join(known)})")


def check_keys(cls: type, values: dict[str, Any], where: str = "") -> None:
    """Reject keys a dataclass does not have, recursing into nested dataclasses."""
    if not isinstance(values, dict):
        raise DistillError(f"'{where.rstrip('.') or 'config'}' must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            raise _unknown_key(str(key), list(fields), where)
        sub = hints[key]
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            check_keys(sub, value, f"{where}{key}.")
        elif typing.get_origin(sub) is dict and isinstance(value, dict):
            args = typing.get_args(sub)
            if len(args) == 2 and dataclasses.is_dataclass(args[1]):
                for name, item in value.items():
                    check_keys(args[1], item or {}, f"{where}{key}.{name}.")


def build_dataclass(cls: type, values: dict[str, Any] | None, what: str) -> Any:
    """Instantiate options dataclass ``cls`` from ``values`` with typed validation."""
    values = dict(values or {})
    check_keys(cls, values, f"{what}.")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(cls), values)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        raise DistillError(f"invalid {what}: {error.msg if hasattr(error, 'msg') else error}") from None


def load_config(path: str | Path | None, overrides: list[str] = (), base: dict[str, Any] | None = None) -> RunConfig:
    """Read a YAML run file, apply ``key=value`` overrides and validate it."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise DistillError(f"config file {str(path)!r} does not exist; pass a YAML run file such as configs/toy/kd.yaml")
        try:
            loaded = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
        except Exception as error:  # yaml errors carry their own line numbers
            raise DistillError(f"cannot read config {str(path)!r}: {error}") from None
        if not isinstance(loaded, dict):
            raise DistillError(f"config {str(path)!r} must be a YAML mapping of keys to values")
        data = OmegaConf.to_container(OmegaConf.merge(data, loaded))
    for item in overrides:
        if "=" not in item:
            raise DistillError(f"override {item!r} is not key=value (e.g. trainer.max_steps=100)")
    try:
        over = OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as error:
        raise DistillError(f"cannot parse overrides {list(overrides)}: {error}") from None
    data = OmegaConf.to_container(OmegaConf.merge(data, over))
    return _build_run(data)


def _build_run(data: dict[str, Any]) -> RunConfig:
    check_keys(RunConfig, data)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(RunConfig), data)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", "")
        raise DistillError(f"invalid value for '{key}': {error.msg if hasattr(error, 'msg') else error}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def save_config(cfg: RunConfig, path: Path) -> None:
    from distill.engine.io import atomic_write_text

    atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.structured(cfg)))
