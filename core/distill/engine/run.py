"""Build a run from its config: plugins, teacher, method, module, trainer, run directory."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import lightning.pytorch as pl

from distill.config import RunConfig, build_dataclass, save_config
from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.method import Method
from distill.modality import Modality


@dataclass
class Run:
    cfg: RunConfig
    run_dir: Path
    modality: Modality
    method: Method
    teacher: Denoiser
    module: Any = None


def resolve_device(accelerator: str) -> str:
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise DistillError("trainer.accelerator asks for a GPU but torch sees none; use trainer.accelerator=cpu")
    return "gpu" if accelerator == "cuda" else accelerator


def build_modality(cfg: RunConfig) -> Modality:
    from distill.plugins import get_manager

    cls = get_manager().modality(cfg.modality)
    options = build_dataclass(cls.Options, cfg.modality_args, "modality_args")
    return cls(options)


def build_method(cfg: RunConfig, modality: Modality) -> Method:
    from distill.plugins import check_compatible, get_manager

    cls = get_manager().method(cfg.method)
    check_compatible(cls, type(modality))
    options = build_dataclass(cls.Options, cfg.method_args, "method_args")
    if cls.max_student_steps is not None and cfg.student.steps > cls.max_student_steps:
        raise DistillError(f"method {cls.name!r} trains students of at most {cls.max_student_steps} steps; got student.steps={cfg.student.steps}")
    method = cls(options)
    method.student_steps = cfg.student.steps
    return method


def load_teacher(cfg: RunConfig, modality: Modality) -> Denoiser:
    from distill.plugins import get_manager

    teacher_cfg = dict(cfg.teacher) if cfg.teacher else modality.default_teacher()
    loader_name = teacher_cfg.get("loader") or ("safetensors" if teacher_cfg.get("path") else None)
    if loader_name is None:
        raise DistillError("teacher.loader is not set; use e.g. teacher.loader=safetensors teacher.path=FILE (see `distill plugins` for loaders)")
    teacher_cfg["loader"] = loader_name
    loader = get_manager().teacher(loader_name)
    teacher = loader(teacher_cfg, modality)
    if not isinstance(teacher, Denoiser):
        raise DistillError(f"teacher loader {loader_name!r} returned {type(teacher).__name__}, not a distill.Denoiser")
    return teacher


def run_dir_for(cfg: RunConfig) -> Path:
    return Path(cfg.output.dir or f"runs/{cfg.method}-{cfg.modality}")


def build_run(cfg: RunConfig) -> Run:
    modality = build_modality(cfg)
    method = build_method(cfg, modality)
    teacher = load_teacher(cfg, modality) if method.needs_teacher else None
    run_dir = run_dir_for(cfg)
    cfg.output.dir = str(run_dir)
    return Run(cfg, run_dir, modality, method, teacher)


def make_trainer(cfg: RunConfig, run_dir: Path, extra_callbacks: list[Any] = ()) -> pl.Trainer:
    """Lightning Trainer from ``cfg.trainer``: precision, strategy, devices, callbacks."""
    from distill.engine.callbacks import JsonlMetrics, RanksInSync, RunCheckpoint
    from distill.engine.diagnostics import Diagnostics
    from distill.engine.ema import StudentEMA
    from distill.engine.io import AtomicCheckpointIO
    from distill.engine.strategies import RoleDDPStrategy, RoleFSDPStrategy

    t = cfg.trainer
    accelerator = resolve_device(t.accelerator)
    precision = t.precision
    if precision == "auto":
        precision = "bf16-mixed" if accelerator == "gpu" else "32-true"
    devices = t.devices
    many = (devices not in (1, "1", [0]) and devices != "auto") or t.num_nodes > 1
    strategy: Any = "auto"
    if t.strategy == "ddp" or (t.strategy == "auto" and many):
        strategy = RoleDDPStrategy(process_group_backend="gloo" if accelerator == "cpu" else None)
    elif t.strategy == "fsdp":
        if not isinstance(devices, int):
            raise DistillError("trainer.strategy=fsdp needs trainer.devices as a number of devices per node")
        strategy = RoleFSDPStrategy(world_size=devices * t.num_nodes)
    elif t.strategy not in ("auto", "single"):
        raise DistillError(f"unknown trainer.strategy {t.strategy!r}; use auto, single, ddp or fsdp")
    callbacks: list[Any] = [RunCheckpoint(run_dir, t.checkpoint_every), JsonlMetrics(run_dir, t.log_every), RanksInSync()]
    if cfg.ema.half_life:
        callbacks.insert(0, StudentEMA(cfg.ema.half_life))
    if cfg.eval.every:
        e = cfg.eval
        callbacks.append(Diagnostics(run_dir, e.every, n=e.diagnostics_samples, fraction=e.collapse_fraction,
                                     t_fraction=e.diagnostics_t, seed=e.seed))
    if t.progress:
        from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar
        try:
            import rich  # noqa: F401

            class StepProgressBar(RichProgressBar):
                # a run is one endless epoch stopped by steps or time: Lightning's "Epoch 0/-2"
                # (max_epochs=-1) would only confuse
                def _get_train_description(self, current_epoch: int) -> str:
                    return "train"

            callbacks.append(StepProgressBar(leave=True))
        except ImportError:
            callbacks.append(TQDMProgressBar())
    callbacks.extend(extra_callbacks)
    return pl.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=t.num_nodes,
        strategy=strategy,
        precision=precision,
        max_epochs=-1,
        max_steps=-1,
        max_time={"minutes": t.max_minutes} if t.max_minutes else None,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=t.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        default_root_dir=str(run_dir),
    )


class _StepTokens(torch.utils.data.Dataset):
    """Lightning needs a dataloader; the engine draws each step's data itself from seeded generators."""

    def __init__(self, n: int) -> None:
        self.n = max(1, n)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> int:
        return index


