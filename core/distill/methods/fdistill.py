"""f-divergence distribution matching (``fdistill``).

Xu et al. 2025, "One-step Diffusion Models with f-Divergence Distribution Matching"
(f-distill, arXiv:2502.15681). DMD's reverse-KL gradient is one member of a family: for
an f-divergence ``D_f(p || q) = E_q[f(p/q)]`` between the data (teacher) distribution p
and the student's q, the gradient at a noised student sample is DMD's score difference
weighted per sample by

    h(r) = f''(r) r^2,   r(x_t) = p_t(x_t) / q_t(x_t)                         (f-distill eq. 9)

reverse KL (``f = -log r``): h = 1 (DMD); forward KL (``f = r log r``): h = r, which
up-weights samples where the data has more mass than the student (mode covering);
Jensen-Shannon: h = r / (1 + r); squared Hellinger (``f = (sqrt r - 1)^2``): h = sqrt(r) / 2.
The density ratio comes from a discriminator head on the critic's features, trained on
noised real and generated samples with the logistic loss, whose optimal logit is
``log r`` (sec. 4.2). This needs real data (or teacher samples) for the discriminator.
The weights are divided by their batch mean so that only their relative size matters:
the step size stays that of the reverse-KL baseline, and a ratio estimate that is off by
a constant factor changes nothing. ``log_ratio_clip`` bounds ``|log r|`` against a
discriminator that is too sure early on.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from distill.errors import DistillError
from distill.methods.dmd2 import DMD2


def _reverse_kl(log_r: torch.Tensor) -> torch.Tensor:
    return torch.ones_like(log_r)


def _forward_kl(log_r: torch.Tensor) -> torch.Tensor:
    return log_r.exp()


def _js(log_r: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(log_r)  # r / (1 + r)


def _hellinger(log_r: torch.Tensor) -> torch.Tensor:
    return 0.5 * (0.5 * log_r).exp()


# h(r) = f''(r) r^2 of each divergence, as a function of log r
WEIGHTS = {"reverse_kl": _reverse_kl, "forward_kl": _forward_kl, "js": _js, "hellinger": _hellinger}


def check_divergence(divergence: str) -> None:
    if divergence not in WEIGHTS:
        raise DistillError(f"fdistill: unknown divergence {divergence!r}; expected one of {', '.join(WEIGHTS)}")


def f_weights(log_r: torch.Tensor, divergence: str, clip: float | None = None, normalize: bool = True) -> torch.Tensor:
    """Per-sample weights ``h(r)`` from log density ratios [B], clipped to ``|log r| <= clip``
    and, with ``normalize``, divided by their mean (f-distill eq. 9)."""
    check_divergence(divergence)
    if clip is not None:
        log_r = log_r.clamp(-clip, clip)
    h = WEIGHTS[divergence](log_r.to(torch.float64))
    if normalize:
        h = h / h.mean().clamp_min(1e-12)
    return h.to(log_r.dtype)


class FDistill(DMD2):
    name = "fdistill"
    description = "f-divergence distribution matching: DMD weighted by a discriminator's density ratio (Xu et al. 2025)"
    paper = "arXiv:2502.15681"

    @dataclass
    class Options(DMD2.Options):
        divergence: str = "forward_kl"  # reverse_kl (= dmd2) | forward_kl | js | hellinger
        log_ratio_clip: float | None = 5.0  # |log r| bound (None: none)
        normalize_weights: bool = True  # h(r) / batch mean of h(r)

    def __init__(self, options=None) -> None:
        super().__init__(options)
        o = self.options
        check_divergence(o.divergence)
        if o.gan_t_lo is not None or o.gan_t_hi is not None:
            # the ratio is read at the matching term's times, so the discriminator must learn them
            raise DistillError("fdistill: the discriminator estimates the density ratio at the matching times; "
                               "leave gan_t_lo/gan_t_hi unset (use t_lo/t_hi)")

    @property
    def discriminates(self) -> bool:
        return True  # the density ratio, whatever the GAN weight

    def _matching_loss(self, x0, t, batch, roles):
        loss, terms = super()._matching_loss(x0, t, batch, roles)
        # how unequal the weights are: 1 when the discriminator cannot tell the student from data
        return loss, {**terms, "weight_max": self._weights.max()}

    def _score_difference(self, x0, fake, real, x_t, t, batch, roles) -> torch.Tensor:
        grad = super()._score_difference(x0, fake, real, x_t, t, batch, roles)
        log_r = self._logits(roles, x_t, t, batch.cond).reshape(-1)
        h = f_weights(log_r, self.options.divergence, self.options.log_ratio_clip, self.options.normalize_weights)
        self._weights = h.detach()
        return grad * h.view(-1, *([1] * (grad.ndim - 1)))
