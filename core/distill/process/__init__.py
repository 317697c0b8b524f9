"""Forward-process math (no Lightning): Gaussian processes, time samplers, discrete processes, mixtures."""
from __future__ import annotations

from distill.process.discrete import DISCRETE_PROCESSES, DiscreteProcess, MaskedProcess, UniformProcess
from distill.process.gaussian import (
    BETA_SCHEDULES,
    EDM,
    GAUSSIAN_PROCESSES,
    PREDICTIONS,
    Flow,
    GaussianProcess,
    Trig,
    VPCosine,
    VPDiscrete,
    VPLinear,
    expand_like,
    make_betas,
    make_process,
)
from distill.process.mixture import GaussianMixture, MixtureSample
from distill.process.timesteps import (
    LOGSNR_FLOOR,
    SCHEDULES,
    TIME_SAMPLERS,
    LogitNormalTime,
    LogNormalTime,
    ShiftedTime,
    TimeSampler,
    UniformTime,
    make_time_sampler,
    sampling_schedule,
)

__all__ = [
    "BETA_SCHEDULES", "DISCRETE_PROCESSES", "EDM", "GAUSSIAN_PROCESSES", "PREDICTIONS", "SCHEDULES",
    "LOGSNR_FLOOR", "TIME_SAMPLERS", "DiscreteProcess", "Flow", "GaussianMixture", "GaussianProcess", "LogNormalTime",
    "LogitNormalTime", "MaskedProcess", "MixtureSample", "ShiftedTime", "TimeSampler", "Trig",
    "UniformProcess", "UniformTime", "VPCosine", "VPDiscrete", "VPLinear", "expand_like", "make_betas",
    "make_process", "make_time_sampler", "sampling_schedule",
]
