"""One LightningModule that runs every method.

``DistillModule`` uses manual optimisation: at each distillation step it asks the
method for its phases (which role to update, in order), and for each phase it
turns gradients on for that role only, draws the phase's batch from a generator
seeded by ``(seed, step, phase)``, computes the method's loss, backpropagates,
all-reduces gradients across ranks, clips, and steps that role's optimiser at the
rate :func:`distill.engine.schedule.lr_factor` gives for the current step. It keeps
its own step counter (``distill_step``): Lightning's ``global_step`` counts every
optimiser step, which is not a distillation step.

The teacher is frozen and kept outside the module's state dict, so it is never
written into checkpoints. A non-finite loss or gradient stops the run with a
message naming the phase, the step and the last good checkpoint.
"""
from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import torch
import lightning.pytorch as pl
from torch import nn

from distill.denoiser import Denoiser
from distill.engine.export import load_denoiser
from distill.engine.schedule import lr_factor
from distill.errors import DistillError
from distill.method import Batch, Losses, Method, ModelSpec, Role, Roles
from distill.modality import Modality
from distill.nets.embeddings import with_extra_inputs
from distill.process import DiscreteProcess


class NonFiniteError(DistillError):
    """A loss or gradient became NaN or infinite."""


def step_seed(seed: int, step: int, phase: int) -> int:
    """A 63-bit seed for (run seed, step, phase) — splitmix64-style mixing."""
    z = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + phase * 0x94D049BB133111EB) & (2**64 - 1)
    z ^= z >> 31
    z = (z * 0xBF58476D1CE4E5B9) & (2**64 - 1)
    z ^= z >> 27
    return z & (2**63 - 1)


def _map(obj: Any, fn) -> Any:
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map(v, fn) for v in obj)
    return obj


def has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


