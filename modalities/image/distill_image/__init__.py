"""distill-plugin-image: the image modality for distill (digits, photos, image folders)."""
from __future__ import annotations

__version__ = "0.1.0"

from distill_image.data import (
    DIGITS_CLASSES,
    PHOTOS,
    ImageFolderDataset,
    load_digits_tensor,
    load_photo,
    photo_crops,
)
from distill_image.grids import save_comparison, save_grid
from distill_image.modality import ImageModality


def __getattr__(name: str):  # ImageDataModule imports Lightning: only when asked for
    if name == "ImageDataModule":
        from distill_image import data

        return data.ImageDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "__version__",
    "DIGITS_CLASSES",
    "PHOTOS",
    "ImageDataModule",
    "ImageFolderDataset",
    "ImageModality",
    "load_digits_tensor",
    "load_photo",
    "photo_crops",
    "save_comparison",
    "save_grid",
]
