"""The ``image`` modality: class-conditional digits, bundled photos, users' image folders.

Tensor convention: one sample is float32 ``[C, H, W]`` in ``[-1, 1]`` (``sample_shape
= (channels, resolution, resolution)``); conditioning is Long class labels ``[B]``;
the null class of classifier-free guidance (Ho & Salimans 2022) is ``num_classes``.
Data come from :mod:`distill_image.data`, pictures are written by
:mod:`distill_image.grids`, metrics live in ``distill_image.metrics`` and the
reference networks in ``distill.nets.unet`` / ``distill.nets.dit`` (both imported
only when used).
"""
from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import torch
from torch import nn

from distill.errors import DistillError
from distill.modality import DataBatch, Modality
from distill_image import grids
from distill_image.data import (
    DIGITS_CLASSES,
    PHOTOS,
    ImageFolderDataset,
    load_digits_tensor,
    photo_crops,
)

#: Data sets of the ``dataset`` option.
DATASETS: tuple[str, ...] = ("digits", "photos", "folder")
#: Reference networks of the ``network`` option: (module, class).
NETWORKS: dict[str, tuple[str, str]] = {
    "unet": ("distill.nets.unet", "UNetDenoiserNet"),
    "dit": ("distill.nets.dit", "DiTDenoiserNet"),
}
#: The bundled digits teacher (trained with ``distill train configs/image/teacher.yaml``).
TEACHER_FILE = Path(__file__).resolve().parent / "assets" / "digits_teacher.safetensors"