class DistillModule(pl.LightningModule):
    """Runs ``method`` on ``modality`` with a frozen ``teacher``; see module docstring."""

    def __init__(self, method: Method, modality: Modality, teacher: Denoiser, cfg: Any) -> None:
        super().__init__()
        self.automatic_optimization = False
        self._time_fraction: float | None = None  # elapsed fraction of trainer.max_minutes (lr decay)
        self.method = method
        self.modality = modality
        self.cfg = cfg
        self._frozen = {}  # a plain dict: not a submodule, not checkpointed
        method.bind(modality)
        if teacher is not None:
            teacher.requires_grad_(False).eval()
            self._frozen["teacher"] = teacher
            self.model_spec = ModelSpec(teacher.process, teacher.prediction, teacher.time_input)
        else:
            self.model_spec = method.model_spec()
        self.role_specs: dict[str, Role] = {}
        self.trained = nn.ModuleDict()
        for role in method.roles():
            role = self._apply_overrides(role)
            self.role_specs[role.name] = role
            self.trained[role.name] = self._build_role(role)
        if "student" not in self.trained:
            raise DistillError(f"method {method.name!r} declares no 'student' role; every method trains a student")
        half_life = cfg.ema.half_life
        self.student_ema = None
        if half_life:
            self.student_ema = copy.deepcopy(self.trained["student"]).requires_grad_(False)
        self.register_buffer("distill_step", torch.zeros((), dtype=torch.long))
        self.roles = self._make_roles()
        method.setup(self.roles, modality)

    # --- construction ------------------------------------------------------
    @property
    def teacher(self) -> Denoiser | None:
        return self._frozen.get("teacher")

    def _make_roles(self) -> Roles:
        modules: dict[str, nn.Module] = {**self._frozen, **dict(self.trained.items())}
        if getattr(self, "student_ema", None) is not None:
            modules["student_ema"] = self.student_ema
        return Roles(modules)

    def _apply_overrides(self, role: Role) -> Role:
        import dataclasses

        changes: dict[str, Any] = {}
        if role.name == "student" and self.cfg.student.init:
            changes["init"] = self.cfg.student.init
        optim = self.cfg.optim.get(role.name)
        if optim is not None:
            for key in ("lr", "weight_decay", "grad_clip"):
                value = getattr(optim, key)
                if value is not None:
                    changes[key] = value
            if optim.betas is not None:
                changes["betas"] = tuple(optim.betas)
        unknown = set(self.cfg.optim) - {r.name for r in self.method.roles()}
        if unknown:
            known = ", ".join(r.name for r in self.method.roles())
            raise DistillError(f"optim names roles {sorted(unknown)} that method {self.method.name!r} does not have (roles: {known})")
        return dataclasses.replace(role, **changes)

    def _build_role(self, role: Role) -> nn.Module:
        init = role.init
        if init == "auto":
            init = "teacher" if self.teacher is not None and has_parameters(self.teacher.net) else "fresh"
        if init == "teacher":
            if self.teacher is None:
                raise DistillError(f"role {role.name!r} is initialised from the teacher, but method {self.method.name!r} runs without one")
            if not has_parameters(self.teacher.net):
                raise DistillError(
                    f"role {role.name!r} is initialised from the teacher, but the teacher "
                    f"({type(self.teacher.net).__name__}) has no weights; set the role's init to 'fresh'"
                )
            module = copy.deepcopy(self.teacher)
            if role.extra_inputs:
                module.net = with_extra_inputs(self.teacher.net, role.extra_inputs)
        elif init == "fresh":
            overrides = dict(self.cfg.student.network) if role.name == "student" else {}
            if role.extra_inputs:
                overrides["extra_inputs"] = list(role.extra_inputs)
            net = self.modality.build_network(role.name, **overrides)
            if not role.denoiser:
                return net
            spec = self.model_spec
            module = Denoiser(net, spec.process, prediction=role.prediction or spec.prediction, time_input=spec.time_input)
        elif init == "student":
            module = copy.deepcopy(self.trained["student"])
            if role.extra_inputs:
                module.net = with_extra_inputs(module.net, role.extra_inputs)
        elif init == "method":
            module = self.method.build_role(role, Roles({**self._frozen, **dict(self.trained.items())}), self.modality)
        elif init.endswith(".safetensors"):
            module = self._warm_start(role, Path(init))
        else:
            raise DistillError(f"role {role.name!r} has unknown init {init!r}; use teacher, fresh, student, method "
                               "or a FILE.safetensors export to warm-start from")
        prediction = self.cfg.student.prediction if role.name == "student" else None
        if prediction and isinstance(module, Denoiser) and prediction != module.prediction:
            # student.prediction: the same weights, read as another native prediction type. A one-step
            # student of an eps teacher whose alpha(t_max) ~ 0 gets x0 = (x - sigma eps) / alpha, which
            # magnifies every change of its output by 1 / alpha(t_max); as x0 or v it is well conditioned.
            module = Denoiser(module.net, module.process, prediction=prediction, time_input=module.time_input)
        return module.requires_grad_(True).train()

    def _warm_start(self, role: Role, path: Path) -> Denoiser:
        """Role ``role`` from an exported denoiser (``student.init: FILE.safetensors``).

        Two-stage recipes start a distribution-matching run from a regression student
        (e.g. ``kd`` then ``dmd2``), and a published student can be trained further. The
        export must describe the same noising process as this run's teacher: the method's
        losses read the student's output through that process.
        """
        if not path.is_file():
            raise DistillError(f"{role.name}.init {str(path)!r} does not exist; give a .safetensors export of a "
                               "previous run (e.g. runs/NAME/student_ema.safetensors, with its .json sidecar)")
        module, _ = load_denoiser(path, self.modality, role=role.name)
        process = self.model_spec.process.describe()  # the teacher's, when there is one
        if module.process.describe() != process:
            raise DistillError(f"{role.name}.init {str(path)!r} was trained for the process {module.process.describe()}, "
                               f"but this run's teacher uses {process}; warm-start from an export of the same teacher")
        if role.extra_inputs:
            module.net = with_extra_inputs(module.net, role.extra_inputs)
        return module

    def configure_optimizers(self):
        optimizers = []
        self._opt_index = {}
        for index, (name, module) in enumerate(self.trained.items()):
            spec = self.role_specs[name]
            optimizer = torch.optim.AdamW(module.parameters(), lr=spec.lr, betas=spec.betas,
                                          weight_decay=spec.weight_decay, foreach=True)
            optimizers.append(optimizer)
            self._opt_index[name] = index
        for name in self.trained:  # a bad schedule fails here, before the first step
            self._lr_factor(name, 0)
        return optimizers

    def _lr_factor(self, name: str, step: int) -> float:
        """The learning-rate multiplier of role ``name`` at ``step`` (its ``optim.<role>`` schedule)."""
        optim = self.cfg.optim.get(name)
        if optim is None:
            return 1.0
        return lr_factor(step, warmup_steps=optim.warmup_steps, decay=optim.decay,
                         total_steps=self.cfg.trainer.max_steps, final_fraction=optim.final_lr_fraction,
                         time_fraction=self._time_fraction)

    def on_train_start(self) -> None:
        self._started = time.monotonic()

    def _update_time_fraction(self) -> None:
        """Elapsed fraction of ``trainer.max_minutes`` (None without a time budget), the same on every rank."""
        minutes = self.cfg.trainer.max_minutes
        if not minutes:
            self._time_fraction = None
            return
        fraction = (time.monotonic() - getattr(self, "_started", time.monotonic())) / (60.0 * minutes)
        if self._trainer is not None and self.trainer.world_size > 1:  # one clock for all ranks: rank 0's
            fraction = float(self.trainer.strategy.broadcast(fraction, src=0))
        self._time_fraction = fraction

    # --- device placement of the frozen teacher ------------------------------
    def setup(self, stage: str) -> None:
        for frozen in self._frozen.values():
            frozen.to(self.device)

    def on_fit_start(self) -> None:
        self.setup("fit")

    # --- data ----------------------------------------------------------------
    def make_batch(self, step: int, phase_index: int) -> Batch:
        """The phase's inputs: the global batch for all ranks from one seeded generator, sliced,
        of the size the method asks for that phase (:meth:`Method.phase_batch_size`)."""
        generator = torch.Generator().manual_seed(step_seed(self.cfg.trainer.seed, step, phase_index))
        world = self.trainer.world_size if self._trainer is not None else 1
        rank = self.trainer.global_rank if self._trainer is not None else 0
        size = self.method.phase_batch_size(self.method.phases(step)[phase_index], self.cfg.data.batch_size)
        take = slice(rank * size, (rank + 1) * size)
        device = self.device
        shape = tuple(self.modality.sample_shape)
        noise = torch.randn((size * world, *shape), generator=generator)[take]
        x0 = None
        if self.method.needs_data:
            data = self.modality.sample_data(size * world, generator)
            x0 = data.x0[take].to(device)
            cond = _map(data.cond, lambda c: c[take].to(device))
        else:
            cond = self.modality.sample_condition(size * world, generator)
            cond = _map(cond, lambda c: c[take].to(device))
        null = _map(self.modality.null_condition(size), lambda c: c.to(device))
        x_T = None
        process = self.model_spec.process
        if isinstance(process, DiscreteProcess):  # tokens start from the prior draw the noise maps to
            x_T = process.prior_from_noise(noise).to(device)
        return Batch(noise=noise.to(device), cond=cond, null_cond=null, x0=x0, generator=generator,
                     step=step, world=world, rank=rank, x_T=x_T)

    # --- the step --------------------------------------------------------------
    def _set_trainable(self, names: list[str]) -> None:
        for name, module in self.trained.items():
            module.requires_grad_(name in names)

    def _check_finite(self, value: torch.Tensor, what: str, phase: str, step: int, losses: Losses | None = None) -> None:
        if torch.isfinite(value).all():
            return
        terms = ""
        if losses is not None:
            terms = " (" + ", ".join(f"{k}={v:.4g}" for k, v in losses.detached().items()) + ")"
        last = Path(self.cfg.output.dir or ".") / "checkpoints" / "last.ckpt"
        keep = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
        raise NonFiniteError(
            f"{what} became {value.flatten()[~torch.isfinite(value.flatten())][0].item()} at step {step} in phase "
            f"{phase!r}{terms}; stopped, {keep}. Lower optim.{phase}.lr, set optim.{phase}.grad_clip, "
            "or check the teacher and data, then resume with --resume."
        )

    def _all_reduce_grads(self, module: nn.Module) -> None:
        """Average gradients over ranks (the role-wise DDP of :mod:`distill.engine.strategies`)."""
        world = self.trainer.world_size
        if world == 1 or not torch.distributed.is_initialized() or getattr(self.trainer.strategy, "shards_gradients", False):
            return
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        torch.distributed.all_reduce(flat)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    def training_step(self, batch: Any, batch_idx: int) -> None:
        step = int(self.distill_step)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        logs: dict[str, float] = {}
        self._update_time_fraction()
        for phase_index, phase in enumerate(self.method.phases(step)):
            names = self.method.phase_roles(phase)
            unknown = [n for n in names if n not in self.trained]
            if unknown:
                raise DistillError(f"method {self.method.name!r} phase {phase!r} updates {unknown}, which it does not declare as roles")
            self._set_trainable(names)
            batch_in = self.make_batch(step, phase_index)
            losses = self.method.loss(phase, batch_in, self.roles)
            self._check_finite(losses.total.detach(), f"the {phase} loss", phase, step, losses)
            for name in names:
                optimizers[self._opt_index[name]].zero_grad(set_to_none=True)
            self.manual_backward(losses.total)
            for name in names:
                module = self.trained[name]
                self._all_reduce_grads(module)
                clip = self.role_specs[name].grad_clip
                params = [p for p in module.parameters() if p.grad is not None]
                norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else math.inf)
                self._check_finite(norm.detach(), f"the {name} gradient norm", phase, step, losses)
                optimizer = optimizers[self._opt_index[name]]
                factor = self._lr_factor(name, step)
                for group in optimizer.param_groups:
                    group["lr"] = self.role_specs[name].lr * factor
                optimizer.step()
                logs[f"{name}/grad_norm"] = float(norm)
                logs[f"{name}/lr"] = self.role_specs[name].lr * factor
            for key, value in losses.detached().items():
                logs[f"{phase}/{key}"] = value
        self._set_trainable([])
        self.distill_step += 1
        self.last_logs = logs
        every = max(1, self.cfg.trainer.log_every)
        if step % every == 0:
            self.log_dict({k: v for k, v in logs.items() if k.endswith("/total")}, prog_bar=True, on_step=True,
                          logger=False, batch_size=self.cfg.data.batch_size)

    def configure_model(self) -> None:
        from distill.engine.strategies import RoleFSDPStrategy, shard_roles

        if self._trainer is not None and isinstance(self.trainer.strategy, RoleFSDPStrategy):
            shard_roles(self)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        if int(self.distill_step) >= self.cfg.trainer.max_steps:  # max_steps=0, or resumed at the end
            self.trainer.should_stop = True
            return -1  # Lightning: skip the rest of this epoch
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if int(self.distill_step) >= self.cfg.trainer.max_steps:
            self.trainer.should_stop = True

    # --- sampling --------------------------------------------------------------
    def student_for_sampling(self, ema: bool = True) -> Denoiser:
        return self.student_ema if (ema and self.student_ema is not None) else self.trained["student"]
