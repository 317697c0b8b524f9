"""The canonical prediction wrapper around any network.

A :class:`Denoiser` knows a network's native prediction type (``x0``, ``eps``,
``v``, ``flow`` or ``score``), the Gaussian process it was trained under, and how
to feed it time. Everything above it (samplers, methods, metrics) asks for the
prediction it needs with ``predict(x_t, t, cond, target=...)`` and never branches
on what the network outputs; conversions go through x0 in float64
(:meth:`distill.process.GaussianProcess.convert`).

Classifier-free guidance (Ho & Salimans 2022) is written in one convention,
``x_u + w (x_c - x_u)``: ``w = 1`` is the conditional model, ``w = 0`` the
unconditional one. Because every conversion is affine in the prediction for fixed
``x_t, t``, guiding in x0-space equals guiding in any other target space.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch
from torch import nn

from distill.errors import DistillError
from distill.process import PREDICTIONS, DiscreteProcess, GaussianProcess

# A network over tokens returns logits over the data vocabulary. Its canonical x0 is the
# distribution p(x0 | x_t) (probabilities [B, L, V]); "logits" asks for log p(x0 | x_t), already
# normalised and parameterised by the process (MDLM's SUBS for the masked process).
DISCRETE_PREDICTIONS = ("logits",)
DISCRETE_TARGETS = ("x0", "logits")

TimeInput = Callable[[torch.Tensor], torch.Tensor]


def _time_input(spec: str | float | TimeInput) -> TimeInput:
    """Map the process time to what the network was trained to read.

    ``"t"`` feeds t unchanged; a number ``k`` feeds ``k * t`` (e.g. 999 for a
    discrete-index DDPM network on t in [0, 1]); ``"log_sigma"`` feeds
    ``log(t) / 4`` (the EDM ``c_noise`` for alpha=1 processes); a callable is used as is.
    """
    if callable(spec):
        return spec
    if isinstance(spec, (int, float)):
        scale = float(spec)
        return lambda t: t * scale
    if spec == "t":
        return lambda t: t
    if spec == "log_sigma":
        return lambda t: torch.log(t) / 4
    raise DistillError(f"unknown time_input {spec!r}; use 't', a number (scale), 'log_sigma' or a callable")


class Denoiser(nn.Module):
    """A network plus its process, native prediction type and time input.

    The network is called as ``net(x_t, t_in, cond, **extra)`` and returns its
    native prediction; ``extra`` carries additional conditioning a method needs
    (a second time ``r``, a step size ``d``, a guidance scale ``w``).
    """

    def __init__(
        self,
        net: nn.Module,
        process: GaussianProcess | DiscreteProcess,
        prediction: str = "x0",
        time_input: str | float | TimeInput = "t",
    ) -> None:
        super().__init__()
        if isinstance(process, DiscreteProcess):
            if prediction not in DISCRETE_PREDICTIONS:
                raise DistillError(
                    f"a network over tokens ({process.name} process) predicts {', '.join(DISCRETE_PREDICTIONS)}; "
                    f"got prediction={prediction!r}"
                )
        elif prediction not in PREDICTIONS:
            raise DistillError(f"unknown prediction type {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
        self.net = net
        self.process = process
        self.prediction = prediction
        self.time_input = time_input  # as given: a name, a scale or a callable
        self._time_input = _time_input(time_input)

    def raw(self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None, **extra: Any) -> torch.Tensor:
        """The network's native output at ``(x_t, t)``."""
        t = _as_batch(t, x_t)
        return self.net(x_t, self._time_input(t), cond, **extra)

    def predict(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: Any = None, target: str = "x0", **extra: Any
    ) -> torch.Tensor:
        """Prediction of type ``target`` at ``(x_t, t)``; t is process time, shape [B] or scalar."""
        t = _as_batch(t, x_t)
        out = self.raw(x_t, t, cond, **extra)
        if isinstance(self.process, DiscreteProcess):
            return _discrete_target(self.process, out, x_t, target)
        if target == self.prediction:
            return out
        return self.process.convert(out, x_t, t, self.prediction, target)

    forward = predict

    def guided(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor,
        cond: Any,
        null_cond: Any,
        scale: float,
        target: str = "x0",
        **extra: Any,
    ) -> torch.Tensor:
        """Classifier-free guidance ``x_u + scale * (x_c - x_u)`` in ``target`` space."""
        if scale == 1.0 or cond is None:
            return self.predict(x_t, t, cond, target, **extra)
        conditional = self.predict(x_t, t, cond, target, **extra)
        unconditional = self.predict(x_t, t, null_cond, target, **extra)
        return unconditional + scale * (conditional - unconditional)

    @contextlib.contextmanager
    def tap(self, *layers: str) -> Iterator[dict[str, torch.Tensor]]:
        """Capture the outputs of named sub-modules of ``net`` during calls in the block.

        ``with denoiser.tap("blocks.2") as feats: denoiser.predict(...)`` leaves
        ``feats["blocks.2"]`` holding that layer's last output (with its graph, so a
        discriminator head on it trains through the network when gradients are on).
        """
        modules = dict(self.net.named_modules())
        missing = [name for name in layers if name not in modules]
        if missing:
            known = ", ".join(n for n in modules if n) or "(none)"
            raise DistillError(f"no layer named {missing} in {type(self.net).__name__}; layers: {known}")
        features: dict[str, torch.Tensor] = {}
        handles = []
        for name in layers:
            def hook(_module, _inputs, output, name=name):
                features[name] = output
            handles.append(modules[name].register_forward_hook(hook))
        try:
            yield features
        finally:
            for handle in handles:
                handle.remove()

    def describe(self) -> dict[str, Any]:
        """JSON-able description for checkpoint sidecars."""
        return {
            "process": self.process.describe(),
            "prediction": self.prediction,
            "time_input": self.time_input if not callable(self.time_input) else "callable",
        }


def _discrete_target(process: DiscreteProcess, logits: torch.Tensor, x_t: torch.Tensor, target: str) -> torch.Tensor:
    """x0 = p(x0 | x_t) = exp of the process-parameterised log-probabilities; logits = those log-probabilities."""
    if target not in DISCRETE_TARGETS:
        raise DistillError(
            f"a token Denoiser ({process.name} process) predicts {' or '.join(DISCRETE_TARGETS)} "
            f"(x0 = probabilities over the vocabulary); got target={target!r}"
        )
    logp = process.x0_log_probs(logits, x_t)
    return logp if target == "logits" else logp.exp()


def _as_batch(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device)
    if not t.is_floating_point():
        t = t.float()
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t
