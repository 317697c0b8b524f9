"""Min-max normalisation of observations and actions to [-1, 1], stored with the model.

Chi et al. 2023 (Diffusion Policy, Sec. V-B "normalization"): actions are scaled to [-1, 1]
per dimension with the data's minimum and maximum, since DDPM clips its predictions to that
range and the Gaussian prior has unit scale; observations get the same treatment. For a
dimension with data range ``[lo, hi]``:

    normalise(x)   = 2 (x - lo) / (hi - lo) - 1
    unnormalise(y) = (y + 1) (hi - lo) / 2 + lo

A dimension whose range is below ``RANGE_EPS`` (a constant, e.g. a fixed goal) is centred and
left unscaled (half-range 1): dividing by a vanishing range would blow any deviation up.

The statistics are buffers of :class:`Normalizer` (``normalizer.obs_min`` ...), so they are
written into the policy's safetensors with its weights and travel with every copy of the
network (students initialised from the teacher carry the teacher's statistics).
"""
from __future__ import annotations

import torch
from torch import nn

from distill.errors import DistillError

RANGE_EPS = 1e-4
KEYS = ("obs_min", "obs_max", "action_min", "action_max")


class Normalizer(nn.Module):
    """Per-dimension min-max statistics of observations ``[obs_dim]`` and actions ``[action_dim]``.

    A fresh normaliser holds NaN until :meth:`fit` (or a checkpoint) fills it, so a policy used
    without statistics fails loudly instead of acting on unscaled numbers.
    """

    def __init__(self, obs_dim: int, action_dim: int) -> None:
        super().__init__()
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        for key, dim in zip(KEYS, (obs_dim, obs_dim, action_dim, action_dim)):
            self.register_buffer(key, torch.full((int(dim),), float("nan")))

    # --- statistics -----------------------------------------------------------------
    @torch.no_grad()
    def fit(self, obs: torch.Tensor, actions: torch.Tensor) -> "Normalizer":
        """Set the statistics from data: ``obs [..., obs_dim]``, ``actions [..., action_dim]``."""
        if obs.shape[-1] != self.obs_dim or actions.shape[-1] != self.action_dim:
            raise DistillError(
                f"normaliser for {self.obs_dim}-D observations and {self.action_dim}-D actions got data of "
                f"{obs.shape[-1]}-D observations and {actions.shape[-1]}-D actions"
            )
        o, a = obs.reshape(-1, self.obs_dim).double(), actions.reshape(-1, self.action_dim).double()
        self.obs_min.copy_(o.min(0).values)
        self.obs_max.copy_(o.max(0).values)
        self.action_min.copy_(a.min(0).values)
        self.action_max.copy_(a.max(0).values)
        return self

    def set(self, stats: dict[str, torch.Tensor]) -> "Normalizer":
        """Copy statistics ``{obs_min, obs_max, action_min, action_max}`` in."""
        with torch.no_grad():
            for key in KEYS:
                getattr(self, key).copy_(torch.as_tensor(stats[key]))
        return self

    def stats(self) -> dict[str, torch.Tensor]:
        return {key: getattr(self, key).detach().clone() for key in KEYS}

    @property
    def fitted(self) -> bool:
        return bool(all(torch.isfinite(getattr(self, key)).all() for key in KEYS))

    def check(self, where: str = "policy") -> None:
        if not self.fitted:
            raise DistillError(
                f"the {where}'s normaliser has no statistics (obs_min/obs_max/action_min/action_max are unset); "
                "load a policy checkpoint that carries them, or fit them on your demonstrations with "
                "Normalizer.fit(obs, actions) before training"
            )

    def matches(self, other: "Normalizer", rtol: float = 1e-5) -> bool:
        """Whether two normalisers hold the same statistics (float32 round-off allowed)."""
        return all(torch.allclose(getattr(self, k), getattr(other, k).to(getattr(self, k)), rtol=rtol, atol=1e-7)
                   for k in KEYS)

    # --- the maps ---------------------------------------------------------------------
    @staticmethod
    def _affine(lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(centre, half-range) with constant dimensions left unscaled (half-range 1)."""
        span = hi - lo
        half = torch.where(span < RANGE_EPS, torch.ones_like(span), span / 2)
        return (hi + lo) / 2, half

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        self.check()
        if obs.shape[-1] != self.obs_dim:
            raise DistillError(
                f"observations of dimension {obs.shape[-1]}, but this policy was trained on {self.obs_dim}-dimensional "
                "observations; pass the observation vector the policy was trained with"
            )
        centre, half = self._affine(self.obs_min, self.obs_max)
        return ((obs - centre.to(obs)) / half.to(obs))

    def unnormalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        self.check()
        centre, half = self._affine(self.obs_min, self.obs_max)
        return obs * half.to(obs) + centre.to(obs)

    def normalize_action(self, action: torch.Tensor) -> torch.Tensor:
        self.check()
        centre, half = self._affine(self.action_min, self.action_max)
        return (action - centre.to(action)) / half.to(action)

    def unnormalize_action(self, action: torch.Tensor) -> torch.Tensor:
        self.check()
        if action.shape[-1] != self.action_dim:
            raise DistillError(f"actions of dimension {action.shape[-1]}, but this policy acts in {self.action_dim} dimensions")
        centre, half = self._affine(self.action_min, self.action_max)
        return action * half.to(action) + centre.to(action)
