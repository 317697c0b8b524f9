"""Image data for distill: bundled digits and photos, and users' own image folders.

Tensor convention (the whole plugin): images are float32 ``[B, C, H, W]`` in
``[-1, 1]`` (pixel value ``v`` in ``[0, 255]`` maps to ``v / 127.5 - 1``); class
labels are Long ``[B]``; the null class used for classifier-free guidance is
``num_classes``.

Three sources, none of which downloads anything:

* :func:`load_digits_tensor` -- scikit-learn's bundled handwritten digits (1,797
  8x8 images with values 0..16, 10 classes; Alpaydin & Kaynak 1998, the UCI
  "optdigits" test set), upsampled bilinearly to the requested resolution;
* :func:`photo_crops` -- random square crops of the photographs that ship inside
  scikit-image (:data:`PHOTOS`), at random scales of an area-averaged pyramid;
* :class:`ImageFolderDataset` -- PNG/JPEG files of a user's folder, one class per
  sub-folder, decoded and validated once at construction.

:class:`ImageDataModule` wraps any of them as a ``LightningDataModule``.
scikit-learn and scikit-image are imported only when their data are first used.
"""
from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from distill.errors import DistillError

__all__ = [
    "DIGITS_CLASSES",
    "IMAGE_EXTENSIONS",
    "PHOTOS",
    "ImageDataModule",
    "ImageFolderDataset",
    "load_digits_tensor",
    "load_photo",
    "photo_crops",
    "to_unit_range",
]

#: Class names of the digits data set (label k is the digit k).
DIGITS_CLASSES: tuple[str, ...] = tuple(str(k) for k in range(10))

#: Photographs bundled with scikit-image (``skimage.data.<name>()``, no download;
#: checked against scikit-image 0.25: the files live in ``skimage/data/``). Grey
#: ones (camera, coins, moon, grass, gravel, brick) are replicated to RGB.
PHOTOS: tuple[str, ...] = (
    "astronaut",
    "brick",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "moon",
    "retina",
    "rocket",
)

#: File suffixes :class:`ImageFolderDataset` reads (case-insensitive).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg")

#: Photos are first shrunk (area averaging) so their shorter side is at most this.
_PHOTO_MAX_SIDE = 512

#: ITU-R BT.601 luma weights, used to turn RGB into one channel.
_LUMA = (0.299, 0.587, 0.114)


def to_unit_range(pixels: torch.Tensor | np.ndarray, max_value: float = 255.0) -> torch.Tensor:
    """Map pixel values in ``[0, max_value]`` to float32 ``[-1, 1]``: ``2 v / max_value - 1``."""
    x = torch.as_tensor(np.asarray(pixels) if isinstance(pixels, np.ndarray) else pixels)
    return (x.to(torch.float32) * (2.0 / max_value) - 1.0).clamp_(-1.0, 1.0)


def _check_channels(channels: int, what: str) -> int:
    if channels not in (1, 3):
        raise DistillError(f"{what}: channels must be 1 (grey) or 3 (RGB); got {channels!r}")
    return int(channels)


def _to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``[..., c, H, W]`` with c in {1, 3} to ``channels`` (grey replicated, RGB to BT.601 luma)."""
    c = x.shape[-3]
    if c == channels:
        return x
    if c == 1 and channels == 3:
        return x.expand(*x.shape[:-3], 3, *x.shape[-2:]).clone()
    if c == 3 and channels == 1:
        w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * w).sum(dim=-3, keepdim=True)
    raise DistillError(f"cannot convert images with {c} channels to {channels}")


# --------------------------------------------------------------------------- digits


@functools.lru_cache(maxsize=8)
def _digits(resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:  # pragma: no cover - the plugin depends on scikit-learn
        raise DistillError(
            "the digits data set needs scikit-learn: pip install scikit-learn (see requirements.txt)"
        ) from error
    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1)  # [1797, 1, 8, 8], 0..16
    x = to_unit_range(x, max_value=16.0)
    if resolution != x.shape[-1]:
        # Bilinear interpolation is a convex combination of pixels, so [-1, 1] is kept.
        x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False,
                          antialias=resolution < x.shape[-1])
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    return x.clamp_(-1.0, 1.0).contiguous(), labels


def load_digits_tensor(resolution: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(images [1797, 1, R, R] in [-1, 1], labels Long [1797])``.

    The 8x8 images (values 0..16) are scaled by ``v / 8 - 1`` to ``[-1, 1]`` and
    resized to ``R x R`` with ``torch.nn.functional.interpolate(mode="bilinear",
    align_corners=False)`` (anti-aliased when shrinking). The result is the same on
    every call (the data ship inside scikit-learn); callers get their own copy.
    """
    resolution = int(resolution)
    if resolution < 2:
        raise DistillError(f"digits resolution must be >= 2 pixels; got {resolution}")
    images, labels = _digits(resolution)
    return images.clone(), labels.clone()


