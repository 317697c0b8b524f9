"""The Method contract: roles, phases and pure-tensor losses.

A method (a distillation objective) declares

* its **roles** (:class:`Role`): which networks exist besides the frozen teacher,
  how each is initialised and how it is optimised;
* its **phases**: which role is updated, in which order, at a given step
  (two-time-scale schedules such as "5 critic updates per student update" live
  here, not in the engine);
* its **loss** for a phase: ``loss(phase, batch, roles) -> Losses``. Losses are
  pure tensor code: no optimiser, no Lightning, no device logic;
* the **student sampler** it trains for (:meth:`Method.sample`).

A method binds to any modality whose ``kind`` is in ``Method.kinds`` through the
Denoiser and Modality contracts alone; it never branches on prediction type or on
the modality.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator

import torch
from torch import nn

from distill.denoiser import Denoiser
from distill.errors import DistillError
from distill.process import sampling_schedule
from distill.samplers import SampleResult, multistep

ROLE_INITS = ("teacher", "fresh", "student", "method")


@dataclass(frozen=True)
class ModelSpec:
    """How fresh networks are wrapped when a method has no teacher to copy it from."""

    process: Any
    prediction: str = "flow"
    time_input: Any = "t"


@dataclass(frozen=True)
class Role:
    """One trained network of a method.

    ``init``: ``"teacher"`` copies the teacher's network (needs a teacher with
    parameters of the student's architecture), ``"fresh"`` builds the modality's
    reference network for this role, ``"student"`` copies the student after it is
    built, ``"method"`` asks :meth:`Method.build_role` (e.g. a discriminator head on
    another role's features). ``"auto"`` means teacher when the teacher has
    trainable weights, else fresh.
    """

    name: str
    init: str = "auto"
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float | None = 1.0
    denoiser: bool = True  # wrap in a Denoiser over the teacher's process (False for heads)
    prediction: str | None = None  # prediction type for fresh denoisers; None = the teacher's
    # Extra scalar inputs the role's network reads besides t (e.g. ("r",) for a flow map):
    # see distill.nets.embeddings. Teacher-initialised roles gain them with zero-initialised
    # embeddings, so they start as exact copies of the teacher.
    extra_inputs: tuple[str, ...] = ()


@dataclass
class Losses:
    """What a phase's loss returns: the scalar to minimise and named terms to log."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)

    def detached(self) -> dict[str, float]:
        out = {"total": float(self.total.detach())}
        out.update({k: float(v.detach()) for k, v in self.terms.items()})
        return out


# the distributions :meth:`Batch.unit_times` draws (the options methods validate their time choices against)
UNIT_TIMES = ("uniform", "logit_normal")


@dataclass
class Batch:
    """Inputs of one phase, all drawn from ``generator`` (seeded by step and phase).

    ``noise`` is standard normal with the shape of a batch of samples in model space;
    ``x0`` holds real data when the method needs it, else None; ``cond`` the
    conditioning of the batch (from the data, or sampled by the modality), and
    ``null_cond`` the modality's null condition for guidance.

    Randomness a loss needs (times, extra noise) must come from :meth:`randn_like`
    and :meth:`rand`: they draw the whole global batch (``world`` ranks) on the CPU
    generator and keep this rank's slice, so a run on N processes sees exactly the
    samples one process would see at N times the batch, and a resumed run sees the
    same numbers as an uninterrupted one.
    """

    noise: torch.Tensor
    cond: Any = None
    null_cond: Any = None
    x0: torch.Tensor | None = None
    generator: torch.Generator | None = None
    step: int = 0
    world: int = 1
    rank: int = 0
    # For a discrete (token) process: the prior draw x_T (Long [B, L]) that ``noise`` maps to
    # (``process.prior_from_noise``); None for Gaussian processes, whose x_T is scaled noise.
    x_T: torch.Tensor | None = None

    def _global(self, draw, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        n = shape[0]
        full = draw((n * self.world, *shape[1:]), generator=self.generator, dtype=dtype)
        return full[self.rank * n : (self.rank + 1) * n].to(device)

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self._global(torch.randn, tuple(x.shape), x.device, x.dtype)

    def rand(self, n: int, device: torch.device | None = None) -> torch.Tensor:
        return self._global(torch.rand, (n,), device or self.noise.device, torch.float32)

    def randint(self, high: int, n: int, device: torch.device | None = None) -> torch.Tensor:
        draw = lambda shape, generator, dtype: torch.randint(high, shape, generator=generator)  # noqa: E731
        return self._global(draw, (n,), device or self.noise.device, torch.long)

    def unit_times(self, n: int, kind: str = "uniform", mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        """``n`` draws in ``(0, 1)``: uniform, or logit-normal ``sigmoid(N(mean, std^2))`` (Esser et al.
        2024, SD3, sec. 3.1; ``mean < 0`` favours the low-noise end). Methods map them onto their time
        range; one helper keeps every method's logit-normal draw the same."""
        if kind == "uniform":
            return self.rand(n)
        if kind == "logit_normal":
            return torch.sigmoid(mean + std * self.randn_like(self.noise.new_empty(n, dtype=torch.float32)))
        raise DistillError(f"unknown time distribution {kind!r}; expected {' or '.join(UNIT_TIMES)}")

    @property
    def size(self) -> int:
        return self.noise.shape[0]

    @property
    def device(self) -> torch.device:
        return self.noise.device


class Roles:
    """Named access to a run's networks: ``roles.teacher``, ``roles.student``, ...

    Denoiser roles are :class:`~distill.denoiser.Denoiser`; heads are plain modules.
    ``roles.teacher`` is frozen and in eval mode.
    """

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self._modules = dict(modules)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["_modules"][name]
        except KeyError:
            raise AttributeError(f"no role {name!r}; roles: {', '.join(self.__dict__['_modules'])}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._modules

    def __iter__(self) -> Iterator[str]:
        return iter(self._modules)

    def items(self):
        return self._modules.items()


class Method:
    """Base class of every distillation method (see module docstring).

    Subclasses set the class attributes and implement :meth:`roles` and :meth:`loss`.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    kinds: ClassVar[frozenset[str]] = frozenset({"continuous"})
    needs_data: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True  # False: the method trains a model from data alone (see model_spec)
    max_student_steps: ClassVar[int | None] = None  # None: any step count
    # True when training ignores student.steps: one trained student samples at any step count
    # (consistency models, flow maps), so a benchmark trains it once for all its step counts.
    step_agnostic: ClassVar[bool] = False
    # True when the ``critic`` role is a fake score: a denoiser trained on the student's own samples
    # (DMD and its family); the training diagnostics then measure how much of its signal is error
    critic_models_student: ClassVar[bool] = False
    paper: ClassVar[str] = ""

    @dataclass
    class Options:
        """Method options (subclasses replace this with their own dataclass)."""

        student_steps: int = 1

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()
        self.process = None  # set by the engine in setup()

    # --- contract ---------------------------------------------------------
    def roles(self) -> list[Role]:
        """The trained roles, student first. The frozen teacher is implicit."""
        return [Role("student")]

    def phases(self, step: int) -> list[str]:
        """Phases run at ``step``, in order; each phase is one optimiser step of its roles."""
        return ["student"]

    def phase_roles(self, phase: str) -> list[str]:
        """Roles whose parameters a phase updates (default: the role named like the phase)."""
        return [phase]

    def phase_batch_size(self, phase: str, batch_size: int) -> int:
        """Samples in a phase's batch, given the run's ``data.batch_size`` (default: that size).

        A two-time-scale method can spend its critic's compute on more, smaller updates.
        """
        return batch_size

    def loss(self, phase: str, batch: Batch, roles: Roles) -> Losses:
        raise NotImplementedError

    def bind(self, modality: Any) -> None:
        """Called once with the run's modality before any role is built (default: nothing).

        A method whose fresh networks depend on the data reads it here, e.g. a token
        diffusion method takes the vocabulary size its :meth:`model_spec` process needs.
        """

    def restore(self, sidecar: dict[str, Any]) -> None:
        """Called when a finished run is opened, with its student's sidecar (default: nothing).

        A method whose sampler has learned parameters outside the network (LSD's per-step
        coefficients, written by :meth:`sampler_spec`) reads them back here.
        """

    def setup(self, roles: Roles, modality: Any) -> None:
        """Called once after the roles exist (e.g. to cache teacher pairs)."""
        self.process = roles.student.process

    def model_spec(self) -> ModelSpec:
        """Process, prediction type and time input of fresh networks when there is no teacher."""
        raise NotImplementedError(f"{self.name} trains without a teacher but defines no model_spec()")

    def build_role(self, role: Role, roles: Roles, modality: Any) -> nn.Module:
        """Build a role whose ``init`` is ``"method"`` (e.g. a discriminator head)."""
        raise NotImplementedError(f"{self.name} declares role {role.name!r} with init='method' but no build_role")

    # --- the student sampler it trains for --------------------------------
    def student_timesteps(self, steps: int) -> torch.Tensor:
        """The times at which a ``steps``-step student is evaluated (t_max first)."""
        return sampling_schedule(self.process, steps)

    def sampler_spec(self, steps: int) -> dict[str, Any]:
        """How an exported ``steps``-step student samples, written to its sidecar: a sampler of
        :mod:`distill.samplers` by name with its process times (here ``multistep``), or
        ``{"name": "method", ...}`` when only this method's :meth:`sample` reproduces it (a
        network with extra inputs, or a wrapper around the exported network)."""
        return {"name": "multistep", "steps": steps, "timesteps": [float(t) for t in self.student_timesteps(steps)]}

    def sample(
        self,
        student: Denoiser,
        noise: torch.Tensor,
        cond: Any = None,
        steps: int = 1,
        generator: torch.Generator | None = None,
    ) -> SampleResult:
        """Generate with the student from unit ``noise``: x0 at t_max, then re-noise.

        Multistep students re-noise the x0 prediction with fresh noise to the next
        time (DMD2, consistency models); one step is the same with a single time.
        """
        process = student.process
        x_T = noise * process.sigma(torch.tensor(process.t_max, dtype=torch.float64)).to(noise.dtype)
        return multistep(student, x_T, cond, timesteps=self.student_timesteps(steps), generator=generator)


def options_from_dict(options_cls: type, values: dict[str, Any] | None, what: str) -> Any:
    """Build an options dataclass, rejecting unknown keys with a close-match hint."""
    from distill.config import build_dataclass

    return build_dataclass(options_cls, values or {}, what)


def describe_options(options: Any) -> dict[str, Any]:
    return dataclasses.asdict(options) if dataclasses.is_dataclass(options) else {}
