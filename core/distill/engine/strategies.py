"""Distribution strategies for multi-role training.

DDP's wrapper assumes one forward and one backward per step over one module. A
distillation step runs several phases, each backpropagating into a different role
while other roles are frozen, which trips DDP's reducer ("marked ready twice",
unused parameters). :class:`RoleDDPStrategy` therefore keeps Lightning's DDP
process management (launchers, process groups, samplers, barriers) but does not
wrap the module: it broadcasts rank 0's initial weights, and the engine averages
the gradients of the role being updated with one flat all-reduce after each
phase's backward. The result equals one process at ``world_size`` times the batch.

FSDP2 (``fully_shard`` per trained role through Lightning's
``ModelParallelStrategy``) shards each role's parameters; it reduce-scatters
gradients itself, so the engine skips its own all-reduce (``shards_gradients``).
"""
from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from torch.distributed.fsdp import fully_shard


class RoleDDPStrategy(DDPStrategy):
    """DDP processes without the DDP wrapper; gradients are averaged per role by the engine."""

    strategy_name = "distill_ddp"
    shards_gradients = False

    def configure_ddp(self) -> None:
        # Same start on every rank: broadcast rank 0's parameters and buffers.
        if torch.distributed.is_initialized():
            for tensor in list(self.model.parameters()) + list(self.model.buffers()):
                torch.distributed.broadcast(tensor.data, src=0)


class RoleFSDPStrategy(ModelParallelStrategy):
    """FSDP2: each trained role is sharded on its own with ``fully_shard``."""

    shards_gradients = True

    def __init__(self, world_size: int, **kwargs: Any) -> None:
        # Pure data parallelism: one mesh dimension over every process.
        super().__init__(data_parallel_size=world_size, tensor_parallel_size=1, save_distributed_checkpoint=False, **kwargs)


def shard_roles(module: Any) -> None:
    """Apply FSDP2 to each trained role's network (called from ``configure_model``)."""
    mesh = getattr(module, "device_mesh", None)
    dp_mesh = mesh["data_parallel"] if mesh is not None else None
    from distill.denoiser import Denoiser

    for role in module.trained.values():
        # Shard the network itself: FSDP2 gathers parameters in forward hooks, and methods
        # call Denoiser.predict (not Denoiser.__call__), which reaches the net through net(...).
        fully_shard(role.net if isinstance(role, Denoiser) else role, mesh=dp_mesh)
