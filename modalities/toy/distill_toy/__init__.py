"""distill-plugin-toy: 2-D toy distributions with exact teachers for distill."""
from __future__ import annotations

__version__ = "0.1.0"

from distill_toy.data import DATASETS, ToyDataset, make_dataset
from distill_toy.metrics import ModeStats, mode_statistics
from distill_toy.modality import ToyModality
from distill_toy.teacher import ExactMixtureNet, load_exact_teacher

__all__ = [
    "__version__",
    "DATASETS",
    "ToyDataset",
    "make_dataset",
    "ModeStats",
    "mode_statistics",
    "ToyModality",
    "ExactMixtureNet",
    "load_exact_teacher",
]