# --------------------------------------------------------------------------- photos


@functools.lru_cache(maxsize=len(PHOTOS))
def _photo_uint8(name: str) -> np.ndarray:
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] == 4:  # RGBA -> RGB
        array = array[:, :, :3]
    return np.ascontiguousarray(array)


def load_photo(name: str, channels: int = 3) -> torch.Tensor:
    """One bundled scikit-image photo as float32 ``[channels, H, W]`` in ``[-1, 1]`` (full size)."""
    if name not in PHOTOS:
        raise DistillError(f"unknown photo {name!r}; bundled photos: {', '.join(PHOTOS)}")
    channels = _check_channels(channels, "load_photo")
    x = to_unit_range(torch.from_numpy(_photo_uint8(name)).permute(2, 0, 1))
    return _to_channels(x, channels).contiguous()


@functools.lru_cache(maxsize=4)
def _pyramids(names: tuple[str, ...], channels: int, size: int) -> tuple[tuple[torch.Tensor, ...], ...]:
    """Per photo: levels ``k = 0, 1, ...`` shrunk by ``2^k`` (2x2 average pooling) while the
    shorter side stays >= ``size``. Level 0 has its shorter side at most ``_PHOTO_MAX_SIDE``."""
    out = []
    for name in names:
        x = load_photo(name, channels).unsqueeze(0)
        short = min(x.shape[-2:])
        if short > _PHOTO_MAX_SIDE:
            factor = _PHOTO_MAX_SIDE / short
            hw = (max(1, round(x.shape[-2] * factor)), max(1, round(x.shape[-1] * factor)))
            x = F.interpolate(x, size=hw, mode="area")
        if min(x.shape[-2:]) < size:
            raise DistillError(f"photo {name!r} ({tuple(x.shape[-2:])}) is smaller than crop size {size}")
        levels = [x[0].contiguous()]
        while min(x.shape[-2:]) // 2 >= size:
            x = F.avg_pool2d(x, 2)
            levels.append(x[0].contiguous())
        out.append(tuple(levels))
    return tuple(out)


