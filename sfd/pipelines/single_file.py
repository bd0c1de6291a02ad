"""A Stable Diffusion (or SDXL) export as one checkpoint file in the original (LDM / SGM) layout.

A1111, ComfyUI and diffusers' `from_single_file` read Stable Diffusion checkpoints in the layout
of the original latent-diffusion code: the UNet under `model.diffusion_model.` (input / middle /
output blocks), the VAE under `first_stage_model.` (encoder.down.i.block.j, mid.attn_1 with 1×1
convolutions), the text encoder under `cond_stage_model.transformer.text_model.` (OpenAI CLIP,
SD 1.x) or `cond_stage_model.model.` (OpenCLIP, SD 2.x). SDXL's layout (Stability's `sgm` code)
keeps UNet and VAE there, adds the UNet's pooled-text/time-id embedding as `label_emb.0`, and
holds both text encoders under `conditioner.embedders.0.transformer.text_model.` (OpenAI CLIP) and
`conditioner.embedders.1.model.` (OpenCLIP, with its `text_projection`). This module renames
diffusers' state dicts into them; the round trips through `from_single_file` are tested.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from sfd.errors import SFDConfigError

SINGLE_FILE_NAME = "sfd_generator.safetensors"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",  # SDXL: pooled text + time ids
    "add_embedding.linear_2": "label_emb.0.2",
}
VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}
OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _rename(name: str, table: dict[str, str]) -> str:
    head, _, leaf = name.rpartition(".")  # leaf: weight / bias
    if head not in table:
        raise KeyError(name)
    return f"{table[head]}.{leaf}"


def unet_to_ldm(state: dict[str, Tensor], config: Any) -> dict[str, Tensor]:
    """A diffusers `UNet2DConditionModel` state dict in the LDM `model.diffusion_model.` layout.

    Args:
        state: the UNet's state dict.
        config: its config (layers_per_block, up_block_types).

    Returns:
        the renamed tensors, shared (not copied).
    """
    per_block = config.layers_per_block
    if not isinstance(per_block, int):
        raise SFDConfigError("single-file export needs one layers_per_block for every block")
    up_has_attention = ["CrossAttn" in kind for kind in config.up_block_types]
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        try:
            out[UNET_PREFIX + _unet_key(name, per_block, up_has_attention)] = tensor
        except KeyError as error:
            raise SFDConfigError(
                f"the UNet parameter {name!r} has no place in the original Stable Diffusion "
                "layout; only SD 1.x / 2.x and SDXL UNets export as a single file"
            ) from error
    return out


def _unet_key(name: str, per_block: int, up_has_attention: list[bool]) -> str:
    head, _, leaf = name.rpartition(".")
    if head in UNET_FIXED:
        return f"{UNET_FIXED[head]}.{leaf}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"input_blocks.{block * (per_block + 1) + layer + 1}.0.{_rename(rest, UNET_RESNET)}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"input_blocks.{block * (per_block + 1) + layer + 1}.1.{rest}"
    if match := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", name):
        return f"input_blocks.{(int(match[1]) + 1) * (per_block + 1)}.0.op.{match[2]}"
    if match := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", name):
        return f"middle_block.{2 * int(match[1])}.{_rename(match[2], UNET_RESNET)}"
    if match := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block.1.{match[1]}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"output_blocks.{block * (per_block + 1) + layer}.0.{_rename(rest, UNET_RESNET)}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
        block, layer, rest = int(match[1]), int(match[2]), match[3]
        return f"output_blocks.{block * (per_block + 1) + layer}.1.{rest}"
    if match := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", name):
        block = int(match[1])
        slot = 2 if up_has_attention[block] else 1
        return f"output_blocks.{block * (per_block + 1) + per_block}.{slot}.conv.{match[2]}"
    raise KeyError(name)


def vae_to_ldm(state: dict[str, Tensor], num_blocks: int) -> dict[str, Tensor]:
    """A diffusers `AutoencoderKL` state dict in the LDM `first_stage_model.` layout.

    The mid-block attention projections become 1×1 convolutions, as in the original model.

    Args:
        state: the VAE's state dict.
        num_blocks: number of encoder (= decoder) blocks.

    Returns:
        the renamed tensors.
    """
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        key, is_attention = _vae_key(name, num_blocks)
        if is_attention and name.endswith("weight") and tensor.ndim == 2:
            tensor = tensor[:, :, None, None]  # linear -> 1×1 convolution
        out[VAE_PREFIX + key] = tensor
    return out


def _vae_key(name: str, num_blocks: int) -> tuple[str, bool]:
    fixed = {"conv_norm_out": "norm_out"}
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", name):
        return f"{match[1]}.mid.attn_1.{_rename(match[2], VAE_ATTENTION)}", True
    name = name.replace("conv_shortcut", "nin_shortcut")
    if match := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", name):
        return f"{match[1]}.mid.block_{int(match[2]) + 1}.{match[3]}", False
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        return f"encoder.down.{match[1]}.block.{match[2]}.{match[3]}", False
    if match := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.+)", name):
        return f"encoder.down.{match[1]}.downsample.{match[2]}", False
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", name):
        return f"decoder.up.{num_blocks - 1 - int(match[1])}.block.{match[2]}.{match[3]}", False
    if match := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", name):
        return f"decoder.up.{num_blocks - 1 - int(match[1])}.upsample.{match[2]}", False
    if match := re.fullmatch(r"(encoder|decoder)\.(\w+)\.(weight|bias)", name):
        return f"{match[1]}.{fixed.get(match[2], match[2])}.{match[3]}", False
    return name, False  # quant_conv, post_quant_conv


def text_encoder_to_ldm(
    state: dict[str, Tensor], open_clip: bool, prefix: str | None = None
) -> dict[str, Tensor]:
    """A transformers `CLIPTextModel` (or `CLIPTextModelWithProjection`) state dict in the
    original layout.

    Args:
        state: the text encoder's state dict (with or without the `text_model.` level).
        open_clip: write the OpenCLIP layout of SD 2.x (q, k, v fused into `in_proj`) instead of
            the OpenAI CLIP layout of SD 1.x.
        prefix: the key prefix (default: SD 1.x's / 2.x's for the layout); an OpenCLIP encoder
            with a projection also gets its `text_projection` (stored transposed, as OpenCLIP
            multiplies from the right).

    Returns:
        the renamed tensors.
    """
    state = {k.removeprefix("text_model."): v for k, v in state.items() if "position_ids" not in k}
    if not open_clip:
        return {(prefix or CLIP_PREFIX) + k: v for k, v in state.items()}
    head = prefix or OPEN_CLIP_PREFIX
    out: dict[str, Tensor] = {
        head + "token_embedding.weight": state["embeddings.token_embedding.weight"],
        head + "positional_embedding": state["embeddings.position_embedding.weight"],
        head + "ln_final.weight": state["final_layer_norm.weight"],
        head + "ln_final.bias": state["final_layer_norm.bias"],
    }
    if "text_projection.weight" in state:
        out[head + "text_projection"] = state["text_projection.weight"].T
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for i in layers:
        source, target = f"encoder.layers.{i}.", f"{head}transformer.resblocks.{i}."
        for leaf in ("weight", "bias"):
            out[f"{target}attn.in_proj_{leaf}"] = torch.cat(
                [state[f"{source}self_attn.{p}_proj.{leaf}"] for p in ("q", "k", "v")]
            )
            for old, new in OPEN_CLIP_LAYER.items():
                out[f"{target}{new}.{leaf}"] = state[f"{source}{old}.{leaf}"]
    return out


def write_single_file(
    unet: Any, vae: Any, text_encoder: Any, path: Path, dtype: torch.dtype | None = None
) -> Path:
    """Write UNet, VAE and text encoder as one original-layout safetensors checkpoint.

    Args:
        unet: the generator's `UNet2DConditionModel`.
        vae: the `AutoencoderKL`.
        text_encoder: the `CLIPTextModel` (OpenCLIP layout when its activation is "gelu", the
            OpenCLIP text tower of SD 2.x; OpenAI CLIP layout otherwise).
        path: the file to write.
        dtype: cast floating tensors to this dtype (default: keep).

    Returns:
        the file.
    """
    open_clip = getattr(text_encoder.config, "hidden_act", "quick_gelu") == "gelu"
    tensors = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), len(vae.config.down_block_types)),
        **text_encoder_to_ldm(text_encoder.state_dict(), open_clip),
    }
    return save_tensors(tensors, path, dtype)


def write_sdxl_single_file(
    unet: Any,
    vae: Any,
    text_encoder: Any,
    text_encoder_2: Any,
    path: Path,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write an SDXL UNet, VAE and both text encoders as one SGM-layout safetensors checkpoint.

    Args:
        unet: the generator's SDXL `UNet2DConditionModel`.
        vae: the `AutoencoderKL`.
        text_encoder: the `CLIPTextModel` (OpenAI CLIP layout).
        text_encoder_2: the `CLIPTextModelWithProjection` (OpenCLIP layout).
        path: the file to write.
        dtype: cast floating tensors to this dtype (default: keep).

    Returns:
        the file.
    """
    tensors = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), len(vae.config.down_block_types)),
        **text_encoder_to_ldm(text_encoder.state_dict(), False, SDXL_CLIP_PREFIX),
        **text_encoder_to_ldm(text_encoder_2.state_dict(), True, SDXL_OPEN_CLIP_PREFIX),
    }
    return save_tensors(tensors, path, dtype)


def save_tensors(tensors: dict[str, Tensor], path: Path, dtype: torch.dtype | None) -> Path:
    """Write tensors as one safetensors file, floating ones cast to `dtype` (None: kept).

    Tensors that share memory (tied weights, e.g. T5's `shared` and `encoder.embed_tokens`) are
    written as separate copies, as safetensors requires.
    """
    seen: set[int] = set()
    out: dict[str, Tensor] = {}
    for key, tensor in tensors.items():
        tensor = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
        tensor = tensor.detach().contiguous()
        storage = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if storage in seen else tensor
        seen.add(storage)
    tensors = out
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
