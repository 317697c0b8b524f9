"""The Modality contract: what a kind of data tells the core.

A modality (registered by name through ``distill_register_modalities``) declares

* ``kind``: ``"continuous"`` (Gaussian processes) or ``"discrete"`` (token processes);
* the shape of one sample in model space (``sample_shape``) and optional
  ``encode``/``decode`` to and from a latent space;
* conditioning: ``sample_condition`` for data-free methods, ``null_condition`` for
  classifier-free guidance;
* real data: ``sample_data`` (deterministic given a generator, for data that lives
  in memory or is generated in code) and a ``LightningDataModule`` for large data;
* reference networks per role (``build_network``) and its default teacher;
* ``evaluate(samples, reference) -> dict`` with the field's metrics and
  ``save_samples(samples, path)`` in the form people look at.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import nn


@dataclass
class DataBatch:
    """Real samples in model space and their conditioning (None if unconditional)."""

    x0: torch.Tensor
    cond: Any = None


class Modality:
    """Base class with the defaults; plugins subclass it and register the class."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "continuous"
    description: ClassVar[str] = ""

    @dataclass
    class Options:
        """Modality options (subclasses replace this dataclass)."""

    def __init__(self, options: Any = None) -> None:
        """``options``: an instance of ``Options``, a mapping of its fields (validated, with
        close-match hints for unknown keys) or None for the defaults."""
        if options is None:
            options = self.Options()
        elif isinstance(options, Mapping):
            from distill.config import build_dataclass

            options = build_dataclass(self.Options, dict(options), "modality_args")
        self.options = options

    # --- shapes and spaces -------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z

    # --- conditioning ------------------------------------------------------
    @property
    def conditional(self) -> bool:
        return False

    def sample_condition(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> Any:
        """Conditioning for ``n`` generated samples (data-free training, evaluation)."""
        return None

    def evaluation_condition(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> Any:
        """Conditioning of the ``n`` samples an evaluation or benchmark scores (default:
        :meth:`sample_condition`). A modality whose metrics compare against a reference set
        overrides it to match the reference's conditions exactly, so that the noise is the
        only random part of a score (random class proportions move a Fréchet distance)."""
        return self.sample_condition(n, generator, device)

    def null_condition(self, n: int, device: Any = None) -> Any:
        """The 'no condition' input used for classifier-free guidance."""
        return None

    # --- data --------------------------------------------------------------
    def sample_data(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> DataBatch:
        """``n`` real training samples drawn with ``generator`` (same generator, same batch)."""
        raise NotImplementedError(f"modality {self.name!r} has no in-memory data; use its datamodule")

    def datamodule(self, batch_size: int) -> Any:
        """A LightningDataModule over the real data (for data too large for memory)."""
        raise NotImplementedError

    def reference(self, n: int, generator: torch.Generator | None = None) -> DataBatch:
        """Held reference samples for evaluation (defaults to fresh data draws)."""
        return self.sample_data(n, generator)

    # --- networks ------------------------------------------------------------
    def build_network(self, role: str, **overrides: Any) -> nn.Module:
        """A fresh reference network for ``role`` (``teacher``, ``student``, ``critic``, ...)."""
        raise NotImplementedError

    def default_teacher(self) -> dict[str, Any]:
        """Teacher config used when a run names none: ``{"loader": ..., ...}``."""
        raise NotImplementedError(f"modality {self.name!r} bundles no teacher; set teacher.loader and teacher.path")

    # --- evaluation and output ---------------------------------------------
    def evaluate(self, samples: torch.Tensor, reference: DataBatch, **context: Any) -> dict[str, float]:
        raise NotImplementedError

    def save_samples(self, samples: torch.Tensor, path: Path, **context: Any) -> list[Path]:
        raise NotImplementedError
