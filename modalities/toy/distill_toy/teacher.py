"""The exact teacher of a Gaussian mixture: ``E[x0 | x_t]`` in closed form.

For data ``x0 ~ sum_k w_k N(mu_k, s_k^2 I)`` and a Gaussian process
``x_t = alpha(t) x0 + sigma(t) eps`` the marginal of ``x_t`` is
``sum_k w_k N(alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)``, and

    E[x0 | x_t] = sum_k r_k(x_t) (mu_k + alpha s_k^2 / (alpha^2 s_k^2 + sigma^2) (x_t - alpha mu_k))

with responsibilities ``r_k(x_t)`` proportional to
``w_k N(x_t; alpha mu_k, (alpha^2 s_k^2 + sigma^2) I)`` (Gaussian conditioning per
component, then Bayes over components; see docs/modalities/toy.md and DESIGN.md
section 3). The computation is :meth:`GaussianMixture.posterior_mean` (float64,
log-space responsibilities). Wrapped in a :class:`distill.Denoiser` with
``prediction="x0"``, every other prediction (eps, v, flow velocity, score)
follows from the process conversions, so samplers and methods meet the true
score of the data.
"""
from __future__ import annotations

import difflib
from typing import Any, Mapping

import torch
from torch import nn

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.process import GaussianProcess, make_process
from distill.process.mixture import GaussianMixture

#: Keys the ``exact`` teacher loader understands.
EXACT_TEACHER_KEYS = ("loader", "process")


class ExactMixtureNet(nn.Module):
    """A "network" whose output is the exact posterior mean ``E[x0 | x_t]`` of a mixture.

    ``forward(x, t, cond=None, **extra)`` takes ``x: [B, D]`` and the *process* time
    ``t: [B]`` (or a scalar) -- the Denoiser feeds time unchanged (``time_input="t"``)
    -- and returns ``[B, D]`` in ``x``'s dtype. The mixture lives in buffers
    (``means``, ``stds``, ``weights``), so ``.to(device)`` moves it; there are no
    trainable parameters. ``cond`` and ``extra`` are ignored (unconditional data).
    """

    def __init__(self, mixture: GaussianMixture, process: GaussianProcess) -> None:
        super().__init__()
        self.process = process
        self.register_buffer("means", torch.as_tensor(mixture.means).detach().clone())
        self.register_buffer("stds", torch.as_tensor(mixture.stds).detach().clone())
        self.register_buffer("weights", torch.as_tensor(mixture.weights).detach().clone())

    @property
    def mixture(self) -> GaussianMixture:
        return GaussianMixture(means=self.means, stds=self.stds, weights=self.weights)

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None, **extra: Any) -> torch.Tensor:
        t = torch.as_tensor(t, device=x.device)
        if not t.is_floating_point():
            t = t.to(torch.float64)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        t = t.reshape(x.shape[0])
        alpha = self.process.alpha(t).reshape(-1, 1)
        sigma = self.process.sigma(t).reshape(-1, 1)
        return self.mixture.posterior_mean(x, alpha, sigma).to(x.dtype)

    def extra_repr(self) -> str:
        return f"modes={self.means.shape[0]}, dim={self.means.shape[1]}, process={self.process.name!r}"


def _as_dict(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    if isinstance(cfg, Mapping):
        return dict(cfg)
    try:  # OmegaConf DictConfig
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return dict(OmegaConf.to_container(cfg, resolve=True))  # type: ignore[arg-type]
    except ImportError:  # pragma: no cover
        pass
    if hasattr(cfg, "__dict__"):
        return dict(vars(cfg))
    raise DistillError(f"teacher config must be a mapping, got {type(cfg).__name__}")


def _build_process(spec: Any) -> GaussianProcess:
    if spec is None:
        return make_process("flow")
    if isinstance(spec, GaussianProcess):
        return spec
    if isinstance(spec, str):
        return make_process(spec)
    spec = _as_dict(spec)
    if "name" not in spec:
        raise DistillError(
            f"teacher.process {spec!r} has no 'name'; give a process name ('flow', 'vp', 'edm', 'trig', ...) "
            "or a mapping like {name: vp, ...}"
        )
    return make_process(**spec)


def load_exact_teacher(cfg: Any, modality: Any) -> Denoiser:
    """Teacher loader ``exact``: the closed-form denoiser of the modality's Gaussian mixture.

    ``cfg`` keys: ``loader`` (``"exact"``) and ``process`` (a process name, a
    mapping for :func:`distill.process.make_process`, or a process; default
    ``"flow"``). Keys left at ``None`` (e.g. an unset ``path``) are ignored; any
    other key is an error. ``modality`` must expose a ``mixture`` (the toy
    modality on ``ring8``, ``ring8_unequal`` or ``grid25``).
    Returns ``Denoiser(ExactMixtureNet(mixture, process), process, prediction="x0")``.
    """
    config = _as_dict(cfg)
    unknown = [k for k, v in config.items() if k not in EXACT_TEACHER_KEYS and v is not None]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), EXACT_TEACHER_KEYS, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        extra = ""
        if "path" in unknown:
            extra = " The exact teacher is computed in closed form and loads no checkpoint; drop teacher.path."
        raise DistillError(
            f"the 'exact' teacher loader got unknown key(s) {', '.join(hints)}; "
            f"it accepts {', '.join(EXACT_TEACHER_KEYS)}.{extra}"
        )
    mixture = getattr(modality, "mixture", None)
    if mixture is None:
        dataset = getattr(getattr(modality, "options", None), "dataset", None)
        what = f"toy dataset {dataset!r}" if dataset else f"modality {getattr(modality, 'name', type(modality).__name__)!r}"
        raise DistillError(
            f"the 'exact' teacher needs a Gaussian-mixture dataset, but {what} has none. "
            "Use a mixture dataset (ring8, ring8_unequal, grid25), or train a teacher with "
            "configs/toy/teacher.yaml and set teacher.loader and teacher.path."
        )
    process = _build_process(config.get("process"))
    return Denoiser(ExactMixtureNet(mixture, process), process, prediction="x0", time_input="t")