def train(cfg: RunConfig, resume: bool = False, extra_callbacks: list[Any] = ()) -> Run:
    """Train ``cfg`` into its run directory; with ``resume``, continue from ``checkpoints/last.ckpt``."""
    from distill.engine.module import DistillModule

    pl.seed_everything(cfg.trainer.seed, verbose=False)
    if cfg.trainer.cpu_threads:
        torch.set_num_threads(cfg.trainer.cpu_threads)
    run = build_run(cfg)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    last = run.run_dir / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise DistillError(f"--resume: no checkpoint at {last}; train without --resume first")
    if not resume and last.is_file():
        raise DistillError(f"run directory {run.run_dir} already holds a run; pass --resume to continue it or set output.dir to a new folder")
    save_config(cfg, run.run_dir / "config.yaml")
    module = DistillModule(run.method, run.modality, run.teacher, cfg)
    run.module = module
    trainer = make_trainer(cfg, run.run_dir, list(extra_callbacks))
    tokens = torch.utils.data.DataLoader(_StepTokens(cfg.trainer.max_steps), batch_size=None, shuffle=False)
    trainer.fit(module, train_dataloaders=tokens, ckpt_path=str(last) if resume else None)
    run.trainer = trainer
    return run


@dataclass
class OpenedRun:
    """A finished (or checkpointed) run, loaded back from its directory for sampling and evaluation."""

    cfg: RunConfig
    run_dir: Path
    modality: Modality
    method: Method
    teacher: Denoiser
    student: Denoiser
    student_file: Path


def student_export(run_dir: str | Path, ema: bool | None = None) -> Path:
    """The run's exported student file: the EMA one if present unless ``ema=False``."""
    run_dir = Path(run_dir)
    candidates = ["student_ema.safetensors", "student.safetensors"] if ema in (None, True) else ["student.safetensors"]
    if ema is True and not (run_dir / "student_ema.safetensors").is_file():
        raise DistillError(f"{run_dir} has no student_ema.safetensors (the run had no EMA); drop --ema")
    student_file = next((run_dir / c for c in candidates if (run_dir / c).is_file()), None)
    if student_file is None:
        raise DistillError(f"{run_dir} has no exported student (student.safetensors); was training interrupted before the first checkpoint?")
    return student_file


def open_run(run_dir: str | Path, ema: bool | None = None, load_teacher_too: bool = True) -> OpenedRun:
    """Load ``config.yaml`` and the exported student (EMA if present unless ``ema=False``)."""
    from distill.config import load_config
    from distill.engine.export import load_denoiser

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DistillError(f"{run_dir} is not a distill run directory (no config.yaml); pass the folder `distill train` wrote")
    cfg = load_config(run_dir / "config.yaml")
    cfg.output.dir = str(run_dir)
    modality = build_modality(cfg)
    method = build_method(cfg, modality)
    student_file = student_export(run_dir, ema)
    student, sidecar = load_denoiser(student_file, modality, role="student")
    teacher = load_teacher(cfg, modality) if load_teacher_too and method.needs_teacher else None
    method.process = student.process
    method.restore(sidecar)
    return OpenedRun(cfg, run_dir, modality, method, teacher, student, student_file)
