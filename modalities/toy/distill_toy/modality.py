"""The ``toy`` modality: 2-D distributions with exact oracles.

Data are generated in code (:mod:`distill_toy.data`); the Gaussian-mixture
datasets come with an exact teacher (:mod:`distill_toy.teacher`), so every
sampler and method can be checked against the truth on a CPU in seconds.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from distill.errors import DistillError
from distill.metrics.distances import median_bandwidths, mmd_rbf, sliced_wasserstein
from distill.modality import DataBatch, Modality
from distill.nets.mlp import MLPDenoiserNet
from distill_toy.data import DATASETS, ToyDataset, make_dataset
from distill_toy.metrics import MIN_SHARE, MODE_RADIUS, mode_statistics

#: Defaults of the reference MLP for every role (any of them can be overridden).
NETWORK_DEFAULTS: dict[str, Any] = {"dim": 2, "hidden": 256, "depth": 3}


class ToyModality(Modality):
    """2-D toy distributions: Gaussian mixtures with an exact teacher, checkerboard, moons."""

    name = "toy"
    kind = "continuous"
    description = "2-D toy distributions (ring, grid mixtures with an exact teacher; checkerboard; moons)"

    @dataclass
    class Options:
        """Options of the toy modality.

        dataset: one of ring8, ring8_unequal, grid25, checkerboard, moons.
        scale: multiplies every length of the dataset.
        sw_projections: random directions of the sliced Wasserstein metric.
        sw_p: order of ``sliced_wasserstein`` (2: Bonneel et al.'s SW_2, the scale the
            issue's reference numbers use; SW_1 is always reported as ``sliced_wasserstein_1``).
        eval_seed: seed of those directions (fixed, so rows of a table are comparable).
        mmd_samples: at most this many samples per side enter the MMD (O(n^2) cost).
        reference_seed: seed of ``reference()`` when no generator is given.
        """

        dataset: str = "ring8"
        scale: float = 1.0
        sw_projections: int = 256
        sw_p: int = 2
        eval_seed: int = 0
        mmd_samples: int = 2048
        reference_seed: int = 20240601

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.dataset: ToyDataset = make_dataset(self.options.dataset, self.options.scale)

    # --- shapes and data ------------------------------------------------------
    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (2,)

    @property
    def mixture(self) -> Any:
        """The dataset's :class:`GaussianMixture`, or None (checkerboard, moons)."""
        return self.dataset.mixture

    def sample_data(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> DataBatch:
        x = self.dataset.sample(n, generator)
        if device is not None:
            x = x.to(device)
        return DataBatch(x0=x, cond=None)

    def reference(self, n: int, generator: torch.Generator | None = None) -> DataBatch:
        """``n`` held-out samples; without a generator, seeded with ``options.reference_seed``."""
        if generator is None:
            generator = torch.Generator().manual_seed(int(self.options.reference_seed))
        return self.sample_data(n, generator)

    # --- networks -----------------------------------------------------------------
    def build_network(self, role: str, **overrides: Any) -> nn.Module:
        """``MLPDenoiserNet(dim=2, hidden=256, depth=3)`` for every role, with ``overrides``."""
        kwargs = {**NETWORK_DEFAULTS, **overrides}
        return MLPDenoiserNet(**kwargs)

    def default_teacher(self) -> dict[str, Any]:
        if self.dataset.has_exact_teacher:
            return {"loader": "exact", "process": "flow"}
        raise DistillError(
            f"toy dataset {self.options.dataset!r} has no exact teacher (only the Gaussian mixtures "
            f"{', '.join(n for n in DATASETS if make_dataset(n).has_exact_teacher)} do). Train one with "
            "configs/toy/teacher.yaml (data.dataset set to this dataset) and set teacher.path to its "
            "student.safetensors."
        )

    # --- benchmark ----------------------------------------------------------------
    @classmethod
    def benchmark(cls, quick: bool = False):
        """The spec of ``distill bench toy`` (see :mod:`distill_toy.bench`)."""
        from distill_toy.bench import benchmark

        return benchmark(quick)

    @classmethod
    def demo_plan(cls):
        """What ``distill demo --modality toy`` runs (see :func:`distill_toy.bench.demo_plan`)."""
        from distill_toy.bench import demo_plan

        return demo_plan()

    # --- evaluation -------------------------------------------------------------
    def evaluate(self, samples: torch.Tensor, reference: Any, **context: Any) -> dict[str, Any]:
        """Quality of ``samples`` against ``reference`` (a DataBatch or tensor of real samples).

        * ``sliced_wasserstein``: SW_p (``options.sw_p``, default 2) with
          ``options.sw_projections`` directions from seed ``options.eval_seed`` (same
          directions for every call); ``sliced_wasserstein_1``: SW_1 on the same directions;
        * ``mmd``: unbiased squared MMD, multi-scale RBF with median-heuristic
          bandwidths of the *reference* (0.25x..4x), on at most ``options.mmd_samples``
          samples per side;
        * mixtures only: ``mode_coverage``, ``mode_weights``, ``mode_weight_tv``,
          ``outlier_fraction`` (:mod:`distill_toy.metrics`).
        """
        ref = reference.x0 if isinstance(reference, DataBatch) else reference
        x = _points(samples, "samples")
        y = _points(ref, "reference")
        n_proj, seed = int(self.options.sw_projections), int(self.options.eval_seed)
        out: dict[str, Any] = {
            "sliced_wasserstein": sliced_wasserstein(x, y, n_projections=n_proj, generator=torch.Generator().manual_seed(seed), p=int(self.options.sw_p)),
            "sliced_wasserstein_1": sliced_wasserstein(x, y, n_projections=n_proj, generator=torch.Generator().manual_seed(seed), p=1),
        }
        k = int(self.options.mmd_samples)
        xm, ym = x[:k], y[:k]
        if xm.shape[0] >= 2 and ym.shape[0] >= 2:
            out["mmd"] = mmd_rbf(xm, ym, bandwidths=median_bandwidths(ym))
        if self.mixture is not None:
            out.update(mode_statistics(x, self.mixture, MODE_RADIUS, MIN_SHARE).to_dict())
        return out

    # --- output -------------------------------------------------------------------
    def save_samples(self, samples: torch.Tensor, path: Path | str, **context: Any) -> list[Path]:
        """Scatter plot of ``samples`` as a PNG; returns ``[file]``.

        ``path`` with a suffix is the file (written as PNG); without one it is a
        directory that receives ``samples.png``. Axis limits are fixed by the dataset
        (not the samples), the aspect is equal and the true modes of a mixture are
        marked, so plots of different models line up. Context: ``title``,
        ``max_points`` (default 20000), ``filename`` (for a directory path).
        """
        target = _target(path, context.get("filename", "samples.png"))
        fig = _figure(1)
        ax = fig.add_subplot(1, 1, 1)
        self._scatter(ax, samples, context.get("title"), int(context.get("max_points", 20000)))
        _save(fig, target)
        return [target]

    def save_comparison(
        self, panels: Mapping[str, torch.Tensor], path: Path | str, title: str | None = None, max_points: int = 20000,
        **context: Any,
    ) -> list[Path]:
        """Side-by-side scatter plots, one per ``panels`` entry (``{"teacher@35": x, "student@1": y}``)."""
        if not panels:
            raise DistillError("save_comparison needs at least one panel {label: samples}")
        target = _target(path, "comparison.png")
        fig = _figure(len(panels))
        for i, (label, samples) in enumerate(panels.items()):
            ax = fig.add_subplot(1, len(panels), i + 1)
            self._scatter(ax, samples, str(label), max_points)
        if title:
            fig.suptitle(title)
        _save(fig, target)
        return [target]

    def _scatter(self, ax: Any, samples: torch.Tensor, title: str | None, max_points: int) -> None:
        x = _points(samples, "samples").to(torch.float32).numpy()
        lim = self.dataset.extent * 1.1
        shown = x[:max_points]
        outside = int(((abs(x) > lim).any(axis=1)).sum())
        ax.scatter(shown[:, 0], shown[:, 1], s=1.5, alpha=0.35, color="#1f5fa8", linewidths=0, rasterized=True)
        if self.mixture is not None:
            mu = self.mixture.means.detach().to(torch.float64).cpu().numpy()
            ax.scatter(mu[:, 0], mu[:, 1], marker="x", s=30, color="#d62728", linewidths=1.2, label="true modes")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        label = f"{title}\n" if title else ""
        label += f"n={x.shape[0]}" + (f", {outside} outside" if outside else "")
        ax.set_title(label, fontsize=9)


def _points(x: Any, what: str) -> torch.Tensor:
    x = torch.as_tensor(x).detach()
    if x.ndim != 2 or x.shape[1] != 2:
        raise DistillError(f"toy {what} must have shape [n, 2], got {tuple(x.shape)}")
    return x.to(device="cpu", dtype=torch.float64)


def _target(path: Path | str, default_name: str) -> Path:
    path = Path(path)
    if path.suffix:
        return path.with_suffix(".png") if path.suffix.lower() != ".png" else path
    return path / default_name


def _figure(panels: int) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(3.2 * panels, 3.4), dpi=120, layout="constrained")


def _save(fig: Any, target: Path) -> None:
    """Render with the Agg canvas (no pyplot, no global backend) and write atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from distill.engine.io import atomic_write

    FigureCanvasAgg(fig)
    atomic_write(target, lambda tmp: fig.savefig(tmp, format="png"))


__all__ = ["ToyModality", "NETWORK_DEFAULTS"]
