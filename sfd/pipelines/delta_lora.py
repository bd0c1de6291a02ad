"""The generator as a LoRA of its teacher: a low-rank fit of every weight difference.

For each linear and convolution layer, ΔW = W_generator − W_teacher (out × in·k·k) is fit by its
truncated SVD, ΔW ≈ B·A with B = U_r·sqrt(S_r), A = sqrt(S_r)·V_rᵀ (the best rank-r fit in the
Frobenius norm), and the bias difference goes into the LoRA's `lora_B.bias`. The factors are
saved in the PEFT layout that `StableDiffusionPipeline.load_lora_weights` applies to the
teacher's pipeline (scale 1: alpha = rank). Normalisation layers (GroupNorm / LayerNorm) have no
LoRA form; their differences are left out and counted in the fit report, and the error of the
whole LoRA against the full generator is measured on its output.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sfd.errors import SFDConfigError

LORA_FOLDER = "lora"  # inside the export
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # the name load_lora_weights looks for


@dataclass
class LoRAFit:
    """How well a delta LoRA represents the generator.

    Attributes:
        rank: the requested rank r (layers narrower than r get their full rank).
        largest_rank: the largest rank a layer got (below `rank` when every layer is narrower).
        adapted_layers: linear / convolution layers with a LoRA.
        parameters: number of LoRA parameters.
        weight_relative_error: ‖ΔW − B·A‖_F / ‖ΔW‖_F over all adapted weights.
        uncovered_parameters: tensors whose difference has no LoRA form (normalisation layers).
        uncovered_relative_delta: ‖their difference‖ / ‖their teacher values‖.
        output_max_abs_error: max |x0_LoRA − x0_generator| on the check samples (latents).
        output_relative_rms_error: RMS(x0_LoRA − x0_generator) / RMS(x0_generator).
        check_prompts: prompts of the check samples (one sample each).
        check_seed: seed of their noise.
    """

    rank: int
    largest_rank: int
    adapted_layers: int
    parameters: int
    weight_relative_error: float
    uncovered_parameters: list[str]
    uncovered_relative_delta: float
    output_max_abs_error: float | None = None
    output_relative_rms_error: float | None = None
    check_prompts: list[str] | None = None
    check_seed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def low_rank_factors(delta: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The best rank-r fit B·A of a weight difference (truncated SVD, computed in float64).

    Args:
        delta: ΔW, (out, in) or (out, in, kh, kw).
        rank: r; capped at min(out, in·kh·kw).

    Returns:
        (A, B): A (r, in[, kh, kw]) and B (out, r[, 1, 1]) in delta's dtype.
    """
    matrix = delta.reshape(delta.shape[0], -1).double()  # (out, in·kh·kw)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    r = min(rank, s.numel())
    root = s[:r].sqrt()
    down = (root[:, None] * vh[:r]).reshape(r, *delta.shape[1:])  # (r, in[, kh, kw])
    up = u[:, :r] * root[None]  # (out, r)
    if delta.ndim == 4:
        up = up[:, :, None, None]  # a 1×1 convolution
    return down.to(delta.dtype), up.to(delta.dtype)


@torch.no_grad()
def delta_lora(
    generator_unet: nn.Module, teacher_unet: nn.Module, rank: int
) -> tuple[dict[str, Tensor], LoRAFit]:
    """The LoRA state dict (PEFT keys, without the "unet." prefix) of generator − teacher.

    Args:
        generator_unet: the distilled generator's network.
        teacher_unet: the teacher's network (same architecture).
        rank: LoRA rank r.

    Returns:
        (state dict {"<layer>.lora_A.weight", "<layer>.lora_B.weight", "<layer>.lora_B.bias"},
        the fit report without output errors).
    """
    if rank < 1:
        raise SFDConfigError(f"LoRA rank={rank} must be at least 1")
    teacher_modules = dict(teacher_unet.named_modules())
    state: dict[str, Tensor] = {}
    covered: set[str] = set()
    residual_sq = delta_sq = 0.0
    for name, module in generator_unet.named_modules():
        if not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        base = teacher_modules.get(name)
        if type(base) is not type(module) or base.weight.shape != module.weight.shape:
            raise SFDConfigError(f"generator layer {name!r} does not match the teacher's")
        delta = (module.weight - base.weight).float()
        bias = module.bias - base.bias if module.bias is not None else None
        covered |= {f"{name}.weight", f"{name}.bias"}
        if not bool(delta.any()) and (bias is None or not bool(bias.any())):
            continue
        down, up = low_rank_factors(delta, rank)
        fitted = (up.reshape(up.shape[0], -1) @ down.reshape(down.shape[0], -1)).reshape(
            delta.shape
        )
        residual_sq += float((delta - fitted).double().square().sum())
        delta_sq += float(delta.double().square().sum())
        state[f"{name}.lora_A.weight"] = down.contiguous()
        state[f"{name}.lora_B.weight"] = up.contiguous()
        zero = torch.zeros(module.weight.shape[0], dtype=delta.dtype)
        state[f"{name}.lora_B.bias"] = (bias.float() if bias is not None else zero).contiguous()
    if not state:
        raise SFDConfigError("the generator equals its teacher: there is no difference to export")
    teacher_params = dict(teacher_unet.named_parameters())
    uncovered, moved_sq, size_sq = [], 0.0, 0.0
    for name, param in generator_unet.named_parameters():
        if name in covered:
            continue
        difference = (param - teacher_params[name]).double()
        if bool(difference.any()):
            uncovered.append(name)
            moved_sq += float(difference.square().sum())
            size_sq += float(teacher_params[name].double().square().sum())
    fit = LoRAFit(
        rank=rank,
        largest_rank=max(v.shape[0] for k, v in state.items() if k.endswith(".lora_A.weight")),
        adapted_layers=len({key.rsplit(".lora_", 1)[0] for key in state}),
        parameters=sum(v.numel() for v in state.values()),
        weight_relative_error=math.sqrt(residual_sq / delta_sq) if delta_sq else 0.0,
        uncovered_parameters=uncovered,
        uncovered_relative_delta=math.sqrt(moved_sq / size_sq) if size_sq else 0.0,
    )
    return state, fit


def output_error(lora_x0: Tensor, generator_x0: Tensor) -> tuple[float, float]:
    """(max |a − b|, RMS(a − b) / RMS(b)) of two output batches (B, C, H, W)."""
    difference = (lora_x0 - generator_x0).double()
    rms = generator_x0.double().square().mean().sqrt()
    return float(difference.abs().max()), float(difference.square().mean().sqrt() / rms)
