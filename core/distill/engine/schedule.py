"""Learning-rate factor as a pure function of the distillation step.

``lr(step) = base_lr * lr_factor(step, ...)``: a linear warm-up over ``warmup_steps``
(Goyal et al. 2017), then either a constant rate or a decay to ``final_fraction`` of
the base rate at ``total_steps``:

    cosine:  f = final + (1 - final) * (1 + cos(pi * p)) / 2     (Loshchilov & Hutter 2017, SGDR)
    linear:  f = final + (1 - final) * (1 - p)
    with p = (step - warmup) / (total - warmup), clipped to [0, 1]

With a wall-clock budget as well (``trainer.max_minutes``), ``p`` is the larger of the
step fraction and the elapsed fraction of the time budget, so the decay spans whichever
budget ends the run first (``distill demo --minutes N`` anneals over N minutes on any
machine). Only a step budget reproduces bitwise; benchmarks use step budgets.

Every role's rate is computed from the same step counter the engine keeps, so a role
updated several times per step (a two-time-scale critic) decays on the same clock as
the student, and a resumed run recomputes its rate from the step alone (no scheduler
state to restore). Why decay at all: distribution-matching gradients are noisy score
differences, and at a constant rate the student keeps wandering around a good solution;
annealing the rate lets it settle (see docs/methods/dmd2.md).
"""
from __future__ import annotations

import math

from distill.errors import DistillError

DECAYS = ("none", "cosine", "linear")


def lr_factor(step: int, *, warmup_steps: int = 0, decay: str = "none", total_steps: int | None = None,
              final_fraction: float = 0.0, time_fraction: float | None = None) -> float:
    """The multiplier of the base learning rate at distillation step ``step`` (0-based);
    ``time_fraction`` is the elapsed fraction of a wall-clock budget, if there is one."""
    if decay not in DECAYS:
        raise DistillError(f"unknown lr decay {decay!r}; use one of {', '.join(DECAYS)}")
    if not 0.0 <= final_fraction <= 1.0:
        raise DistillError(f"final_lr_fraction must be in [0, 1]; got {final_fraction}")
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if decay == "none":
        return 1.0
    if total_steps is None or total_steps <= warmup_steps:
        raise DistillError(f"lr decay {decay!r} needs trainer.max_steps ({total_steps}) above warmup_steps ({warmup_steps})")
    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    if time_fraction is not None:
        progress = max(progress, time_fraction)
    progress = min(1.0, max(0.0, progress))
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress
    return final_fraction + (1.0 - final_fraction) * shape
