"""Low-rank adaptation (LoRA) of a frozen network with PEFT: a smaller trainable fake score.

The adapters are PEFT's (`LoraConfig` + the diffusers model's `add_adapter`, as diffusers' own
LoRA training scripts do), so the factors carry PEFT's names (`...to_q.lora_A.default.weight`)
and PEFT's initialisation (A Kaiming-uniform, B zero: the adapted network starts equal to the
base). The base weights stay frozen parameters (requires_grad False): no gradients, no optimizer
state, no per-step DDP traffic. `keep_only_trainable` leaves them out of the state_dict, so
checkpoints hold only the LoRA factors, and fills them back in from the live module on load
(they are reloaded from the pretrained source, like the teacher).
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig
from torch import nn

from sfd.errors import SFDConfigError

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # the attention projections


def add_lora(network: nn.Module, rank: int, lora_alpha: float) -> list[str]:
    """Freeze `network` and add trainable PEFT LoRA adapters to its attention projections.

    Args:
        network: a diffusers model (`add_adapter` from diffusers' PEFT integration), modified in
            place.
        rank: LoRA rank r.
        lora_alpha: LoRA α; the update B·A is scaled by α/r.

    Returns:
        the names of the trainable LoRA parameters.
    """
    if not hasattr(network, "add_adapter"):
        raise SFDConfigError(f"{type(network).__name__} does not take PEFT adapters")
    network.requires_grad_(False)
    network.add_adapter(
        LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=LORA_TARGETS, lora_dropout=0.0)
    )
    for name, param in network.named_parameters():
        param.requires_grad_(".lora_" in name)
    return [name for name, param in network.named_parameters() if param.requires_grad]


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
