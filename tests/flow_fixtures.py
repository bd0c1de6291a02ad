"""Tiny random-weight SD3 and Flux pipeline folders, built in code offline (tokenizers included).

The CLIP tokenizers are the real CLIP BPE vocabulary (`sd_fixtures.clip_tokenizer_files`); the T5
tokenizer is a real `T5TokenizerFast` over a small unigram vocabulary written here. Latents are
4×8×8 (a one-level VAE: images 8×8); the encoders are 1-2 layers of width 16-32.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from sd_fixtures import clip_tokenizer_files

T5_WORDS = (
    "a photo of the an in on with and cat dog man woman person brad pitt middle aged "
    "digit zero one two three four five six seven eight nine painting landscape style"
).split()
LATENT_CHANNELS = 4
LATENT_SIZE = 8


def t5_tokenizer():
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [(f"▁{w}", -float(i + 1)) for i, w in enumerate(T5_WORDS)]
    vocab += [(c, -50.0) for c in "abcdefghijklmnopqrstuvwxyz▁"]
    return T5TokenizerFast(vocab=vocab, extra_ids=0)


def t5_encoder(d_model: int = 32):
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(
        T5Config(
            vocab_size=len(T5_WORDS) + 40,
            d_model=d_model,
            d_kv=8,
            d_ff=32,
            num_layers=1,
            num_heads=2,
            relative_attention_num_buckets=8,
            decoder_start_token_id=0,
            pad_token_id=0,
            eos_token_id=1,
        )
    )


def clip_encoder(hidden: int, projection: bool):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=hidden,
        intermediate_size=32,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=49407,
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def clip_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(clip_tokenizer_files(), model_max_length=77)


def tiny_vae(latent_channels: int = LATENT_CHANNELS) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",),
        block_out_channels=(8,),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=LATENT_SIZE,
        scaling_factor=1.5,
        shift_factor=0.1,
    )


def tiny_sd3_transformer(seed: int = 0) -> SD3Transformer2DModel:
    torch.manual_seed(seed)
    return SD3Transformer2DModel(
        sample_size=LATENT_SIZE,
        patch_size=2,
        in_channels=LATENT_CHANNELS,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=32,
        caption_projection_dim=16,
        pooled_projection_dim=32,
        out_channels=LATENT_CHANNELS,
        pos_embed_max_size=16,
    )


def tiny_flux_transformer(
    seed: int = 0, guidance_embeds: bool = True, heads: int = 2, head_dim: int = 16
) -> FluxTransformer2DModel:
    """Two heads of 16 by default; `heads=24, head_dim=128` is FLUX.1's width with one block of
    each kind (0.5 B parameters), what diffusers' single-file loader reads."""
    torch.manual_seed(seed)
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6) if head_dim == 16 else (16, 56, 56),
    )


def flow_scheduler(shift: float = 3.0, dynamic: bool = False) -> FlowMatchEulerDiscreteScheduler:
    return FlowMatchEulerDiscreteScheduler(shift=shift, use_dynamic_shifting=dynamic)


def save_tiny_sd3_pipeline(path: Path, seed: int = 0, as_released: bool = False) -> Path:
    """Write a tiny random `StableDiffusion3Pipeline` folder (CLIP-L, CLIP-G, T5).

    `as_released`: CLIP-L and CLIP-G of different widths (8, 24, as 768 / 1280 differ) and
    CLIP-L's text projection the identity: what diffusers' SD3 single-file loader assumes (it
    tells the two apart by width and gives CLIP-L an identity projection).
    """
    torch.manual_seed(seed + 1)
    transformer, vae = tiny_sd3_transformer(seed), tiny_vae()  # drawn in the order of the call
    widths = (8, 24) if as_released else (16, 16)
    clip_l = clip_encoder(widths[0], projection=True)
    if as_released:
        with torch.no_grad():
            clip_l.text_projection.weight.copy_(torch.eye(widths[0]))
    StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=flow_scheduler(shift=3.0),
        vae=vae,
        text_encoder=clip_l,
        tokenizer=clip_tokenizer(),
        text_encoder_2=clip_encoder(widths[1], projection=True),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(32),
        tokenizer_3=t5_tokenizer(),
    ).save_pretrained(path)
    return path


def save_tiny_flux_pipeline(
    path: Path, seed: int = 0, guidance_embeds: bool = True, transformer=None
) -> Path:
    """Write a tiny random `FluxPipeline` folder (CLIP pooled + T5 sequence); dev-like by default.

    `transformer`: use this one instead of `tiny_flux_transformer(seed, guidance_embeds)`.
    """
    torch.manual_seed(seed + 1)
    FluxPipeline(
        transformer=transformer or tiny_flux_transformer(seed, guidance_embeds),
        scheduler=flow_scheduler(shift=1.0, dynamic=True),
        vae=tiny_vae(),
        text_encoder=clip_encoder(32, projection=False),
        tokenizer=clip_tokenizer(),
        text_encoder_2=t5_encoder(32),
        tokenizer_2=t5_tokenizer(),
    ).save_pretrained(path)
    return path
