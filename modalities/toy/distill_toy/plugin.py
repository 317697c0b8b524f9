"""Hook implementations of the toy plugin (entry point ``distill: toy = distill_toy.plugin``)."""
from __future__ import annotations

from distill import hookimpl
from distill_toy.modality import ToyModality
from distill_toy.teacher import load_exact_teacher


@hookimpl
def distill_register_modalities(register) -> None:
    register.add("toy", ToyModality, description=ToyModality.description)


@hookimpl
def distill_register_teachers(register) -> None:
    register.add(
        "exact",
        load_exact_teacher,
        description="closed-form E[x0|x_t] of a Gaussian-mixture toy dataset (no checkpoint)",
    )
