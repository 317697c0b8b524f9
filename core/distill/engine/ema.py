"""Exponential moving average of the student, parameterised by a half-life.

After ``h`` steps an old weight's contribution has halved: the per-step decay is
``beta = 0.5 ** (1 / h)`` (Karras et al. 2024, "Analyzing and Improving the
Training Dynamics of Diffusion Models", sec. 3.1 uses the same half-life view).
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn


def ema_decay(half_life: float) -> float:
    if half_life <= 0:
        raise ValueError("EMA half-life must be positive (in steps)")
    return 0.5 ** (1.0 / half_life)


@torch.no_grad()
def ema_update(target: nn.Module, source: nn.Module, decay: float) -> None:
    for t, s in zip(target.parameters(), source.parameters()):
        t.lerp_(s.detach().to(t.dtype), 1.0 - decay)
    for t, s in zip(target.buffers(), source.buffers()):
        t.copy_(s)


class StudentEMA(Callback):
    """Updates ``module.student_ema`` from ``module.roles.student`` after every distillation step."""

    def __init__(self, half_life: float) -> None:
        self.decay = ema_decay(half_life)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.student_ema is not None:
            ema_update(pl_module.student_ema, pl_module.trained["student"], self.decay)
