"""Data-parallel training for SFD's alternating updates: each network synchronised on its own.

One SFD iteration runs two backward passes: the fake-score loss (generator frozen and unused) and
the generator loss (which back-propagates *through* the frozen fake score's input). Wrapped in
`DistributedDataParallel`, that needs `find_unused_parameters=True`: before every backward DDP
walks the autograd graph to find unused parameters, and it reduces every registered bucket
(including the zero-filled ones of the network that is not being updated).

`AlternatingDDPStrategy` keeps Lightning's process launch, process groups, cluster environments
(SLURM, torchrun) and rank-zero checkpointing, but does not wrap the module. Right after each
backward it averages, across ranks, exactly the gradients that backward produced: those of the
parameters that currently require grad (the network the module's optimizer toggle enabled). The
frozen teacher never requires grad, so it is never synchronised, and it is not broadcast at start
either: every rank loads it from the same source.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry
from torch import Tensor, nn
from torch.optim import Optimizer
from typing_extensions import override

from sfd.core.module_hooks import TEACHER_PREFIX
from sfd.errors import SFDConfigError

# module state never broadcast (loaded identically on every rank)
FROZEN_PREFIXES = (TEACHER_PREFIX,)


class AlternatingDDPStrategy(DDPStrategy):
    """Multi-process data parallelism that averages each network's gradients after its backward.

    Args:
        bucket_cap_mb: gradients are all-reduced in flat buckets of at most this size (MiB).
        frozen_prefixes: state-dict prefixes of frozen networks that are neither broadcast at
            start nor synchronised (default: the teacher).
        process_group_backend: "nccl", "gloo", ... (default: Lightning's choice per device).
        timeout: timeout of collective operations.
        start_method: how Lightning launches the local processes ("popen" re-runs the command
            like `strategy="ddp"`; "spawn" like `strategy="ddp_spawn"`).
        checkpoint_io: checkpoint writer (default: Lightning's, or the `plugins` entry).
    """

    def __init__(
        self,
        bucket_cap_mb: float = 25.0,
        frozen_prefixes: tuple[str, ...] = FROZEN_PREFIXES,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        start_method: Literal["popen", "spawn", "fork", "forkserver"] = "popen",
        checkpoint_io: CheckpointIO | None = None,
        **kwargs: Any,
    ) -> None:
        if not bucket_cap_mb > 0:
            raise SFDConfigError(f"bucket_cap_mb={bucket_cap_mb} must be positive")
        super().__init__(
            process_group_backend=process_group_backend,
            timeout=timeout,
            start_method=start_method,
            checkpoint_io=checkpoint_io,
            **kwargs,
        )
        self.bucket_bytes = int(bucket_cap_mb * 2**20)
        self.frozen_prefixes = tuple(frozen_prefixes)

    @override
    def configure_ddp(self) -> None:
        """Instead of wrapping in DDP: start every rank from rank zero's trainable state."""
        assert self.model is not None
        if _distributed_ready():
            for name, tensor in _named_state(self.model):
                if not name.startswith(self.frozen_prefixes):
                    dist.broadcast(tensor.data, src=0)

    @override
    def backward(
        self, closure_loss: Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any
    ) -> Tensor:
        # Strategy.backward, with the gradient average between the backward pass and the
        # precision plugin's post-backward hooks: `on_after_backward`, gradient clipping and the
        # optimizer step all see the global average, as under DDP.
        module = self.lightning_module
        assert module is not None
        self.pre_backward(closure_loss)
        closure_loss = self.precision_plugin.pre_backward(closure_loss, module)
        self.precision_plugin.backward(closure_loss, module, optimizer, *args, **kwargs)
        self.average_gradients()
        closure_loss = self.precision_plugin.post_backward(closure_loss, module)
        self.post_backward(closure_loss)
        return closure_loss

    def average_gradients(self) -> None:
        """Average over ranks the gradients of every parameter that currently requires grad."""
        assert self.model is not None
        if not _distributed_ready() or dist.get_world_size() == 1:
            return
        grads = [p.grad for p in self.model.parameters() if p.requires_grad and p.grad is not None]
        world_size = dist.get_world_size()
        for bucket in _buckets(grads, self.bucket_bytes):
            flat = torch.cat([grad.reshape(-1) for grad in bucket])  # (sum of numels,)
            dist.all_reduce(flat)  # sum over ranks; one collective per bucket
            flat.div_(world_size)
            offset = 0
            for grad in bucket:
                grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        for name, start_method in (("sfd_ddp", "popen"), ("sfd_ddp_spawn", "spawn")):
            strategy_registry.register(
                name,
                cls,
                description=f"SFD per-network gradient averaging, start_method {start_method!r}",
                start_method=start_method,
            )


def _distributed_ready() -> bool:
    return dist.is_available() and dist.is_initialized()


def _named_state(module: nn.Module) -> list[tuple[str, Tensor]]:
    # Every name of a shared tensor: a shared-base run's adapters live in the frozen teacher's
    # network and are broadcast under their trained networks' names.
    return [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]


def _buckets(tensors: list[Tensor], max_bytes: int) -> list[list[Tensor]]:
    """Group tensors (in order) into buckets of one dtype and device and at most max_bytes each."""
    buckets: list[list[Tensor]] = []
    size = 0
    for tensor in tensors:
        nbytes = tensor.numel() * tensor.element_size()
        last = buckets[-1] if buckets else None
        if (
            last is None
            or size + nbytes > max_bytes
            or last[0].dtype != tensor.dtype
            or last[0].device != tensor.device
        ):
            buckets.append([tensor])
            size = nbytes
        else:
            last.append(tensor)
            size += nbytes
    return buckets


if "sfd_ddp" not in StrategyRegistry:
    AlternatingDDPStrategy.register_strategies(StrategyRegistry)
