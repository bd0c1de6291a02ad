"""An SD3 / SD3.5 or Flux.1 export as one checkpoint file in the original (SAI / BFL) layout.

The original code of both families keeps the transformer under `model.diffusion_model.` with
attention projections fused (one `qkv` matrix per stream; Flux's single-stream blocks fuse q, k, v
and the MLP input into `linear1`) and the final modulation as (shift, scale) where diffusers
has (scale, shift). SD3 calls its blocks `joint_blocks.i.{x_block, context_block}` (SD3.5 adds
q/k norms `ln_q` / `ln_k` and, in Medium, a second self-attention `attn2`); the last block's
context stream is "pre-only" (modulation of shift and scale only, swapped like the final layer).
Flux calls them `double_blocks.i.{img_*, txt_*}` and `single_blocks.i`, and its q/k RMS norms
keep their weight as `scale`.

The rest of the file is as the all-in-one checkpoints hold it: the VAE in the LDM layout
(`sfd.pipelines.single_file.vae_to_ldm`) under `first_stage_model.` (SD3) or `vae.` (Flux), the
text encoders in the transformers layout under `text_encoders.clip_l.transformer.`,
`text_encoders.clip_g.transformer.` (SD3) and `text_encoders.t5xxl.transformer.`. Each map below
is the exact inverse of diffusers' `from_single_file` converters, tested by round trip
(diffusers → original → diffusers is the identity, every tensor bit-identical).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sfd.errors import SFDConfigError
from sfd.pipelines.single_file import UNET_PREFIX, VAE_PREFIX, save_tensors, vae_to_ldm

CLIP_L_PREFIX = "text_encoders.clip_l.transformer."
CLIP_G_PREFIX = "text_encoders.clip_g.transformer."
T5_PREFIX = "text_encoders.t5xxl.transformer."
FLUX_VAE_PREFIX = "vae."


@dataclass(frozen=True)
class Slot:
    """Where one diffusers tensor goes in the original layout.

    Attributes:
        key: the original key; "{leaf}" stands for the diffusers leaf (weight / bias).
        part: its position among the tensors concatenated (dim 0) into that key.
        parts: how many tensors are concatenated there (1: a plain rename).
        swap: swap the two halves (dim 0): diffusers' (scale, shift) -> original (shift, scale).
    """

    key: str
    part: int = 0
    parts: int = 1
    swap: bool = False


def _fused(key: str, names: tuple[str, ...]) -> dict[str, Slot]:
    return {name: Slot(key, i, len(names)) for i, name in enumerate(names)}


def _column(
    table: dict[str, tuple[str, str]], column: int, leaf: str = "{leaf}"
) -> dict[str, Slot]:
    return {name: Slot(f"{keys[column]}.{leaf}") for name, keys in table.items()}


# The two families side by side, diffusers name -> (SD3 original, Flux original): outside the
# blocks ...
EMBEDDINGS = {
    "time_text_embed.timestep_embedder.linear_1": ("t_embedder.mlp.0", "time_in.in_layer"),
    "time_text_embed.timestep_embedder.linear_2": ("t_embedder.mlp.2", "time_in.out_layer"),
    "time_text_embed.text_embedder.linear_1": ("y_embedder.mlp.0", "vector_in.in_layer"),
    "time_text_embed.text_embedder.linear_2": ("y_embedder.mlp.2", "vector_in.out_layer"),
    "context_embedder": ("context_embedder", "txt_in"),
    "proj_out": ("final_layer.linear", "final_layer.linear"),
}
# ... and in the two-stream blocks, transformer_blocks.i.<name> -> (joint_blocks.i.<SD3 key>,
# double_blocks.i.<Flux key>); the q/k norms keep a `weight` in SD3, a `scale` in Flux.
TWO_STREAM = {
    "norm1.linear": ("x_block.adaLN_modulation.1", "img_mod.lin"),
    "norm1_context.linear": ("context_block.adaLN_modulation.1", "txt_mod.lin"),
    "attn.to_out.0": ("x_block.attn.proj", "img_attn.proj"),
    "attn.to_add_out": ("context_block.attn.proj", "txt_attn.proj"),
    "ff.net.0.proj": ("x_block.mlp.fc1", "img_mlp.0"),
    "ff.net.2": ("x_block.mlp.fc2", "img_mlp.2"),
    "ff_context.net.0.proj": ("context_block.mlp.fc1", "txt_mlp.0"),
    "ff_context.net.2": ("context_block.mlp.fc2", "txt_mlp.2"),
}
QK_NORMS = {
    "attn.norm_q": ("x_block.attn.ln_q", "img_attn.norm.query_norm"),
    "attn.norm_k": ("x_block.attn.ln_k", "img_attn.norm.key_norm"),
    "attn.norm_added_q": ("context_block.attn.ln_q", "txt_attn.norm.query_norm"),
    "attn.norm_added_k": ("context_block.attn.ln_k", "txt_attn.norm.key_norm"),
}
SAMPLE_QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
CONTEXT_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")
FINAL_MODULATION = {"norm_out.linear": Slot("final_layer.adaLN_modulation.1.{leaf}", swap=True)}

# --- SD3 / SD3.5 ---------------------------------------------------------------------------------

SD3_FIXED = {
    **_column(EMBEDDINGS, 0),
    "pos_embed.proj": Slot("x_embedder.proj.{leaf}"),
    **FINAL_MODULATION,
}
SD3_BLOCK = {  # transformer_blocks.i.<name> -> joint_blocks.i.<slot>
    **_column(TWO_STREAM, 0),
    **_column(QK_NORMS, 0),
    **_fused("x_block.attn.qkv.{leaf}", SAMPLE_QKV),
    **_fused("context_block.attn.qkv.{leaf}", CONTEXT_QKV),
    # SD3.5 Medium's second self-attention of the image stream
    **_fused("x_block.attn2.qkv.{leaf}", ("attn2.to_q", "attn2.to_k", "attn2.to_v")),
    "attn2.norm_q": Slot("x_block.attn2.ln_q.{leaf}"),
    "attn2.norm_k": Slot("x_block.attn2.ln_k.{leaf}"),
    "attn2.to_out.0": Slot("x_block.attn2.proj.{leaf}"),
}


def sd3_slot(name: str, config: Any) -> Slot:
    """The original place of one `SD3Transformer2DModel` parameter (KeyError if it has none).

    The last block's context stream is pre-only: its modulation (an `AdaLayerNormContinuous` in
    diffusers) is (scale, shift) and becomes the original (shift, scale).
    """
    if name == "pos_embed.pos_embed":  # a parameter, not a module's weight
        return Slot("pos_embed")
    head, _, leaf = name.rpartition(".")
    if head in SD3_FIXED:
        return _with_leaf(SD3_FIXED[head], leaf)
    if match := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", head):
        block, rest = int(match[1]), match[2]
        slot = _with_leaf(SD3_BLOCK[rest], leaf, f"joint_blocks.{block}.")
        last = block == config.num_layers - 1
        if last and rest == "norm1_context.linear":
            return Slot(slot.key, swap=True)
        return slot
    raise KeyError(name)


# --- Flux.1 ---------------------------------------------------------------------------------------

FLUX_FIXED = {
    **_column(EMBEDDINGS, 1),
    "time_text_embed.guidance_embedder.linear_1": Slot("guidance_in.in_layer.{leaf}"),
    "time_text_embed.guidance_embedder.linear_2": Slot("guidance_in.out_layer.{leaf}"),
    "x_embedder": Slot("img_in.{leaf}"),
    **FINAL_MODULATION,
}
FLUX_DOUBLE = {  # transformer_blocks.i.<name> -> double_blocks.i.<slot>
    **_column(TWO_STREAM, 1),
    **_column(QK_NORMS, 1, leaf="scale"),
    **_fused("img_attn.qkv.{leaf}", SAMPLE_QKV),
    **_fused("txt_attn.qkv.{leaf}", CONTEXT_QKV),
}
FLUX_SINGLE = {  # single_transformer_blocks.i.<name> -> single_blocks.i.<slot>
    "norm.linear": Slot("modulation.lin.{leaf}"),
    **_fused("linear1.{leaf}", (*SAMPLE_QKV, "proj_mlp")),
    "attn.norm_q": Slot("norm.query_norm.scale"),
    "attn.norm_k": Slot("norm.key_norm.scale"),
    "proj_out": Slot("linear2.{leaf}"),
}


def flux_slot(name: str, config: Any = None) -> Slot:
    """The original place of one `FluxTransformer2DModel` parameter (KeyError if it has none)."""
    head, _, leaf = name.rpartition(".")
    if head in FLUX_FIXED:
        return _with_leaf(FLUX_FIXED[head], leaf)
    if match := re.fullmatch(r"transformer_blocks\.(\d+)\.(.+)", head):
        return _with_leaf(FLUX_DOUBLE[match[2]], leaf, f"double_blocks.{match[1]}.")
    if match := re.fullmatch(r"single_transformer_blocks\.(\d+)\.(.+)", head):
        return _with_leaf(FLUX_SINGLE[match[2]], leaf, f"single_blocks.{match[1]}.")
    raise KeyError(name)


def _with_leaf(slot: Slot, leaf: str, prefix: str = "") -> Slot:
    if "{leaf}" not in slot.key and leaf != "weight":
        raise KeyError(leaf)  # a norm scale has no bias
    return Slot(prefix + slot.key.format(leaf=leaf), slot.part, slot.parts, slot.swap)


# --- the maps -------------------------------------------------------------------------------------

TRANSFORMER_SLOTS = {"SD3Transformer2DModel": sd3_slot, "FluxTransformer2DModel": flux_slot}


def transformer_to_original(
    state: dict[str, Tensor], config: Any, family: str, prefix: str = UNET_PREFIX
) -> dict[str, Tensor]:
    """A diffusers SD3 or Flux transformer state dict in the original layout.

    Args:
        state: the transformer's state dict.
        config: its config (SD3: `num_layers`, to find the pre-only last block).
        family: "SD3Transformer2DModel" or "FluxTransformer2DModel".
        prefix: put before every key (the all-in-one files' `model.diffusion_model.`).

    Returns:
        the original tensors: renamed ones shared, fused and swapped ones new.
    """
    place = TRANSFORMER_SLOTS[family]
    groups: dict[str, dict[int, Tensor]] = {}
    layout: dict[str, Slot] = {}
    for name, tensor in state.items():
        try:
            slot = place(name, config)
        except KeyError as error:
            raise SFDConfigError(
                f"the {family} parameter {name!r} has no place in the original single-file "
                "layout (SD3 / SD3.5 and Flux.1 transformers export as a single file)"
            ) from error
        groups.setdefault(slot.key, {})[slot.part] = tensor
        layout[slot.key] = slot
    out: dict[str, Tensor] = {}
    for key, parts in groups.items():
        slot = layout[key]
        if sorted(parts) != list(range(slot.parts)):
            raise SFDConfigError(
                f"the {family} state dict has {len(parts)} of the {slot.parts} tensors fused "
                f"into the original {key!r}"
            )
        tensor = parts[0] if slot.parts == 1 else torch.cat([parts[i] for i in range(slot.parts)])
        if slot.swap:
            tensor = torch.cat(tensor.chunk(2, dim=0)[::-1])
        out[prefix + key] = tensor
    return out


def hf_text_encoder_to_original(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """A transformers text encoder (CLIP, T5) as the all-in-one SD3 / Flux files hold it: its own
    layout under `prefix`, CLIP's transformer under `text_model.` and its projection beside it."""
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if "position_ids" in key:
            continue
        clip_body = key.startswith(("embeddings.", "encoder.layers.", "final_layer_norm."))
        out[prefix + ("text_model." + key if clip_body else key)] = tensor
    return out


def write_sd3_single_file(pipeline: Any, path: Path, dtype: torch.dtype | None = None) -> Path:
    """Write an SD3 / SD3.5 export's transformer, VAE and text encoders as one SAI-layout file.

    Args:
        pipeline: the export's pipeline (transformer, vae, text_encoder, text_encoder_2 and
            text_encoder_3, which may be None).
        path: the file to write.
        dtype: cast floating tensors to this dtype (default: keep).

    Returns:
        the file.
    """
    transformer = pipeline.transformer
    tensors = {
        **transformer_to_original(
            transformer.state_dict(), transformer.config, "SD3Transformer2DModel"
        ),
        **vae_to_ldm(pipeline.vae.state_dict(), len(pipeline.vae.config.down_block_types)),
    }
    for name, prefix in (
        ("text_encoder", CLIP_L_PREFIX),
        ("text_encoder_2", CLIP_G_PREFIX),
        ("text_encoder_3", T5_PREFIX),
    ):
        encoder = getattr(pipeline, name)
        if encoder is not None:
            tensors |= hf_text_encoder_to_original(encoder.state_dict(), prefix)
    return save_tensors(tensors, path, dtype)


def write_flux_single_file(pipeline: Any, path: Path, dtype: torch.dtype | None = None) -> Path:
    """Write a Flux.1 export's transformer, VAE and text encoders as one all-in-one file: the
    transformer in BFL's layout, VAE under `vae.`, CLIP-L and T5 under `text_encoders.`.

    Args:
        pipeline: the export's pipeline (transformer, vae, text_encoder, text_encoder_2).
        path: the file to write.
        dtype: cast floating tensors to this dtype (default: keep).

    Returns:
        the file.
    """
    transformer = pipeline.transformer
    vae_state = vae_to_ldm(pipeline.vae.state_dict(), len(pipeline.vae.config.down_block_types))
    tensors = {
        **transformer_to_original(
            transformer.state_dict(), transformer.config, "FluxTransformer2DModel"
        ),
        **{FLUX_VAE_PREFIX + k.removeprefix(VAE_PREFIX): v for k, v in vae_state.items()},
        **hf_text_encoder_to_original(pipeline.text_encoder.state_dict(), CLIP_L_PREFIX),
        **hf_text_encoder_to_original(pipeline.text_encoder_2.state_dict(), T5_PREFIX),
    }
    return save_tensors(tensors, path, dtype)


# --- what diffusers' single-file loader can read back ---------------------------------------------

FLUX_WIDTH = 3072  # diffusers' Flux converter splits `linear1` at this width (FLUX.1's)
TWO_CLIPS = ("text_encoder", "text_encoder_2")  # SD3's CLIP-L and CLIP-G
TEXT_ENCODERS = {  # stock class -> (pipeline attribute, the class the original layout holds)
    "StableDiffusion3Pipeline": (
        ("text_encoder", "CLIPTextModelWithProjection"),
        ("text_encoder_2", "CLIPTextModelWithProjection"),
        ("text_encoder_3", "T5EncoderModel"),
    ),
    "FluxPipeline": (("text_encoder", "CLIPTextModel"), ("text_encoder_2", "T5EncoderModel")),
}


def check_flow_single_file(source: Any, transformer_config: Any, stock_class: str) -> None:
    """Refuse, in one line, a flow export whose single file diffusers would not read back as it is,
    from the config files alone (before the VAE and text encoders load; `check_flow_projection`
    checks their weights once loaded).

    diffusers' `from_single_file` tells SD3's CLIP-L from CLIP-G by their widths, gives CLIP-L an
    identity text projection, and splits
    Flux's fused single-block weights at FLUX.1's width; a file outside these would load with
    other weights or not at all.

    Args:
        source: the source pipeline's config files (`export_parts.SourceConfigs`: each
            component's class and config).
        transformer_config: the generator's transformer config.
        stock_class: "StableDiffusion3Pipeline" or "FluxPipeline"; another flow family's class
            is refused (no original layout is known for it).
    """
    if stock_class not in FLOW_SINGLE_FILE_WRITERS:
        raise SFDConfigError(
            f"--single-file: no original single-file layout is known for {stock_class} exports "
            f"(only {', '.join(FLOW_SINGLE_FILE_WRITERS)}); export without --single-file"
        )
    for name, expected in TEXT_ENCODERS[stock_class]:
        found = source.component_class(name)
        if found is None and name == "text_encoder_3":
            continue  # SD3 without T5: the file holds none, the folder names none
        if found != expected:
            raise SFDConfigError(
                f"--single-file writes the original {stock_class} layout, whose {name} is a "
                f"{expected}; this generator's is a {found} (export without --single-file)"
            )
    if stock_class == "StableDiffusion3Pipeline":
        clip_l, clip_g = (source.config(name).get("hidden_size") for name in TWO_CLIPS)
        if clip_l == clip_g:
            raise SFDConfigError(
                f"--single-file: both CLIP text encoders are {clip_l} wide; "
                "diffusers' single-file loader tells CLIP-L from CLIP-G by width (768 / 1280) "
                "and would load one in place of the other (export without --single-file)"
            )
    else:
        width = transformer_config.num_attention_heads * transformer_config.attention_head_dim
        if width != FLUX_WIDTH:
            raise SFDConfigError(
                f"--single-file: this Flux transformer is {width} wide; diffusers' single-file "
                f"loader reads FLUX.1's width ({FLUX_WIDTH}) only (export without --single-file)"
            )


def check_flow_projection(pipeline: Any, stock_class: str) -> None:
    """Refuse an SD3 export whose loaded CLIP-L text projection is not the identity, which the
    original SD3 layout assumes (diffusers' loader sets it to the identity)."""
    if stock_class != "StableDiffusion3Pipeline":
        return
    projection = pipeline.text_encoder.text_projection.weight
    if not torch.equal(projection, torch.eye(*projection.shape, dtype=projection.dtype)):
        raise SFDConfigError(
            "--single-file: the CLIP-L text projection is not the identity, which the "
            "original SD3 layout assumes (diffusers' loader sets it to the identity); "
            "export without --single-file"
        )


FLOW_SINGLE_FILE_WRITERS = {
    "StableDiffusion3Pipeline": write_sd3_single_file,
    "FluxPipeline": write_flux_single_file,
}