def photo_crops(
    n: int,
    size: int = 32,
    generator: torch.Generator | None = None,
    channels: int = 3,
    photos: Sequence[str] | None = None,
    return_labels: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``n`` random ``size x size`` crops of scikit-image's bundled photos, float32 ``[n, C, size, size]`` in ``[-1, 1]``.

    Each crop draws a photo uniformly from ``photos`` (default :data:`PHOTOS`), a
    scale uniformly among the levels of that photo's pyramid (full size, 1/2, 1/4,
    ... by 2x2 area averaging, down to the level whose shorter side still holds a
    crop), and a position uniformly inside that level. A 16-pixel crop of a
    512-pixel photo at full scale is texture; at the coarsest level it is most of
    the picture. All randomness comes from ``generator`` (one ``torch.rand`` call),
    so the same generator state gives the same crops. With ``return_labels`` the
    index of each crop's photo in ``photos`` (Long ``[n]``) is returned as well.
    """
    n, size = int(n), int(size)
    if n < 0 or size < 1:
        raise DistillError(f"photo_crops needs n >= 0 and size >= 1; got n={n}, size={size}")
    channels = _check_channels(channels, "photo_crops")
    names = tuple(PHOTOS if photos is None else photos)
    if not names:
        raise DistillError(f"photo_crops needs at least one photo; bundled photos: {', '.join(PHOTOS)}")
    unknown = [p for p in names if p not in PHOTOS]
    if unknown:
        raise DistillError(f"unknown photo(s) {unknown}; bundled photos: {', '.join(PHOTOS)}")
    pyramids = _pyramids(names, channels, size)
    u = torch.rand((n, 4), generator=generator, dtype=torch.float64)
    out = torch.empty((n, channels, size, size), dtype=torch.float32)
    labels = torch.empty(n, dtype=torch.long)
    for i in range(n):
        p = min(int(u[i, 0] * len(names)), len(names) - 1)
        levels = pyramids[p]
        level = levels[min(int(u[i, 1] * len(levels)), len(levels) - 1)]
        h, w = level.shape[-2:]
        top = min(int(u[i, 2] * (h - size + 1)), h - size)
        left = min(int(u[i, 3] * (w - size + 1)), w - size)
        out[i] = level[:, top : top + size, left : left + size]
        labels[i] = p
    return (out, labels) if return_labels else out


# --------------------------------------------------------------------------- folders


def _decode(path: Path, resolution: int, channels: int) -> np.ndarray:
    """Decode, resize the shorter side to ``resolution`` (bicubic, anti-aliased) and center-crop.

    Returns uint8 ``[channels, resolution, resolution]``; raises whatever PIL raises
    for an unreadable file (the caller turns that into a warning).
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        image = image.convert("L" if channels == 1 else "RGB")
        w, h = image.size
        if w < 1 or h < 1:
            raise ValueError(f"empty image {w}x{h}")
        scale = resolution / min(w, h)
        new = (max(resolution, round(w * scale)), max(resolution, round(h * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC)
        left, top = (new[0] - resolution) // 2, (new[1] - resolution) // 2
        image = image.crop((left, top, left + resolution, top + resolution))
        array = np.array(image, dtype=np.uint8)  # a writable copy
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array.transpose(2, 0, 1))


class ImageFolderDataset(Dataset):
    """A folder of PNG/JPEG images, one class per sub-folder: ``root/<class>/**/<image>.png``.

    Classes are the sub-folder names in sorted order (label k = ``classes[k]``); files
    are read recursively inside each class folder and sorted, so the order is the same
    on every machine. If ``root`` has no sub-folders with images, the images directly
    in ``root`` form one unlabelled set (``classes == []``, every label 0).

    Every file is decoded once at construction: converted to grey (``channels=1``) or
    RGB (``channels=3``, alpha dropped), its shorter side resized to ``resolution``
    (bicubic, anti-aliased), then center-cropped to ``resolution x resolution``. A file
    PIL cannot decode is skipped with a ``warnings.warn`` that names it (and listed in
    :attr:`skipped`), so training never stops on a bad file. With ``preload=True``
    (default) the decoded images are kept as uint8 (``N * C * R * R`` bytes); with
    ``preload=False`` only validated paths are kept and files are decoded again on access.

    Items are ``(image float32 [C, R, R] in [-1, 1], label Long [])``.
    """

    def __init__(
        self,
        root: str | Path,
        resolution: int = 32,
        channels: int = 3,
        preload: bool = True,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.root = Path(root).expanduser()
        self.resolution = int(resolution)
        self.channels = _check_channels(channels, "ImageFolderDataset")
        if self.resolution < 1:
            raise DistillError(f"ImageFolderDataset resolution must be >= 1; got {resolution}")
        if not self.root.is_dir():
            raise DistillError(
                f"image folder {str(self.root)!r} does not exist or is not a directory; "
                "pass a folder laid out as ROOT/<class name>/<image>.png"
            )
        suffixes = {s.lower() if s.startswith(".") else "." + s.lower() for s in extensions}
        self.classes, candidates = self._scan(suffixes)
        if not candidates:
            raise DistillError(
                f"image folder {str(self.root)!r} contains no images ({', '.join(sorted(suffixes))}); "
                "expected ROOT/<class name>/<image>.png (one sub-folder per class) or images directly in ROOT"
            )
        self.files: list[Path] = []
        labels: list[int] = []
        arrays: list[np.ndarray] = []
        self.skipped: list[tuple[Path, str]] = []
        for path, label in candidates:
            try:
                array = _decode(path, self.resolution, self.channels)
            except Exception as error:  # noqa: BLE001 - any decoder failure means "skip this file"
                reason = f"{type(error).__name__}: {error}"
                self.skipped.append((path, reason))
                warnings.warn(f"skipping unreadable image {str(path)!r} ({reason})", stacklevel=2)
                continue
            self.files.append(path)
            labels.append(label)
            if preload:
                arrays.append(array)
        if not self.files:
            raise DistillError(
                f"none of the {len(candidates)} image file(s) under {str(self.root)!r} could be read "
                f"(first: {str(self.skipped[0][0])!r}: {self.skipped[0][1]}); check that they are valid PNG/JPEG files"
            )
        self.labels = torch.tensor(labels, dtype=torch.long)
        self._pixels: torch.Tensor | None = torch.from_numpy(np.stack(arrays)) if preload else None

    def _scan(self, suffixes: set[str]) -> tuple[list[str], list[tuple[Path, int]]]:
        def images_in(folder: Path, recursive: bool) -> list[Path]:
            found = folder.rglob("*") if recursive else folder.iterdir()
            return sorted(p for p in found if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith("."))

        class_dirs = sorted(d for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        per_class = [(d.name, images_in(d, True)) for d in class_dirs]
        per_class = [(name, files) for name, files in per_class if files]
        if not per_class:
            return [], [(p, 0) for p in images_in(self.root, False)]
        loose = images_in(self.root, False)
        if loose:
            warnings.warn(
                f"image folder {str(self.root)!r} has class sub-folders; the {len(loose)} image(s) directly "
                f"in it (e.g. {loose[0].name!r}) belong to no class and are ignored",
                stacklevel=3,
            )
        classes = [name for name, _ in per_class]
        return classes, [(p, k) for k, (_, files) in enumerate(per_class) for p in files]

    @property
    def num_classes(self) -> int:
        """Number of classes (0 when the folder has no class sub-folders)."""
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.files)

    def pixels(self) -> torch.Tensor:
        """All images as uint8 ``[N, C, R, R]`` (decodes every file again if not preloaded)."""
        if self._pixels is None:
            return torch.from_numpy(np.stack([_decode(p, self.resolution, self.channels) for p in self.files]))
        return self._pixels

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images float32 [N, C, R, R] in [-1, 1], labels Long [N])``."""
        return to_unit_range(self.pixels()), self.labels.clone()

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._pixels is not None:
            array = self._pixels[index]
        else:
            array = torch.from_numpy(_decode(self.files[index], self.resolution, self.channels))
        return to_unit_range(array), self.labels[index]


# --------------------------------------------------------------------------- datamodule


def _define_datamodule() -> type:
    """Defines :class:`ImageDataModule` on first use, so that importing this plugin (which
    every ``distill`` command does) does not import Lightning."""
    import lightning.pytorch as pl

    class ImageDataModule(pl.LightningDataModule):
        """A ``LightningDataModule`` over image data: a ``Dataset`` of ``(image, label)`` pairs
        (e.g. :class:`ImageFolderDataset`) or a pair of tensors ``(images, labels or None)``.

        ``train_dataloader`` shuffles with a generator seeded by ``seed`` (same order on
        every run) and drops the last incomplete batch when there is more than one batch.
        """

        def __init__(
            self,
            data: Dataset | tuple[torch.Tensor, torch.Tensor | None],
            batch_size: int = 256,
            shuffle: bool = True,
            seed: int = 0,
            num_workers: int = 0,
        ) -> None:
            super().__init__()
            if isinstance(data, tuple):
                images, labels = data
                if labels is None:  # unlabelled data: every label 0
                    labels = torch.zeros(images.shape[0], dtype=torch.long)
                if images.shape[0] != labels.shape[0]:
                    raise DistillError(
                        f"ImageDataModule got {images.shape[0]} images but {labels.shape[0]} labels"
                    )
                data = TensorDataset(images, labels)
            if int(batch_size) < 1:
                raise DistillError(f"batch_size must be >= 1; got {batch_size}")
            self.dataset = data
            self.batch_size = int(batch_size)
            self.shuffle = bool(shuffle)
            self.seed = int(seed)
            self.num_workers = int(num_workers)

        def train_dataloader(self) -> DataLoader:
            n = len(self.dataset)
            return DataLoader(
                self.dataset,
                batch_size=self.batch_size,
                shuffle=self.shuffle,
                generator=torch.Generator().manual_seed(self.seed) if self.shuffle else None,
                num_workers=self.num_workers,
                drop_last=n > self.batch_size,
            )

        def val_dataloader(self) -> DataLoader:
            return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)

    return ImageDataModule


def __getattr__(name: str) -> Any:  # PEP 562: ``ImageDataModule`` is built when first asked for
    if name == "ImageDataModule":
        cls = _define_datamodule()
        cls.__module__, cls.__qualname__ = __name__, name
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
