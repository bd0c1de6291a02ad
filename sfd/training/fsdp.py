"""Fully sharded data parallelism (FSDP2) for full fine-tuning of teachers too large to copy per rank.

`AlternatingFSDPStrategy` is Lightning's `ModelParallelStrategy` (FSDP2, `fully_shard`) with the
data-parallel mesh over every process and the SFD networks sharded by `shard_networks`, which
`SFDModule.configure_model` calls: the teacher, the fake score, the generator and its EMA each
become their own FSDP root, their outermost block lists (diffusers' `down_blocks`, `up_blocks`,
transformer blocks, ...) one FSDP unit per block. Every rank then holds 1/world of each network's
weights, gradients and optimizer state, and gathers one block's weights at a time.

The alternating step needs nothing more. FSDP2 reduce-scatters, after a backward pass, the
gradients of the parameters that required grad in it: the module's optimizer toggle leaves only
the network being updated requiring grad (FSDP2 copies the flag to the gathered weights at every
gather), so the fake-score backward reduces only the fake score's gradients and the generator
backward (which passes *through* the frozen fake score) only the generator's: once each per
iteration, as `AlternatingDDPStrategy` does. The teacher never requires grad and is never reduced.

Precision: `32-true`, or `bf16-mixed`: FSDP2's `MixedPrecisionPolicy` gathers each block's weights
in bf16 (the fp32 shards stay the master weights, Adam's state fp32) and reduce-scatters the
gradients in fp32, under Lightning's bf16 autocast; inputs are not cast (σ stays fp32 for the
preconditioning, as in a bf16-mixed run without FSDP). The memory estimate's FSDP rows assume
exactly this: one bf16 unit computing and one prefetched (`sfd.training.memory`).

Runs on CPU processes with gloo (torch ≥ 2.4's FSDP2 supports it, bf16 included) and on GPUs with
NCCL.
Checkpoints are single files gathered on rank zero (`save_distributed_checkpoint` False), the
same files `sfd export` and `--ckpt_path` read.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
from lightning.fabric.plugins.collectives.torch_collective import default_pg_timeout
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from typing_extensions import override

from sfd.core.loop import bump_structure_version
from sfd.errors import SFDConfigError
from sfd.training.strategies import FROZEN_PREFIXES

SHARDED_NETWORKS = ("teacher", "fake_score", "generator", "ema")
SUPPORTED_PRECISIONS = ("32-true", "32", "bf16-mixed")
# FSDP2's dtype policy per supported precision (None: weights gathered as stored, fp32).
PARAMETER_DTYPES = {"bf16-mixed": torch.bfloat16}


class AlternatingFSDPStrategy(ModelParallelStrategy):
    """FSDP2 over all processes for SFD's full copies (see the module doc).

    Args:
        process_group_backend: "gloo" (CPU) or "nccl" (default: Lightning's choice per device).
        timeout: timeout of collective operations.
        reshard_after_forward: free each block's gathered weights after its forward pass
            (less memory, one more gather in the backward pass).
    """

    def __init__(
        self,
        process_group_backend: str | None = None,
        timeout: timedelta | None = default_pg_timeout,
        reshard_after_forward: bool = True,
    ) -> None:
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=False,
            process_group_backend=process_group_backend,
            timeout=timeout,
        )
        self.reshard_after_forward = reshard_after_forward

    @override
    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes  # pure data parallelism
        super().setup_environment()

    @override
    def setup(self, trainer: Any) -> None:
        check_fsdp_run(trainer.precision, getattr(self.lightning_module, "adapters", None))
        super().setup(trainer)

    @override
    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> Any:
        # An SFD checkpoint never holds the teacher (it is reloaded from its source): load the
        # rest into the sharded networks, after checking that the rest is all there.
        module = self.lightning_module
        stored = torch.load(checkpoint_path, mmap=True, map_location="cpu", weights_only=True)
        missing = [
            key
            for key in module.state_dict()
            if not key.startswith(FROZEN_PREFIXES) and key not in stored["state_dict"]
        ]
        if missing:
            raise SFDConfigError(
                f"checkpoint {str(checkpoint_path)!r} lacks {missing[0]} ({len(missing)} "
                "tensors missing): it is not this run's checkpoint"
            )
        del stored
        strict, module.strict_loading = module.strict_loading, False
        try:
            checkpoint = super().load_checkpoint(checkpoint_path, weights_only=True)
        finally:
            module.strict_loading = strict
        checkpoint.setdefault("state_dict", {})  # the weights are already in the networks
        return checkpoint

    def shard_networks(self, module: nn.Module) -> None:
        """Apply `fully_shard` to every SFD network of `module` (once)."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = self.device_mesh["data_parallel"]
        options = {
            "mesh": mesh,
            "reshard_after_forward": self.reshard_after_forward,
            "mp_policy": mixed_precision_policy(self.precision_plugin.precision),
        }
        for name in SHARDED_NETWORKS:
            network = getattr(module, name, None)
            if network is None or isinstance(network, FSDPModule):
                continue
            for block in outer_blocks(network):
                fully_shard(block, **options)
            fully_shard(network, **options)
            # FSDP2 reads, at its lazy initialisation, which parameters are trained and so which
            # dtype their reduced gradients return to (fp32 under a bf16 policy); it would run at
            # the network's first forward, when the optimizer toggle may have frozen it. Run it
            # now, while the trained networks require grad.
            if isinstance(network, FSDPModule):
                network._get_fsdp_state()._lazy_init()
        bump_structure_version()  # fully_shard swapped parameters without a registration hook

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(
            "sfd_fsdp", cls, description="SFD full copies sharded with FSDP2 (fully_shard)"
        )


def mixed_precision_policy(precision: Any) -> Any:
    """FSDP2's `MixedPrecisionPolicy` for a Lightning precision: under `bf16-mixed` the gathered
    weights are bf16 and the gradients are reduced in fp32; the forward inputs are left as given."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    dtype = PARAMETER_DTYPES.get(str(precision))
    if dtype is None:
        return MixedPrecisionPolicy()
    return MixedPrecisionPolicy(
        param_dtype=dtype, reduce_dtype=torch.float32, cast_forward_inputs=False
    )


def outer_blocks(network: nn.Module) -> list[nn.Module]:
    """The members of the outermost `nn.ModuleList`s of `network` (its blocks), in order."""
    lists: list[str] = []
    blocks: list[nn.Module] = []
    for name, module in network.named_modules():
        if isinstance(module, nn.ModuleList) and not any(
            name.startswith(outer + ".") for outer in lists
        ):
            lists.append(name)
            blocks.extend(module)
    return blocks


def check_fsdp_run(precision: Any, adapters: Any) -> None:
    """Refuse, in one line, the settings `AlternatingFSDPStrategy` does not support."""
    if str(precision) not in SUPPORTED_PRECISIONS:
        raise SFDConfigError(
            f"trainer.precision={precision!r} with sfd_fsdp is not supported; allowed: "
            f"{SUPPORTED_PRECISIONS} (fp16 under FSDP2 needs a gradient scaler sfd_fsdp does not "
            "set up; use sfd_ddp for 16-mixed)"
        )
    if adapters is not None:
        raise SFDConfigError(
            "model.adapters with sfd_fsdp is not supported: a shared-base run trains only small "
            "adapters on one frozen base; use sfd_ddp (configs/ddp.yaml) for it"
        )


def uses_fsdp(trainer: dict[str, Any]) -> bool:
    """Whether a parsed trainer configuration selects `AlternatingFSDPStrategy`."""
    strategy = trainer.get("strategy")
    named = strategy.get("class_path", "") if isinstance(strategy, dict) else strategy
    return str(named).endswith(("sfd_fsdp", "AlternatingFSDPStrategy"))


def check_fsdp_config(config: dict[str, Any]) -> None:
    """`check_fsdp_run` on a parsed `sfd fit` configuration, before anything is built."""
    trainer = config.get("trainer") or {}
    if uses_fsdp(trainer):
        check_fsdp_run(
            trainer.get("precision") or "32-true", (config.get("model") or {}).get("adapters")
        )


if "sfd_fsdp" not in StrategyRegistry:
    AlternatingFSDPStrategy.register_strategies(StrategyRegistry)
