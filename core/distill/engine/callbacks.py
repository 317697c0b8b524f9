"""Run-directory callbacks: periodic atomic checkpoints + safetensors export, JSONL metrics."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from distill.engine.export import export_roles


class RunCheckpoint(Callback):
    """Every ``every`` distillation steps and at the end: ``checkpoints/last.ckpt`` + role weights."""

    def __init__(self, run_dir: Path, every: int) -> None:
        self.run_dir = Path(run_dir)
        self.every = every

    def save(self, trainer, module) -> None:
        trainer.save_checkpoint(self.run_dir / "checkpoints" / "last.ckpt", weights_only=False)  # full resume state
        export_roles(module, self.run_dir, rank_zero=trainer.is_global_zero)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = int(module.distill_step)
        if self.every and step % self.every == 0 and step < module.cfg.trainer.max_steps:
            self.save(trainer, module)

    def on_train_end(self, trainer, module) -> None:
        self.save(trainer, module)


class JsonlMetrics(Callback):
    """Appends the loss terms to ``metrics.jsonl`` every ``log_every`` steps (rank 0)."""

    def __init__(self, run_dir: Path, every: int) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.every = max(1, every)
        self.start = None

    def on_train_start(self, trainer, module) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        step = int(module.distill_step)
        if not trainer.is_global_zero or (step % self.every and step != module.cfg.trainer.max_steps):
            return
        record: dict[str, Any] = {"step": step, "seconds": round(time.perf_counter() - self.start, 3)}
        record.update(getattr(module, "last_logs", {}))
        write_jsonl(self.path, record)


def write_jsonl(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=float) + "\n")


class RanksInSync(Callback):
    """After training on several processes, check that every rank holds the same weights."""

    def on_train_end(self, trainer, module) -> None:
        if trainer.world_size == 1 or getattr(trainer.strategy, "shards_gradients", False):
            return
        fingerprint = torch.stack([
            torch.cat([p.detach().double().flatten() for p in role.parameters()]).sum()
            for role in module.trained.values()
        ])
        gathered = trainer.strategy.all_gather(fingerprint)
        in_sync = bool((gathered == gathered[0]).all())
        module.ranks_in_sync = in_sync
        if trainer.is_global_zero:
            write_jsonl(Path(module.cfg.output.dir) / "metrics.jsonl", {"step": int(module.distill_step), "ranks_in_sync": in_sync})
