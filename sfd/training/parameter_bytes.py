"""Parameter and static bytes of an SFD run: weights, gradients, optimizer state.

Every distinct parameter's bytes are counted once (weights shared between the teacher, the
generator and the fake score), and for every trainable one its gradient and the optimizer's
per-parameter state (Adam: two moments, in the parameter's dtype). Under FSDP all three are divided
by the number of devices. The whole estimate is `sfd.training.memory`; docs/training.md ("Memory").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "ParameterGroup",
    "StaticBytes",
    "attention_linear_names",
    "lora_parameter_count",
    "module_groups",
    "optimizer_state_count",
    "parameter_count",
    "static_bytes",
    "trainable_bytes",
]


def parameter_count(module: nn.Module) -> int:
    """Elements of the module's distinct parameters."""
    return sum(p.numel() for p in module.parameters())


def attention_linear_names(network: nn.Module) -> list[str]:
    """Names of the `nn.Linear` layers inside the network's attention modules.

    These are the attention projections a LoRA adapter targets (`to_q`, `to_k`, `to_v`,
    `to_out.0` and, in joint attention, `add_q_proj`, `add_k_proj`, `add_v_proj`, `to_add_out`);
    the names are full module paths, usable as peft's `target_modules`.
    """
    from diffusers.models.attention import AttentionModuleMixin
    from diffusers.models.attention_processor import Attention

    names: list[str] = []
    for name, module in network.named_modules():
        if isinstance(module, (Attention, AttentionModuleMixin)):
            for child, layer in module.named_modules(prefix=name):
                if isinstance(layer, nn.Linear) and child not in names:
                    names.append(child)
    return names


def lora_parameter_count(network: nn.Module, rank: int, targets: Sequence[str]) -> int:
    """Elements of one LoRA adapter of rank `rank` on the `nn.Linear` layers named `targets`.

    Each adapted layer gets A (rank × in) and B (out × rank). A target ending in a bare name
    (`to_q`) matches every layer whose path ends with it, as peft's `target_modules` does.
    """
    total = 0
    for name, module in network.named_modules():
        if isinstance(module, nn.Linear) and any(
            name == t or name.endswith("." + t) for t in targets
        ):
            total += rank * (module.in_features + module.out_features)
    return total


@dataclass(frozen=True)
class ParameterGroup:
    """Parameters of one role that share a dtype and whether they are trained.

    Args:
        role: e.g. "teacher", "generator", "fake score", "base".
        count: elements.
        element_bytes: bytes per element (4 fp32, 2 bf16).
        trainable: whether they get gradients and optimizer state.
    """

    role: str
    count: int
    element_bytes: int
    trainable: bool


@dataclass(frozen=True)
class StaticBytes:
    """Bytes per device of weights, gradients and optimizer state."""

    weights: int
    gradients: int
    optimizer: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer

    @property
    def trainable(self) -> int:
        """Gradients and optimizer state (and the trained weights are in `weights`)."""
        return self.gradients + self.optimizer


def static_bytes(
    groups: Sequence[ParameterGroup], optimizer_states: int, shards: int = 1
) -> StaticBytes:
    """Weights, gradients and optimizer state per device.

    Args:
        groups: the run's distinct parameters.
        optimizer_states: per-parameter state tensors of the optimizer (Adam 2, SGD momentum 1),
            each in the parameter's dtype.
        shards: devices the three are sharded over (FSDP); 1 for replicas (DDP, one device).
    """
    weights = sum(g.count * g.element_bytes for g in groups)
    trained = sum(g.count * g.element_bytes for g in groups if g.trainable)
    return StaticBytes(
        weights=math.ceil(weights / shards),
        gradients=math.ceil(trained / shards),
        optimizer=math.ceil(optimizer_states * trained / shards),
    )


def trainable_bytes(groups: Sequence[ParameterGroup], optimizer_states: int) -> int:
    """Bytes of the trained parameters with their gradients and optimizer state."""
    return sum(g.count * g.element_bytes * (2 + optimizer_states) for g in groups if g.trainable)


def optimizer_state_count(factory: Callable[..., torch.optim.Optimizer]) -> int:
    """Per-parameter state tensors the optimizer keeps, read from one step on a dummy parameter.

    An optimizer that cannot take that step (one that needs a closure) is counted as Adam's two.
    """
    probe = nn.Parameter(torch.zeros(3))
    try:
        optimizer = factory([probe])
        probe.grad = torch.zeros(3)
        optimizer.step()
    except Exception:
        return 2
    return sum(
        1
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, Tensor) and value.numel() == probe.numel()
    )


def module_groups(networks: Mapping[str, nn.Module]) -> list[ParameterGroup]:
    """`ParameterGroup`s of the named networks; a parameter shared by two is counted once, in the
    first that holds it. Floating-point buffers (σ tables, position embeddings) are the role
    "<role> buffers": memory, but not parameters."""
    seen: set[int] = set()
    sizes: dict[tuple[str, int, bool], int] = {}
    for role, network in networks.items():
        for param in network.parameters():
            if id(param) in seen:
                continue
            seen.add(id(param))
            key = (role, param.element_size(), param.requires_grad)
            sizes[key] = sizes.get(key, 0) + param.numel()
        for buffer in network.buffers():
            if id(buffer) not in seen and buffer.is_floating_point():
                seen.add(id(buffer))
                key = (f"{role} buffers", buffer.element_size(), False)
                sizes[key] = sizes.get(key, 0) + buffer.numel()
    return [ParameterGroup(role, n, size, train) for (role, size, train), n in sizes.items()]
