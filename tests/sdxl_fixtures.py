"""Tiny SDXL pipelines for tests: random weights, two CLIP text encoders, real CLIP tokenizers.

The layout is SDXL's at toy size: a `text_time` UNet (pooled text embeddings + six size/crop time
ids), a `CLIPTextModel` and a `CLIPTextModelWithProjection` (OpenCLIP-style "gelu") whose
penultimate hidden states are concatenated (16 + 24 = 40-d), the second tokenizer padding with
"!" as SDXL's does, and an Euler scheduler with SDXL's noise schedule. Latents are 4×8×8, images
16×16 (so the default time ids are (16, 16, 0, 0, 16, 16)).
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from sd_fixtures import clip_tokenizer_files

HIDDEN = 16  # text_encoder's width
HIDDEN_2 = 24  # text_encoder_2's width (a different one, as in SDXL: single-file loading tells
# the two encoders apart by it); the UNet sees HIDDEN + HIDDEN_2
POOLED = 16  # text_encoder_2's projection
TIME_EMBED = 8  # addition_time_embed_dim


def tiny_sdxl_unet(seed: int = 0) -> UNet2DConditionModel:
    """A tiny random SDXL UNet: 4×8×8 latents, 40-d text, pooled 16-d, six time ids."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        cross_attention_dim=HIDDEN + HIDDEN_2,
        addition_embed_type="text_time",
        addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + POOLED,
        norm_num_groups=8,
    )


def _clip_config(projection: bool):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=HIDDEN_2 if projection else HIDDEN,
        intermediate_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0 if projection else 49407,
        hidden_act="gelu" if projection else "quick_gelu",
        projection_dim=POOLED,
    )


def save_tiny_sdxl_pipeline(
    path: Path, prediction_type: str = "epsilon", seed: int = 0, force_zeros: bool = True
) -> Path:
    """Write a tiny random SDXL folder (`StableDiffusionXLPipeline.save_pretrained`)."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    unet = tiny_sdxl_unet(seed)
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
        scaling_factor=0.13025,
    )
    text_encoder = CLIPTextModel(_clip_config(projection=False))
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(projection=True))
    files = clip_tokenizer_files()
    tokenizer = CLIPTokenizer.from_pretrained(files, model_max_length=77)
    tokenizer_2 = CLIPTokenizer.from_pretrained(files, model_max_length=77, pad_token="!")
    scheduler = EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        steps_offset=1,
        timestep_spacing="leading",
    )
    StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=force_zeros,
        add_watermarker=False,
    ).save_pretrained(path)
    return path
