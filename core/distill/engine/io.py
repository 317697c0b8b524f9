"""Atomic file writes and safe weight files (safetensors + JSON sidecar).

Weights are only ever read with safetensors or ``torch.load(weights_only=True)``;
nothing here unpickles arbitrary objects. Every write goes to a temporary file in
the same directory and is moved into place with ``os.replace`` so an interrupted
write never leaves a truncated file where a good one was.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from lightning.fabric.plugins import CheckpointIO

from distill.errors import DistillError


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
    return atomic_write(path, write)


def save_weights(module: torch.nn.Module, path: str | Path, sidecar: dict[str, Any]) -> Path:
    """Write ``module``'s state as safetensors plus ``<path>.json`` with ``sidecar``."""
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2, sort_keys=True, default=str))
    return path


def read_sidecar(path: str | Path) -> dict[str, Any]:
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        raise DistillError(f"weights {str(path)!r} have no sidecar {side.name}; it records the network, process and prediction type")
    try:
        return json.loads(side.read_text())
    except json.JSONDecodeError as error:
        raise DistillError(f"sidecar {str(side)!r} is not valid JSON ({error}); re-export the weights") from None


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file with a clear error for missing or corrupted files."""
    path = Path(path)
    if not path.is_file():
        raise DistillError(f"weights file {str(path)!r} does not exist; check teacher.path (or the run directory)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise DistillError(f"weights file {str(path)!r} is not a valid safetensors file ({error}); re-download or re-export it") from None


def load_into(module: torch.nn.Module, path: str | Path) -> None:
    state = load_weights(path)
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise DistillError(f"weights {str(path)!r} do not fit the network ({first}); is the sidecar's network config right?") from None


class AtomicCheckpointIO(CheckpointIO):
    """Lightning checkpoint I/O: atomic writes, and loading with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not Path(path).is_file():
            raise DistillError(f"checkpoint {str(path)!r} does not exist")
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except Exception as error:
            raise DistillError(f"checkpoint {str(path)!r} cannot be read safely ({str(error).splitlines()[0]})") from None

    def remove_checkpoint(self, path: Any) -> None:
        if os.path.exists(path):
            os.unlink(path)