def _suggest(value: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(value, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


class ImageModality(Modality):
    """Images ``[C, H, W]`` in ``[-1, 1]``: scikit-learn digits, scikit-image photos, or a folder."""

    name = "image"
    kind = "continuous"
    description = "images in [-1, 1]: class-conditional sklearn digits, bundled scikit-image photos, your image folder"

    @dataclass
    class Options:
        """Options of the image modality.

        dataset: ``digits`` (scikit-learn, 1,797 images, 10 classes), ``photos`` (random
            crops of scikit-image's bundled photos) or ``folder`` (your PNG/JPEG files).
        root: the folder for ``dataset=folder`` (``ROOT/<class>/<image>.png``).
        resolution: side of the square images (digits are upsampled from 8x8).
        channels: 1 (grey) or 3 (RGB); default 1 for digits, 3 otherwise.
        conditional: class-conditional model; default True for digits, True for a
            folder with class sub-folders, False for photos (True there labels a crop
            with the index of its source photo).
        network: reference network of every role, ``unet`` or ``dit``.
        network_args: keyword arguments for that network (roles' overrides win).
        num_crops: photos only: size of the in-memory pool of crops that training
            and ``reference`` draw from.
        data_seed: photos only: seed of that pool.
        reference_seed: seed of ``reference(n)`` when no generator is given.
        """

        dataset: str = "digits"
        root: Optional[str] = None
        resolution: int = 16
        channels: Optional[int] = None
        conditional: Optional[bool] = None
        network: str = "unet"
        network_args: Dict[str, Any] = field(default_factory=dict)
        num_crops: int = 4096
        data_seed: int = 0
        reference_seed: int = 20240601

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        if o.dataset not in DATASETS:
            raise DistillError(f"unknown image dataset {o.dataset!r}{_suggest(o.dataset, DATASETS)} (choose from {', '.join(DATASETS)})")
        if o.network not in NETWORKS:
            raise DistillError(f"unknown image network {o.network!r}{_suggest(o.network, tuple(NETWORKS))} (choose from {', '.join(NETWORKS)})")
        if int(o.resolution) < 2:
            raise DistillError(f"image resolution must be >= 2; got {o.resolution}")
        if o.channels is not None and o.channels not in (1, 3):
            raise DistillError(f"image channels must be 1 or 3; got {o.channels}")
        if o.dataset == "folder" and not o.root:
            raise DistillError("dataset=folder needs modality_args.root=PATH (a folder laid out as PATH/<class>/<image>.png)")
        if o.dataset != "folder" and o.root:
            raise DistillError(f"modality_args.root is only used with dataset=folder (dataset is {o.dataset!r})")
        if not isinstance(o.network_args, Mapping):
            raise DistillError(f"network_args must be a mapping of keyword arguments; got {type(o.network_args).__name__}")
        if o.dataset == "photos" and int(o.num_crops) < 1:
            raise DistillError(f"num_crops must be >= 1; got {o.num_crops}")
        self._data: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self._folder: ImageFolderDataset | None = None

    # --- shapes --------------------------------------------------------------
    @property
    def channels(self) -> int:
        if self.options.channels is not None:
            return int(self.options.channels)
        return 1 if self.options.dataset == "digits" else 3

    @property
    def resolution(self) -> int:
        return int(self.options.resolution)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.resolution, self.resolution)

    # --- data ----------------------------------------------------------------
    @property
    def folder(self) -> ImageFolderDataset:
        """The :class:`ImageFolderDataset` of ``dataset=folder`` (scanned once, on first use)."""
        if self.options.dataset != "folder":
            raise DistillError(f"the image modality reads no folder with dataset={self.options.dataset!r}")
        if self._folder is None:
            self._folder = ImageFolderDataset(self.options.root, self.resolution, self.channels)
        return self._folder

    @property
    def class_names(self) -> list[str]:
        """Names of the data's classes (label k is ``class_names[k]``); ``[]`` if it has none."""
        dataset = self.options.dataset
        if dataset == "digits":
            return list(DIGITS_CLASSES)
        if dataset == "photos":
            return list(PHOTOS)
        return list(self.folder.classes)

    def data(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The whole in-memory data set: ``(images [N, C, R, R] in [-1, 1], labels Long [N] or None)``.

        Digits: all 1,797; photos: a pool of ``num_crops`` crops drawn with seed
        ``data_seed`` (labels = source photo); folder: every readable file.
        """
        if self._data is None:
            dataset = self.options.dataset
            if dataset == "digits":
                images, labels = load_digits_tensor(self.resolution)
                if self.channels == 3:
                    images = images.expand(-1, 3, -1, -1).contiguous()
            elif dataset == "photos":
                gen = torch.Generator().manual_seed(int(self.options.data_seed))
                images, labels = photo_crops(int(self.options.num_crops), self.resolution, gen, self.channels, return_labels=True)
            else:
                images, labels = self.folder.tensors()
                if not self.folder.classes:
                    labels = None
            self._data = (images, labels)
        return self._data

    @property
    def conditional(self) -> bool:
        if self.options.conditional is not None:
            wanted = bool(self.options.conditional)
            if wanted and self.options.dataset == "folder" and not self.folder.classes:
                raise DistillError(
                    f"conditional=true needs class sub-folders in {self.options.root!r} (ROOT/<class>/<image>.png); "
                    "the images lie directly in it. Sort them into class folders or set conditional=false"
                )
            return wanted
        if self.options.dataset == "digits":
            return True
        if self.options.dataset == "folder":
            return len(self.folder.classes) >= 2
        return False

    @property
    def num_classes(self) -> int | None:
        """Classes of a conditional model (10 for digits, the folder's class count); None if unconditional."""
        return len(self.class_names) if self.conditional else None

    def sample_condition(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> Any:
        """Uniform class labels Long ``[n]`` in ``[0, num_classes)``; None if unconditional."""
        if not self.conditional:
            return None
        labels = torch.randint(int(self.num_classes), (int(n),), generator=generator)
        return labels if device is None else labels.to(device)

    def evaluation_condition(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> Any:
        """Class labels Long ``[n]`` in the data's class proportions exactly (largest-remainder
        rounding), in an order shuffled by ``generator``; None if unconditional.

        Fréchet distances against the data move with the class proportions of the generated
        set: under uniformly drawn labels the digits teacher's FD (Heun, 35 NFE, 5,000
        samples) was 0.013, 0.035 and 0.039 for three noise seeds; the same samples
        re-balanced to the data's proportions scored 0.0085, 0.0104 and 0.0108. Fixed
        proportions leave the noise as the only random part of a benchmark score.
        """
        if not self.conditional:
            return None
        _, labels = self.data()
        counts = torch.bincount(labels, minlength=int(self.num_classes)).double()
        quota = counts / counts.sum() * int(n)
        per_class = quota.floor().long()
        short = int(n) - int(per_class.sum())
        # the classes with the largest remainders get one more (ties: lower class index first)
        order = sorted(range(len(quota)), key=lambda c: (-(quota[c] - per_class[c]).item(), c))
        per_class[order[:short]] += 1
        ordered = torch.repeat_interleave(torch.arange(len(per_class)), per_class)
        labels = ordered[torch.randperm(int(n), generator=generator)]
        return labels if device is None else labels.to(device)

    def null_condition(self, n: int, device: Any = None) -> Any:
        """Long ``[n]`` filled with the null class ``num_classes``; None if unconditional."""
        if not self.conditional:
            return None
        return torch.full((int(n),), int(self.num_classes), dtype=torch.long, device=device)

    def sample_data(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> DataBatch:
        """``n`` images drawn uniformly with replacement from :meth:`data` (their labels as ``cond``
        when conditional); the same generator state gives the same batch."""
        images, labels = self.data()
        index = torch.randint(images.shape[0], (int(n),), generator=generator)
        x0 = images[index]
        cond = labels[index] if (self.conditional and labels is not None) else None
        if device is not None:
            x0 = x0.to(device)
            cond = cond.to(device) if cond is not None else None
        return DataBatch(x0=x0, cond=cond)

    def reference(self, n: int, generator: torch.Generator | None = None) -> DataBatch:
        """Real images for evaluation, with their labels as ``cond`` when the data have classes.

        For ``dataset=digits`` this is **all 1,797 digits, whatever n** (the fixed
        Fréchet-distance reference set: every evaluation compares against the same
        images). Otherwise ``n`` draws as in :meth:`sample_data`, seeded with
        ``options.reference_seed`` when no generator is given.
        """
        images, labels = self.data()
        if self.options.dataset == "digits":
            return DataBatch(x0=images.clone(), cond=labels.clone())
        if generator is None:
            generator = torch.Generator().manual_seed(int(self.options.reference_seed))
        index = torch.randint(images.shape[0], (int(n),), generator=generator)
        return DataBatch(x0=images[index], cond=labels[index] if labels is not None else None)

    def datamodule(self, batch_size: int) -> Any:
        """A ``LightningDataModule`` yielding ``(images, labels)`` batches of the data set."""
        from distill_image.data import ImageDataModule

        if self.options.dataset == "folder":
            return ImageDataModule(self.folder, batch_size)
        images, labels = self.data()
        return ImageDataModule((images, labels), batch_size)

    # --- networks --------------------------------------------------------------
    def build_network(self, role: str, **overrides: Any) -> nn.Module:
        """The reference network for ``role``:
        ``UNetDenoiserNet(in_channels=C, resolution=R, num_classes=K or None, **network_args, **overrides)``
        (or ``DiTDenoiserNet`` with ``network=dit``). Later keys win, so a checkpoint's
        saved network config rebuilds exactly the saved network."""
        module_name, class_name = NETWORKS[self.options.network]
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise DistillError(
                f"the {self.options.network!r} reference network ({module_name}.{class_name}) is not available "
                f"in this distill installation ({type(error).__name__}: {error}); update distill or choose "
                f"another modality_args.network ({', '.join(NETWORKS)})"
            ) from None
        kwargs = {
            "in_channels": self.channels,
            "resolution": self.resolution,
            "num_classes": self.num_classes,
            **dict(self.options.network_args),
            **overrides,
        }
        return cls(**kwargs)

    def default_teacher(self) -> dict[str, Any]:
        """The bundled digits teacher ``{"loader": "safetensors", "path": ...}``, when it is installed."""
        o = self.options
        if o.dataset != "digits" or self.sample_shape != (1, 16, 16) or not self.conditional:
            raise DistillError(
                f"the image modality bundles a teacher only for class-conditional 16x16 grey digits "
                f"(this run: dataset={o.dataset}, shape {self.sample_shape}, conditional={self.conditional}). "
                "Train one with `distill train configs/image/teacher.yaml` (set modality_args to this run's) "
                "and set teacher.loader=safetensors teacher.path=<run dir>/student.safetensors"
            )
        if not TEACHER_FILE.is_file():
            raise DistillError(
                f"the bundled digits teacher {str(TEACHER_FILE)!r} is not installed yet. Train it with "
                "`distill train configs/image/teacher.yaml` and set teacher.loader=safetensors "
                "teacher.path=<run dir>/student.safetensors"
            )
        return {"loader": "safetensors", "path": str(TEACHER_FILE)}

    # --- benchmark ----------------------------------------------------------------
    @classmethod
    def benchmark(cls, quick: bool = False):
        """The spec of ``distill bench image`` (see :mod:`distill_image.bench`)."""
        from distill_image.bench import benchmark

        return benchmark(quick)

    @classmethod
    def demo_plan(cls):
        """What ``distill demo`` runs (see :func:`distill_image.bench.demo_plan`)."""
        from distill_image.bench import demo_plan

        return demo_plan()

    # --- evaluation and output --------------------------------------------------
    def evaluate(self, samples: torch.Tensor, reference: Any, cond: Any = None, **context: Any) -> dict[str, Any]:
        """Image metrics of ``samples`` against ``reference``, from ``distill_image.metrics.image_metrics``.

        Raises DistillError while that module is not installed: nothing is reported
        rather than a stand-in number.
        """
        try:
            metrics = importlib.import_module("distill_image.metrics")
        except ModuleNotFoundError as error:
            if error.name not in ("distill_image.metrics",):
                raise
            raise DistillError(
                "image metrics are not installed yet (distill_image.metrics is missing); "
                "update distill-plugin-image to evaluate image samples"
            ) from None
        return metrics.image_metrics(samples, reference, cond=cond, **context)

    def _grid_kwargs(self) -> dict[str, Any]:
        """Row labels of conditional grids: class names, and ``null`` for the null class."""
        try:
            return {"num_classes": self.num_classes, "class_names": self.class_names}
        except DistillError:  # e.g. an unreadable folder: draw plain label numbers
            return {}

    def save_samples(self, samples: torch.Tensor, path: Path | str, cond: Any = None, title: str | None = None, **context: Any) -> list[Path]:
        """A PNG grid of ``samples`` (rows = classes when ``cond`` is given; nearest-neighbour
        upscaling, 4x for 16x16); returns ``[file]``. ``path`` with a suffix is the file,
        without one a directory receiving ``samples.png``. Context: ``scale``, ``columns``,
        ``max_images``, ``per_class``, ``filename`` (see :func:`distill_image.grids.save_grid`)."""
        return grids.save_grid(samples, path, cond=cond, title=title, **{**self._grid_kwargs(), **context})

    def save_comparison(self, panels: Mapping[str, torch.Tensor], path: Path | str, cond: Any = None, title: str | None = None, **context: Any) -> list[Path]:
        """Side-by-side grids, e.g. ``{"teacher heun, 35 NFE": x, "student, 1 NFE": y}`` from the same
        noise: the same cells in every panel, each panel's label drawn above it; returns ``[file]``."""
        return grids.save_comparison(panels, path, cond=cond, title=title, **{**self._grid_kwargs(), **context})


__all__ = ["DATASETS", "NETWORKS", "TEACHER_FILE", "ImageModality"]
