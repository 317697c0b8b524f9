"""Built-in methods, registered through the same hook as any plugin's."""
from __future__ import annotations

from distill.hookspecs import hookimpl
from distill.methods.add import ADD
from distill.methods.cd import CD, LCM
from distill.methods.di4c import Di4C
from distill.methods.diffusion import Diffusion
from distill.methods.discrete_diffusion import MDLM
from distill.methods.dmd import DMD
from distill.methods.dmd2 import DMD2
from distill.methods.fdistill import FDistill
from distill.methods.kd import KD
from distill.methods.lsd import LSD
from distill.methods.ladd import LADD
from distill.methods.meanflow import MeanFlow
from distill.methods.progressive import Progressive
from distill.methods.reflow import Reflow
from distill.methods.scm import SCM
from distill.methods.sdtt import SDTT
from distill.methods.shortcut import Shortcut
from distill.methods.sid import SiD
from distill.methods.vsd import VSD

BUILTIN_METHODS = [KD, DMD, DMD2, VSD, SiD, FDistill, Diffusion, CD, LCM, Progressive, Reflow, MeanFlow, SCM, Shortcut, ADD, LADD, MDLM, SDTT, LSD, Di4C]


@hookimpl
def distill_register_methods(register) -> None:
    for cls in BUILTIN_METHODS:
        register.add(cls.name, cls, description=cls.description)


@hookimpl
def distill_register_teachers(register) -> None:
    from distill.engine.export import load_safetensors_teacher

    register.add("safetensors", load_safetensors_teacher, description="a distill export: <file>.safetensors + <file>.json sidecar")
