"""An on-disk cache for expensive, deterministic teacher outputs (ODE pairs, benchmark samples).

Solving a teacher's ODE costs its full NFE per sample: 4,096 digits pairs at 35 NFE take
about six minutes on one CPU core, and the benchmark's 15,000 reference teacher samples
about 25. Every method run that asks for the same thing gets the same tensors, so they
are solved once and kept as safetensors under :func:`cache_dir`, keyed by a fingerprint
of everything they depend on: the teacher's weights and process, the solver settings,
and the inputs themselves (the noise and conditioning, which are cheap to redraw, so a
change in how a modality draws them can never return stale outputs).

``DISTILL_CACHE_DIR`` moves the cache (default ``~/.cache/distill``); ``DISTILL_CACHE_DIR=off``
turns it off. Entries are written atomically and guarded by a lock file, so concurrent
runs that need the same entry solve it once: the second waits and then reads it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from filelock import FileLock
from safetensors.torch import load_file, save_file

from distill.errors import DistillError

OFF = {"off", "0", "none", "false", ""}


def cache_dir() -> Path | None:
    """Where entries live, or None when the cache is off (``DISTILL_CACHE_DIR=off``)."""
    value = os.environ.get("DISTILL_CACHE_DIR")
    if value is None:
        return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "distill"
    return None if value.strip().lower() in OFF else Path(value)


def fingerprint(*parts: Any) -> str:
    """A SHA-256 over tensors (dtype, shape and bytes), modules (their state dicts) and
    JSON-able values, in order. ``None`` parts count too (as ``null``)."""
    digest = hashlib.sha256()

    def feed(part: Any) -> None:
        if isinstance(part, torch.nn.Module):
            for name, tensor in sorted(part.state_dict().items()):
                digest.update(name.encode())
                feed(tensor)
        elif isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
            # bytes of a dtype numpy may not know (bfloat16) through an integer view of the same width
            digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        elif isinstance(part, (list, tuple)):
            digest.update(b"[")
            for p in part:
                feed(p)
            digest.update(b"]")
        else:
            digest.update(json.dumps(part, sort_keys=True, default=repr).encode())

    for part in parts:
        feed(part)
    return digest.hexdigest()[:32]


def cached_tensors(kind: str, key: str, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``compute()`` (a dict of tensors), or its saved copy under ``<cache_dir>/<kind>/<key>``.

    A saved entry must hold the same names the computation returns; an unreadable one
    (a crash mid-write cannot produce one, the write is atomic) is solved again.
    """
    root = cache_dir()
    if root is None:
        return compute()
    folder = root / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DistillError(f"cannot create the cache folder {folder} ({err}); set DISTILL_CACHE_DIR to a writable "
                           "folder, or DISTILL_CACHE_DIR=off") from err
    path = folder / f"{key}.safetensors"
    with FileLock(str(path) + ".lock"):
        if path.exists():
            try:
                return load_file(str(path))
            except Exception:  # noqa: BLE001 -- a damaged entry is recomputed and replaced
                path.unlink()
        tensors = compute()
        tmp = path.with_suffix(".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, path)
        return tensors
