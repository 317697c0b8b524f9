"""distill: distil many-step diffusion and flow generators into one- and few-step students.

This module is the public API: everything a plugin may import.
"""
from __future__ import annotations

__version__ = "0.1.0"

from distill.errors import DistillError
from distill.hookspecs import hookimpl, hookspec
from distill.process import (
    PREDICTIONS,
    GaussianProcess,
    make_process,
    make_time_sampler,
    sampling_schedule,
)
from distill.denoiser import Denoiser
from distill.samplers import SampleResult, get_sampler, sample
from distill.modality import DataBatch, Modality
from distill.method import Batch, Losses, Method, Role, Roles

__all__ = [
    "__version__",
    "DistillError",
    "hookimpl",
    "hookspec",
    "PREDICTIONS",
    "GaussianProcess",
    "make_process",
    "make_time_sampler",
    "sampling_schedule",
    "Denoiser",
    "SampleResult",
    "get_sampler",
    "sample",
    "DataBatch",
    "Modality",
    "Batch",
    "Losses",
    "Method",
    "Role",
    "Roles",
]
