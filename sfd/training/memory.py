"""GPU memory of an SFD run, per device: weights, gradients, optimizer state and activations.

The method and its uncertainty are written down in docs/training.md ("Memory"). Static memory
(weights, gradients, optimizer state) is counted from the parameters themselves
(`sfd.training.parameter_bytes`); activations are measured on meta-device twins of the networks
for one SFD iteration (`sfd.training.activations`). This module puts them together for a run,
prints the estimate and refuses a run that cannot fit.

Not counted: the CUDA context and allocator slack (`RUNTIME_OVERHEAD_BYTES`, a flat allowance),
transient kernel workspaces, the loss's own few tensors, and DDP's gradient buckets.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from sfd.errors import SFDConfigError
from sfd.teachers.adapters import AdapterView
from sfd.training.activations import (
    CallCache,
    StepShape,
    adapter_twin,
    example_inputs,
    meta_twin,
    step_activations,
)
from sfd.training.parameter_bytes import (
    ParameterGroup,
    StaticBytes,
    module_groups,
    optimizer_state_count,
    static_bytes,
)

__all__ = [
    "BUDGET_ENV",
    "MemoryEstimate",
    "budget_setting",
    "check_fits",
    "remedies_for",
    "check_run_memory",
    "compute_dtype",
    "device_budget",
    "estimate_module",
    "main_network",
    "shared_base_view",
]

GIB = 1024**3
RUNTIME_OVERHEAD_BYTES = 2 * GIB  # CUDA context, cuBLAS / cuDNN handles, allocator slack
BUDGET_ENV = "SFD_DEVICE_MEMORY_GIB"  # per-device memory to check against, overriding CUDA's
# What a refused run can change, in the refusal's order (`remedies_for` drops those it applies).
CHECKPOINTING_REMEDY = "turn on the teacher's gradient_checkpointing"
SHARED_REMEDY = "train adapters on one shared base"
SHARD_REMEDY = "shard over more devices"  # full copies only: sfd_fsdp refuses model.adapters
REMEDIES = (
    "lower --model.batch_size",
    CHECKPOINTING_REMEDY,
    SHARED_REMEDY,
    SHARD_REMEDY,
)


# --- the estimate of a run --------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per device of one SFD run, and what they were computed from."""

    groups: tuple[ParameterGroup, ...]
    static: StaticBytes
    activations: int | None  # None: not estimated (a network sfd cannot rebuild on meta)
    overhead: int = RUNTIME_OVERHEAD_BYTES

    @property
    def total(self) -> int:
        return self.static.total + (self.activations or 0) + self.overhead

    def role_count(self, role: str, trainable: bool | None = None) -> int:
        return sum(
            g.count
            for g in self.groups
            if g.role == role and (trainable is None or g.trainable == trainable)
        )

    def lines(self, budget: int | None = None) -> list[str]:
        """What `sfd fit` prints: parameter counts, then the bytes per device."""
        counts = []
        for role in ("teacher", "generator", "fake score", "ema"):
            if any(g.role == role for g in self.groups):
                trained = self.role_count(role, True)
                counts.append(
                    f"{role} {_millions(self.role_count(role))}"
                    + (f" ({_millions(trained)} trained)" if trained else "")
                )
        activations = (
            "activations not estimated" if self.activations is None
            else f"activations {_gib(self.activations)}"
        )  # fmt: skip
        of = f" of {_gib(budget)}" if budget is not None else ""
        return [
            "memory estimate: parameters: " + ", ".join(counts) + " (shared weights counted once)",
            f"memory estimate per device: weights {_gib(self.static.weights)}, gradients "
            f"{_gib(self.static.gradients)}, optimizer state {_gib(self.static.optimizer)}, "
            f"{activations}, runtime {_gib(self.overhead)} -> {_gib(self.total)}{of}",
        ]


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 1e5 else f"{n:,}"


def _gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 100 or n == 0 else f"{n / 2**20:.2f} MiB"


def shared_base_view(denoiser: nn.Module) -> AdapterView | None:
    """The shared-base adapter view a denoiser is or wraps (a generator's), if any."""
    return next((m for m in denoiser.modules() if isinstance(m, AdapterView)), None)


