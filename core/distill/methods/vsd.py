"""Variational score distillation into a one-step generator (``vsd``, SwiftBrush).

Nguyen & Tran 2024, "SwiftBrush: One-Step Text-to-Image Diffusion Model with Variational
Score Distillation" (arXiv:2312.05239), after Wang et al. 2023, "ProlificDreamer"
(VSD, arXiv:2305.16213). Data-free: the student G maps noise to samples, and a critic
(initialised from the teacher; SwiftBrush uses a LoRA of it) learns the score of the
student's own distribution with the denoising loss on its samples. The student follows

    grad_theta = E_{t, eps} [ w(t) (eps_teacher(x_t, t) - eps_critic(x_t, t)) dx_t/dtheta ]   (VSD eq. 9)

at ``x_t = alpha_t G(z) + sigma_t eps``. In x0 form ``eps = (x_t - alpha_t x0) / sigma_t``, so
``eps_teacher - eps_critic = (alpha_t / sigma_t) (x0_critic - x0_teacher)`` and, with
``dx_t/dG = alpha_t``, the gradient on the sample is

    g = w(t) alpha_t^2 / sigma_t (x0_critic - x0_teacher)

``weighting: sds`` is DreamFusion's ``w(t) = sigma_t^2`` (g = alpha_t^2 sigma_t ...), the
choice of SwiftBrush's code base; ``uniform`` is ``w(t) = 1``. DMD (``dmd2``) is the same
gradient with a per-sample normaliser instead of ``w(t)``; ``vsd`` keeps everything else of
:class:`~distill.methods.dmd2.DMD2` (critic phase, guidance on the teacher score only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.errors import DistillError
from distill.methods.dmd2 import DMD2
from distill.process.gaussian import expand_like

WEIGHTINGS = ("sds", "uniform")


def check_weighting(weighting: str) -> None:
    if weighting not in WEIGHTINGS:
        raise DistillError(f"vsd: unknown weighting {weighting!r}; expected one of {', '.join(WEIGHTINGS)}")


def vsd_gradient(x0_fake: torch.Tensor, x0_real: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor,
                 weighting: str = "sds") -> torch.Tensor:
    """VSD's gradient on the student sample, ``w(t) alpha^2 / sigma (x0_fake - x0_real)``, with
    ``alpha``, ``sigma`` of shape [B] (``w = sigma^2`` for ``sds``, 1 for ``uniform``)."""
    check_weighting(weighting)
    power = 1 if weighting == "sds" else -1  # w alpha^2 / sigma = alpha^2 sigma^power
    scale = alpha.to(torch.float64) ** 2 * sigma.to(torch.float64) ** power
    return expand_like(scale, x0_fake).to(x0_fake.dtype) * (x0_fake - x0_real)


class VSD(DMD2):
    name = "vsd"
    description = "variational score distillation into a one-step generator, data-free (SwiftBrush, Nguyen & Tran 2024)"
    paper = "arXiv:2312.05239"

    @dataclass
    class Options(DMD2.Options):
        critic_updates: int = 1  # SwiftBrush alternates one critic (LoRA) and one student update
        weighting: str = "sds"  # w(t): sds (sigma_t^2) | uniform (1)
        normalize: bool = False  # unused: w(t) replaces DMD's normaliser

    def __init__(self, options=None) -> None:
        super().__init__(options)
        check_weighting(self.options.weighting)
        if self.options.normalize:
            raise DistillError("vsd: normalize is DMD's per-sample normaliser; use method dmd2 for it (vsd weights by w(t))")

    def _score_difference(self, x0, fake, real, x_t, t, batch, roles) -> torch.Tensor:
        p = self.process
        return torch.nan_to_num(vsd_gradient(fake, real, p.alpha(t), p.sigma(t), self.options.weighting))
