"""The ``policy`` modality: diffusion policies over action chunks.

One sample is an action chunk ``[horizon, action_dim]`` in normalised coordinates ([-1, 1] per
dimension, :mod:`distill_policy.normalizer`); its condition is the normalised history of the
last ``n_obs_steps`` observations, a float tensor ``[n_obs_steps, obs_dim]`` (Chi et al. 2023,
Diffusion Policy). Data are demonstrations of a task's scripted expert, generated in code with
a fixed seed (:mod:`distill_policy.tasks`) and cut into (history, chunk) pairs
(:mod:`distill_policy.data`). The networks (:mod:`distill_policy.network`) carry the normaliser
with their weights. What matters for a policy is closed-loop behaviour, so ``distill bench
policy`` rolls policies out in the task's environment (:mod:`distill_policy.bench`);
``evaluate`` here only checks chunks open-loop, for ``distill eval`` reports.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Mapping

import torch
from torch import nn

from distill.errors import DistillError
from distill.modality import DataBatch, Modality
from distill_policy.data import ChunkDataset, make_chunks
from distill_policy.normalizer import Normalizer
from distill_policy.tasks import TASKS, Task, make_task

ASSETS = Path(__file__).resolve().parent / "assets"
NETWORK_NAMES = ("unet", "transformer")


def teacher_file(task: str) -> Path:
    """The bundled teacher of ``task`` (trained by ``distill train configs/policy/<task>_teacher.yaml``)."""
    return ASSETS / f"{task}_teacher.safetensors"


class PolicyModality(Modality):
    """Action chunks conditioned on observation histories, for the tasks of :mod:`distill_policy.tasks`."""

    name = "policy"
    kind = "continuous"
    description = "diffusion policies: action chunks (horizon, action_dim) given observation histories; rollout benchmarks"

    @dataclass
    class Options:
        """Options of the policy modality.

        task: ``two_route`` (2-D navigation past an obstacle, two routes) or ``pointmaze``.
        n_obs_steps: observations the policy reads (T_o).
        horizon: actions per predicted chunk (H).
        n_action_steps: actions executed per chunk before planning again (T_a <= H).
        n_demos: expert episodes generated for training (seed ``data_seed``).
        network: ``unet`` (1-D temporal UNet with FiLM) or ``transformer``.
        network_args: keyword arguments of that network (e.g. ``down_dims``).
        """

        task: str = "two_route"
        n_obs_steps: int = 2
        horizon: int = 16
        n_action_steps: int = 8
        n_demos: int = 500
        data_seed: int = 0
        network: str = "unet"
        network_args: Dict[str, Any] = field(default_factory=dict)

    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        o = self.options
        if o.task not in TASKS:
            close = difflib.get_close_matches(o.task, list(TASKS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise DistillError(f"unknown policy task {o.task!r}{hint} (choose from {', '.join(TASKS)})")
        if o.network not in NETWORK_NAMES:
            raise DistillError(f"unknown policy network {o.network!r}; choose from {', '.join(NETWORK_NAMES)}")
        if int(o.n_obs_steps) < 1 or int(o.horizon) < 1:
            raise DistillError(f"n_obs_steps and horizon must be >= 1; got {o.n_obs_steps}, {o.horizon}")
        if not 1 <= int(o.n_action_steps) <= int(o.horizon):
            raise DistillError(f"n_action_steps must be in [1, horizon={o.horizon}]; got {o.n_action_steps}")
        if int(o.n_demos) < 1:
            raise DistillError(f"n_demos must be >= 1; got {o.n_demos}")
        self._task: Task | None = None
        self._chunks: ChunkDataset | None = None
        self._normalizer: Normalizer | None = None
        self._normalised: tuple[torch.Tensor, torch.Tensor] | None = None

    # --- task and data ------------------------------------------------------------------
    @property
    def task(self) -> Task:
        if self._task is None:
            self._task = make_task(self.options.task)
        return self._task

    @property
    def sample_shape(self) -> tuple[int, int]:
        return (int(self.options.horizon), self.task.action_dim)

    @property
    def conditional(self) -> bool:
        return True

    def chunks(self) -> ChunkDataset:
        """Every (observation history, action chunk) pair of the demonstrations, in task units."""
        if self._chunks is None:
            demos = self.task.demos(int(self.options.n_demos), torch.Generator().manual_seed(int(self.options.data_seed)))
            self._chunks = make_chunks(demos, int(self.options.n_obs_steps), int(self.options.horizon), self.task.hold_action())
        return self._chunks

    @property
    def normalizer(self) -> Normalizer:
        """Min-max statistics of the demonstrations' observations and actions."""
        if self._normalizer is None:
            chunks = self.chunks()
            self._normalizer = Normalizer(self.task.obs_dim, self.task.action_dim).fit(chunks.obs, chunks.actions)
        return self._normalizer

    def normalised(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(obs [M, T_o, obs_dim], actions [M, H, A])`` of :meth:`chunks`, normalised."""
        if self._normalised is None:
            chunks, norm = self.chunks(), self.normalizer
            self._normalised = (norm.normalize_obs(chunks.obs), norm.normalize_action(chunks.actions))
        return self._normalised

    def sample_data(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> DataBatch:
        """``n`` demonstration samples drawn uniformly with replacement: chunks as ``x0``, histories as ``cond``."""
        obs, actions = self.normalised()
        index = torch.randint(obs.shape[0], (int(n),), generator=generator)
        x0, cond = actions[index], obs[index]
        if device is not None:
            x0, cond = x0.to(device), cond.to(device)
        return DataBatch(x0=x0, cond=cond)

    def sample_condition(self, n: int, generator: torch.Generator | None = None, device: Any = None) -> Any:
        """Observation histories of the demonstrations (the states a data-free student learns to act in)."""
        obs, _ = self.normalised()
        cond = obs[torch.randint(obs.shape[0], (int(n),), generator=generator)]
        return cond if device is None else cond.to(device)

    def null_condition(self, n: int, device: Any = None) -> Any:
        """None: the networks read it as the all-zero observation features."""
        return None

    def reference(self, n: int, generator: torch.Generator | None = None) -> DataBatch:
        return self.sample_data(n, generator if generator is not None else torch.Generator().manual_seed(20240601))

    # --- networks ---------------------------------------------------------------------------
    def build_network(self, role: str, **overrides: Any) -> nn.Module:
        """``PolicyUNet`` (or ``PolicyTransformer``) for this task's shapes, ``network_args`` and
        ``overrides`` (later keys win, so a checkpoint's saved config rebuilds its network); its
        normaliser is fitted on the demonstrations when the shapes are this task's (a checkpoint's
        own statistics then replace them when it is loaded)."""
        from distill_policy.network import NETWORKS

        o = self.options
        kwargs = {"obs_dim": self.task.obs_dim, "action_dim": self.task.action_dim, "horizon": int(o.horizon),
                  "n_obs_steps": int(o.n_obs_steps), **dict(o.network_args), **overrides}
        net = NETWORKS[o.network](**kwargs)
        if (net.obs_dim, net.action_dim) == (self.task.obs_dim, self.task.action_dim):
            net.normalizer.set(self.normalizer.stats())
        return net

    def default_teacher(self) -> dict[str, Any]:
        path = teacher_file(self.options.task)
        if not path.is_file():
            raise DistillError(
                f"no bundled teacher for policy task {self.options.task!r} ({path} is missing); train one with "
                f"`distill train configs/policy/{self.options.task}_teacher.yaml` and set teacher.loader=safetensors "
                "teacher.path=<run dir>/student_ema.safetensors"
            )
        return {"loader": "safetensors", "path": str(path)}

    # --- benchmark -----------------------------------------------------------------------
    @classmethod
    def run_benchmark(cls, **kwargs: Any) -> dict[str, Any]:
        """``distill bench policy``: closed-loop rollouts (see :mod:`distill_policy.bench`)."""
        from distill_policy.bench import run_policy_bench

        return run_policy_bench(**kwargs)

    # --- evaluation and pictures -----------------------------------------------------------
    def _task_units(self, samples: torch.Tensor, cond: Any) -> tuple[torch.Tensor, torch.Tensor]:
        norm = self.normalizer
        actions = norm.unnormalize_action(samples.float().clamp(-1, 1))
        if cond is None:
            raise DistillError("policy samples are drawn from their observation histories: pass cond to evaluate / plot them")
        return norm.unnormalize_obs(torch.as_tensor(cond).float()), actions

    def evaluate(self, samples: torch.Tensor, reference: Any, cond: Any = None, **context: Any) -> dict[str, Any]:
        """Open-loop checks of the chunks from their histories (``chunk_collision``, mode share) and
        ``action_rmse_to_data``: the RMS distance of each chunk to the nearest demonstration chunk
        of the reference batch with the closest observation history (normalised units)."""
        obs, actions = self._task_units(samples, cond)
        metrics = dict(self.task.chunk_metrics(obs[:, -1], actions))
        if reference is not None and getattr(reference, "cond", None) is not None:
            ref_obs, ref_x = reference.cond.float(), reference.x0.float()
            q = torch.as_tensor(cond).float().flatten(1)
            nearest = torch.cdist(q, ref_obs.flatten(1)).argmin(dim=1)
            metrics["action_rmse_to_data"] = float((samples.float() - ref_x[nearest]).pow(2).mean().sqrt())
        return metrics

    def save_samples(self, samples: torch.Tensor, path: Path | str, cond: Any = None, title: str | None = None,
                     **context: Any) -> list[Path]:
        """The chunks' open-loop paths drawn from their start positions over the scene (PNG)."""
        from distill_policy.plots import save_chunk_panels

        obs, actions = self._task_units(samples, cond)
        path = Path(path)
        if not path.suffix:
            path = path / "samples.png"
        return [save_chunk_panels(self.task, {title or "samples": (obs, actions)}, path)]

    def save_comparison(self, panels: Mapping[str, torch.Tensor], path: Path | str, cond: Any = None,
                        title: str | None = None, **context: Any) -> list[Path]:
        """Several sample sets from the same histories and noise, side by side."""
        from distill_policy.plots import save_chunk_panels

        converted = {label: self._task_units(samples, cond) for label, samples in panels.items()}
        return [save_chunk_panels(self.task, converted, Path(path), title=title)]


__all__ = ["PolicyModality", "teacher_file"]