def main_network(denoiser: nn.Module) -> nn.Module | None:
    """The outermost diffusers model inside a denoiser (its UNet or transformer), if any; of an
    adapter view (shared base), the shared network's, which the view runs but does not hold."""
    from diffusers import ModelMixin

    view = shared_base_view(denoiser)
    if view is not None:
        return main_network(view.shared.teacher)
    return next((m for m in denoiser.modules() if isinstance(m, ModelMixin)), None)


def _twin(network: nn.Module, denoiser: nn.Module, dtype: torch.dtype) -> nn.Module | None:
    """The meta twin a role's calls are measured on: a view's runs the shared network with its
    adapter active and trained; the shared base's teacher runs it with every adapter off."""
    view = shared_base_view(denoiser)
    if view is None:
        return meta_twin(network, dtype)
    return adapter_twin(network, view.shared.settings.peft_config(), view.adapter_name, dtype)


def compute_dtype(precision: str) -> tuple[torch.dtype | None, bool]:
    """(dtype activations are computed in, whether autocast runs) of a Lightning precision.

    None as dtype: the networks' own dtype.
    """
    if precision.startswith("bf16"):
        return torch.bfloat16, precision.endswith("mixed")
    if precision.startswith("16"):
        return torch.float16, precision.endswith("mixed")
    return None, False


def estimate_module(
    module: Any,
    precision: str,
    shards: int = 1,
    optimizer_states: int | None = None,
    overhead: int = RUNTIME_OVERHEAD_BYTES,
) -> MemoryEstimate:
    """The memory per device of an `SFDModule` run, from its instantiated networks.

    Args:
        module: the `SFDModule` (teacher, generator, fake_score, ema).
        precision: the trainer's precision ("bf16-mixed", "32-true", ...).
        shards: devices weights, gradients and optimizer state are sharded over (FSDP), else 1.
        optimizer_states: per-parameter optimizer state tensors; None reads them from the
            module's optimizer factories (one step on a dummy parameter).
        overhead: the flat allowance for the runtime (CUDA context, allocator slack).
    """
    networks = {
        "teacher": module.teacher,
        "generator": module.generator,
        "fake score": module.fake_score,
    }
    if module.ema is not None:
        networks["ema"] = module.ema
    # A parameter is counted in the first role that holds it: the adapter views before the
    # teacher, which holds the shared base's adapters too (as weights of its network).
    views = [role for role, net in networks.items() if shared_base_view(net) is not None]
    groups = module_groups({r: networks[r] for r in [*views, *networks]})
    if optimizer_states is None:
        optimizer_states = max(
            optimizer_state_count(module.fake_optimizer),
            optimizer_state_count(module.generator_optimizer),
        )
    static = static_bytes(groups, optimizer_states, shards)
    hp = module.hparams
    shape = StepShape(
        batch=hp.batch_size,
        teacher_guided=hp.teacher_guidance != 1.0 or hp.get("override_guidance") not in (None, 1.0),
        fake_train_guided=hp.fake_train_guidance != 1.0,
        fake_eval_guided=hp.fake_eval_guidance != 1.0,
    )
    nets = {role: main_network(net) for role, net in networks.items() if role != "ema"}
    if any(net is None for net in nets.values()):
        return MemoryEstimate(tuple(groups), static, None, overhead)
    dtype, autocast = compute_dtype(precision)
    dtype = dtype or next(nets["teacher"].parameters()).dtype
    twins = {role: _twin(net, networks[role], dtype) for role, net in nets.items()}
    if any(t is None or example_inputs(t, 1, (8, 8), dtype) is None for t in twins.values()):
        return MemoryEstimate(tuple(groups), static, None, overhead)
    trained_copies = {  # a view trains its adapter alone, not the shared network
        role: sum(
            p.numel()
            for p in (shared_base_view(networks[role]) or nets[role]).parameters()
            if p.requires_grad
        )
        * dtype.itemsize
        for role in ("generator", "fake score")
    }
    fp32_weights = next(nets["teacher"].parameters()).dtype != dtype
    activations = step_activations(
        CallCache(
            twins,
            tuple(module.teacher.sample_shape[-2:]),
            dtype,
            getattr(module.teacher, "max_sequence_length", None),  # the flow teachers' T5 length
        ),
        shape,
        checkpointing=getattr(nets["teacher"], "is_gradient_checkpointing", False),
        weight_copies=autocast and fp32_weights and shards == 1,
        trained_weight_bytes=trained_copies,
        gathered_units=2 if shards > 1 else 0,
        element_bytes=dtype.itemsize,
    )
    return MemoryEstimate(tuple(groups), static, activations.total, overhead)


