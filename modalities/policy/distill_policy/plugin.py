"""Hook implementations of the policy plugin (entry point ``distill: policy = distill_policy.plugin``).

Importing this module is cheap: matplotlib, Lightning and gymnasium-robotics load only when
data, pictures or the PointMaze task are first used.
"""
from __future__ import annotations

from distill import hookimpl
from distill_policy.modality import PolicyModality


@hookimpl
def distill_register_modalities(register) -> None:
    register.add("policy", PolicyModality, description=PolicyModality.description)
