"""Per-role safetensors export with a JSON sidecar, and loading them back.

A run directory holds ``student.safetensors`` (and ``student_ema.safetensors``,
``critic.safetensors``, ...) with the network's weights only, plus a sidecar
``<role>.json``: the modality and its options, the network config to rebuild it
(``modality.build_network(role, **network)``), the Denoiser's process, prediction
type and time input, the method, the sampler steps and the step count.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.config import to_dict
from distill.denoiser import Denoiser
from distill.engine.io import load_into, read_sidecar, save_weights
from distill.errors import DistillError
from distill.process import make_process


def _full_state_module(module: nn.Module) -> nn.Module:
    return module


def network_config(net: nn.Module) -> dict[str, Any]:
    return dict(getattr(net, "config", {}) or {})


def sidecar_for(module: Any, role: str, denoiser: nn.Module) -> dict[str, Any]:
    cfg = module.cfg
    side: dict[str, Any] = {
        "format": "distill-role/1",
        "role": role,
        "modality": cfg.modality,
        "modality_args": dict(cfg.modality_args),
        "method": cfg.method,
        "step": int(module.distill_step),
        "config": to_dict(cfg),
    }
    if isinstance(denoiser, Denoiser):
        side["network"] = network_config(denoiser.net)
        side["network_class"] = f"{type(denoiser.net).__module__}.{type(denoiser.net).__qualname__}"
        side.update(denoiser.describe())
        if role.startswith("student"):
            side["sampler"] = module.method.sampler_spec(cfg.student.steps)
    else:
        side["network"] = network_config(denoiser)
    return side


def export_roles(module: Any, run_dir: Path, rank_zero: bool = True) -> list[Path]:
    """Write every trained role (and the student EMA) as safetensors + sidecar."""
    items = list(module.trained.items())
    if module.student_ema is not None:
        items.append(("student_ema", module.student_ema))
    written = []
    for role, denoiser in items:
        net = denoiser.net if isinstance(denoiser, Denoiser) else denoiser
        state_source = _gather_full_state(net)
        if not rank_zero:
            continue
        written.append(save_weights(state_source, Path(run_dir) / f"{role}.safetensors", sidecar_for(module, role, denoiser)))
    return written


class _StateHolder(nn.Module):
    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self._state = state

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self._state


def _gather_full_state(net: nn.Module) -> nn.Module:
    """Full (unsharded) weights of ``net``; under FSDP2 every rank must call this."""
    params = list(net.parameters())
    if params and type(params[0]).__name__ == "DTensor":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(net, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        return _StateHolder(state)
    return net


def load_denoiser(path: str | Path, modality: Any, role: str | None = None) -> tuple[Denoiser, dict[str, Any]]:
    """Rebuild a Denoiser from ``<role>.safetensors`` and its sidecar."""
    path = Path(path)
    side = read_sidecar(path)
    for key in ("network", "process", "prediction"):
        if key not in side:
            raise DistillError(f"sidecar of {str(path)!r} lacks {key!r}; it is not a distill denoiser export")
    net = modality.build_network(role or side.get("role", "teacher"), **side["network"])
    load_into(net, path)
    time_input = side.get("time_input", "t")
    if not isinstance(time_input, (str, int, float)) or time_input == "callable":
        time_input = "t"
    denoiser = Denoiser(net, make_process(**side["process"]), prediction=side["prediction"], time_input=time_input)
    return denoiser, side


def load_safetensors_teacher(cfg: dict[str, Any], modality: Any) -> Denoiser:
    """Teacher loader ``safetensors``: ``teacher: {loader: safetensors, path: FILE}``."""
    unknown = {k for k, v in cfg.items() if v is not None} - {"loader", "path"}  # null clears a key
    if unknown:
        raise DistillError(f"teacher loader 'safetensors' takes only 'path'; unknown keys: {sorted(unknown)}")
    if not cfg.get("path"):
        raise DistillError("teacher.path is required for the 'safetensors' loader (a .safetensors file with its .json sidecar)")
    path = Path(cfg["path"])
    if not path.is_file():
        raise DistillError(f"teacher file {str(path)!r} does not exist; check teacher.path")
    denoiser, _ = load_denoiser(path, modality, role="teacher")
    return denoiser
