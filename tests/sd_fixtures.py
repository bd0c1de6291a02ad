"""Tiny Stable Diffusion pipelines for tests: random weights, a real CLIP tokenizer built offline.

The CLIP BPE merges ship inside the open-clip-torch wheel. The wheel is downloaded once (never
installed) into ~/.cache/sfd-test, only `bpe_simple_vocab_16e6.txt.gz` is read from it, and the
tokenizer's `vocab.json` / `merges.txt` are derived from the merges: the 256 byte-level symbols,
the same with "</w>", one token per merge, then the two special tokens (49408 tokens).
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)

CACHE = Path.home() / ".cache" / "sfd-test"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2  # the CLIP vocabulary uses the first 48894 merges
EMBED_DIM = 32


def byte_symbols() -> list[str]:
    """The byte-level BPE alphabet: printable bytes as themselves, the others mapped past 255."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def clip_tokenizer_files() -> Path:
    """A folder with the real CLIP `vocab.json` and `merges.txt` (downloaded once, then cached).

    Raises:
        RuntimeError: the wheel could not be downloaded (no network and no cache).
    """
    folder = CACHE / "clip-tokenizer"
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        return folder
    wheels = CACHE / "wheel"
    found = sorted(wheels.glob("open_clip_torch-*.whl"))
    if not found:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "open-clip-torch",
                "-d",
                str(wheels),
            ],
            capture_output=True,
            text=True,
        )
        found = sorted(wheels.glob("open_clip_torch-*.whl"))
        if result.returncode != 0 or not found:
            raise RuntimeError(f"cannot download the open-clip-torch wheel: {result.stderr[-300:]}")
    with zipfile.ZipFile(found[-1]) as wheel:
        lines = gzip.decompress(wheel.read(BPE_MEMBER)).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )
    return folder


def tiny_sd_unet(seed: int = 0) -> UNet2DConditionModel:
    """A tiny random latent UNet: 4×8×8 latents, cross-attention on 32-d text embeddings."""
    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=EMBED_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def save_tiny_sd_pipeline(path: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a tiny random Stable Diffusion folder (no safety checker) with a real CLIP tokenizer.

    Latents are 4×8×8 (images 16×16 through a 2-level VAE); text embeddings are 77×32.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    unet = tiny_sd_unet(seed)
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
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=EMBED_DIM,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_files(), model_max_length=77)
    scheduler_kwargs = {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": prediction_type,
    }
    scheduler = (
        PNDMScheduler(skip_prk_steps=True, steps_offset=1, **scheduler_kwargs)
        if prediction_type == "epsilon"
        else DDPMScheduler(clip_sample=False, **scheduler_kwargs)
    )
    StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    ).save_pretrained(path)
    return path


def save_tiny_clip(path: Path, seed: int = 0) -> Path:
    """Write a tiny random `CLIPModel` + `CLIPProcessor` (real CLIP tokenizer, 32-px images)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "max_position_embeddings": 77,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(path)
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_files(), model_max_length=77)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def save_tiny_clip_text(path: Path, seed: int = 0, max_length: int = 24) -> Path:
    """Write a tiny random `CLIPTextModel` (32-d, SD 1.x's end-token convention) and the real
    CLIP tokenizer (padding to `max_length`) as one folder, like a text demo's encoder folder."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=EMBED_DIM,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
    )
    CLIPTextModel(config).eval().save_pretrained(path)
    tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_files(), model_max_length=max_length)
    tokenizer.save_pretrained(path)
    return path


NEGATIVE = "blurry, lowres"


def celebrity_conditions(negative_prompt: str | None = None, negative_for=None):
    """Two concept pairs over two templates (4 forget prompts), with an optional negative prompt."""
    from sfd.core.conditions import PromptConditions

    return PromptConditions(
        {"Brad Pitt": "a middle aged man", "angelina jolie": "a middle aged woman"},
        templates=["a photo of {concept}", "{concept} holding a coffee cup"],
        negative_prompt=negative_prompt,
        negative_for=negative_for,
    )