def budget_setting() -> int | None:
    """The memory per device `SFD_DEVICE_MEMORY_GIB` sets, in bytes (None: unset).

    Raises:
        SFDConfigError: the variable is not a positive finite number.
    """
    value = os.environ.get(BUDGET_ENV)
    if not value:
        return None
    try:
        gib = float(value)
    except ValueError:
        gib = float("nan")
    if not gib > 0 or math.isinf(gib):
        raise SFDConfigError(
            f"{BUDGET_ENV}={value!r}: give the memory per device in GiB, a positive number"
        )
    return int(gib * GIB)


def device_budget(trainer: Any) -> int | None:
    """Memory of each of the trainer's devices in bytes, or None when unknown (CPU).

    `SFD_DEVICE_MEMORY_GIB` overrides it (leave headroom, or check a run for another GPU);
    otherwise CUDA's total memory of the trainer's root device.
    """
    setting = budget_setting()
    if setting is not None:
        return setting
    device = getattr(getattr(trainer, "strategy", None), "root_device", None)
    if device is not None and device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return None


def check_fits(
    estimate: MemoryEstimate,
    budget: int | None,
    devices: int,
    sharded: bool,
    remedies: tuple[str, ...] = REMEDIES,
) -> None:
    """Raise `SFDConfigError` (one line) when the estimate exceeds the memory of a device.

    `remedies`: what the line suggests (`remedies_for`: those the run has not applied yet).
    """
    if budget is None or estimate.total <= budget:
        return
    layout = f"{devices} device(s)" + (", sharded" if sharded else "")
    raise SFDConfigError(
        f"this run needs about {_gib(estimate.total)} per device (weights "
        f"{_gib(estimate.static.weights)}, gradients {_gib(estimate.static.gradients)}, optimizer "
        f"{_gib(estimate.static.optimizer)}, activations "
        f"{'?' if estimate.activations is None else _gib(estimate.activations)}) but each of its "
        f"{layout} has {_gib(budget)}; {_either(remedies)}"
    )


def _either(remedies: tuple[str, ...]) -> str:
    return remedies[0] if len(remedies) == 1 else ", ".join(remedies[:-1]) + ", or " + remedies[-1]


def remedies_for(module: Any) -> tuple[str, ...]:
    """The refusal's suggestions that `module` has not applied already (checkpointing, adapters)
    and that apply to it (a shared-base run cannot be sharded: `sfd_fsdp` refuses adapters)."""
    checkpointing = any(
        getattr(m, "is_gradient_checkpointing", False) for m in module.teacher.modules()
    )
    shared = getattr(module, "adapters", None) is not None
    return tuple(
        r
        for r in REMEDIES
        if not (checkpointing and r == CHECKPOINTING_REMEDY)
        and not (shared and r in (SHARED_REMEDY, SHARD_REMEDY))
    )


def check_run_memory(module: Any, trainer: Any) -> MemoryEstimate:
    """Print the memory estimate of the run `trainer` is about to start; refuse one that cannot fit.

    Called by `sfd fit` before training starts. The check needs the devices' memory: CUDA's, or
    `SFD_DEVICE_MEMORY_GIB`; on a CPU run without it, the estimate is only printed.

    Args:
        module: the `SFDModule`.
        trainer: its Trainer (precision, strategy, devices).

    Returns:
        the estimate.

    Raises:
        SFDConfigError: the estimate exceeds the memory of one device.
    """
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy
    from lightning.pytorch.utilities import rank_zero_info

    sharded = isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))
    shards = trainer.world_size if sharded else 1
    budget = device_budget(trainer)
    on_gpu = trainer.strategy.root_device.type == "cuda"
    overhead = RUNTIME_OVERHEAD_BYTES if on_gpu else 0
    estimate = estimate_module(module, str(trainer.precision), shards, overhead=overhead)
    for line in estimate.lines(budget):
        rank_zero_info(line)
    check_fits(estimate, budget, trainer.num_devices, sharded, remedies_for(module))
    return estimate
