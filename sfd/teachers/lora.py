"""Low-rank adaptation (LoRA) of a frozen network: a smaller trainable fake score.

The base weights stay frozen parameters (requires_grad False): no gradients, no optimizer state,
no per-step DDP traffic. `keep_only_trainable` leaves them out of the state_dict, so checkpoints
hold only the LoRA factors, and fills them back in from the live module on load (they are
reloaded from the pretrained source, like the teacher).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class LoRALinear(nn.Module):
    """y = base(x) + (α/r)·B·A·x with `base` frozen and B initialised to 0.

    Args:
        base: the linear layer to adapt (frozen here).
        rank: r, the inner dimension of the low-rank update.
        lora_alpha: α; the update is scaled by α/r.
    """

    def __init__(self, base: nn.Linear, rank: int, lora_alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        dtype = base.weight.dtype
        self.lora_down = nn.Parameter(torch.empty(rank, base.in_features, dtype=dtype))
        self.lora_up = nn.Parameter(torch.zeros(base.out_features, rank, dtype=dtype))
        nn.init.kaiming_uniform_(self.lora_down, a=5**0.5)
        self.scale = lora_alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_down), self.lora_up)


def add_lora(network: nn.Module, rank: int, lora_alpha: float) -> list[str]:
    """Freeze `network` and wrap its attention projections (`LORA_TARGETS`) in `LoRALinear`.

    Args:
        network: the network, modified in place.
        rank: LoRA rank r.
        lora_alpha: LoRA α.

    Returns:
        the names of the trainable LoRA parameters.
    """
    network.requires_grad_(False)
    targets = [
        name
        for name, module in network.named_modules()
        if isinstance(module, nn.Linear) and name.endswith(LORA_TARGETS)
    ]
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = network.get_submodule(parent_name)
        setattr(parent, child, LoRALinear(getattr(parent, child), rank, lora_alpha))
    return [name for name, p in network.named_parameters() if p.requires_grad]


def keep_only_trainable(module: nn.Module, trainable: list[str]) -> None:
    """Leave every parameter not in `trainable` out of `module.state_dict()`; refill it on load.

    Args:
        module: the module whose state_dict is filtered (also when nested in a parent).
        trainable: names (relative to `module`) of the parameters that are saved.
    """
    keep = set(trainable)

    def drop_frozen(mod: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
        for name, _ in mod.named_parameters():
            if name not in keep:
                state.pop(prefix + name, None)

    def fill_frozen(mod: nn.Module, state: dict[str, Any], prefix: str, *_: Any) -> None:
        for name, param in mod.named_parameters():
            if name not in keep:
                state.setdefault(prefix + name, param.detach())

    module.register_state_dict_post_hook(drop_frozen)
    module.register_load_state_dict_pre_hook(fill_frozen)
