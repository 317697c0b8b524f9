"""Score identity distillation (``sid``).

Zhou et al. 2024, "Score identity Distillation: Exponentially Fast Distillation of
Pretrained Diffusion Models for One-Step Generation" (SiD, arXiv:2404.04057). Data-free:
the student G maps noise to samples ``x_g``; a fake-score network f_psi (the critic,
initialised from the teacher) learns the student's distribution with the denoising loss
on its samples, as in DMD. The student minimises the model-based Fisher divergence between
the teacher's and the student's noisy distributions, rewritten through score identities
into a loss that needs only x0 predictions (SiD eq. 23, with alpha of sec. 4.3):

    L_G = E_{t, eps} [ (f_phi(x_t) - f_psi(x_t))^T ( (f_phi(x_t) - x_g) - alpha (f_phi(x_t) - f_psi(x_t)) ) / w ]

at ``x_t = a_t x_g + s_t eps``, where f_phi is the teacher's x0 prediction and
``w = mean_d |x_g - f_phi(x_t)|`` (stop-gradient) the per-sample normaliser the paper's code
shares with DMD. Unlike DMD, gradients flow through ``x_t`` *into* both networks' inputs
(their weights stay frozen in this phase), so one student step backpropagates through the
teacher and the critic. ``alpha = 1.2`` is the paper's default; ``alpha = 0.5`` gives the
plain Fisher-divergence surrogate, ``alpha = 1`` its score-identity form.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.method import Batch, Roles
from distill.methods.dmd2 import DMD2


def sid_loss(x_g: torch.Tensor, real: torch.Tensor, fake: torch.Tensor, alpha: float) -> torch.Tensor:
    """SiD's per-sample generator loss (eq. 23) from the student sample and the teacher's and
    critic's x0 predictions at its noised copy, divided by DMD's normaliser; shape [B]."""
    diff = real - fake
    per_element = diff * ((real - x_g) - alpha * diff)
    with torch.no_grad():
        scale = (x_g - real).abs().flatten(1).mean(dim=1).clamp_min(1e-5)
    return per_element.flatten(1).mean(dim=1) / scale


class SiD(DMD2):
    name = "sid"
    description = "score identity distillation: data-free Fisher-divergence matching (Zhou et al. 2024)"
    paper = "arXiv:2404.04057"

    @dataclass
    class Options(DMD2.Options):
        critic_updates: int = 1  # SiD alternates one fake-score and one generator update
        alpha: float = 1.2  # SiD sec. 4.3

    def _matching_loss(self, x0: torch.Tensor, t: torch.Tensor, batch: Batch, roles: Roles
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x_t = self._noised(x0, batch, t)  # with gradients: they reach both networks' inputs
        real = self._real_x0(roles, x_t, t, batch)
        fake = roles.critic.predict(x_t, t, batch.cond)
        loss = torch.nan_to_num(sid_loss(x0, real, fake, self.options.alpha)).mean()
        return loss, {"sid": loss}
