"""A flow-matching text teacher: a small `SD3Transformer2DModel` saved as a Stable Diffusion 3 folder.

`sfd teacher-text --family sd3` / `sfd demo-text --family sd3` train it with the rectified-flow
objective on the same captioned digits (pixels) or Fashion-MNIST latents as the UNet text teacher
(`sfd.apps.teachers.text`): x_t = (1 − t)·x0 + t·ε, target v = ε − x0, t logit-normal
(sigmoid of a standard normal, SD3's training density), 10 % of the captions dropped to the
empty prompt for classifier-free guidance. The folder is a stock `StableDiffusion3Pipeline`
folder that `sfd.teachers.SD3Teacher` loads, the adapter an SD3 user's model goes through, and
every prompt, in training as later, is encoded by the stock `StableDiffusion3Pipeline.encode_prompt`.

What the three text-encoder slots of the folder hold:

- `text_encoder_3` / `tokenizer_3` (SD3's T5 slot): the real all-MiniLM-L6-v2 `BertModel` and its
  `BertTokenizer` (384 wide). The stock pipeline calls `text_encoder_3(input_ids)[0]`, the last
  hidden states, *without* an attention mask, after padding to `max_sequence_length` tokens
  (24 here, as the UNet teacher's, room for the attacks' 16 appended tokens; the teacher and
  every export record it). So, unlike the UNet teacher's masked encoding, the [PAD] positions
  are attended by the words and are nonzero rows that the transformer sees: deliberate, since
  it is what the stock pipeline does with this slot, and training, SFD and sampling all use this
  one encoding.
- `text_encoder` / `tokenizer` and `text_encoder_2` / `tokenizer_2` (CLIP-L and CLIP-G):
  one-layer `CLIPTextModelWithProjection`s of width 8 with every weight zero, under a
  `CLIPTokenizer` over the 512 byte-level symbols (no merges) with `model_max_length` 2. Their
  hidden states and pooled projections are exactly zero for every prompt, so the stock
  `encode_prompt` runs unchanged (2 zero CLIP rows, CLIP-L and CLIP-G side by side padded to
  384 wide, then the 24 MiniLM rows; pooled projections of 8 + 8 zeros) and MiniLM does all
  the conditioning. The CLIP
  tokenizer truncates every prompt to [BOS, EOS]; diffusers logs that truncation, which this
  module silences for the demo (`quiet_clip_truncation`).

Digits have no VAE (`vae` is null in model_index.json): the stock class loads such a folder with
`StableDiffusion3Pipeline.from_pretrained(folder, vae=None)` and samples it with
`output_type="latent"` (the latents are the images).
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import diffusers
import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor

from sfd.apps.data.captions import CaptionVocabulary
from sfd.apps.teachers.checks import check_output_dir
from sfd.apps.teachers.pixel import TeacherDataModule, one_device_trainer
from sfd.apps.teachers.text import (
    CaptionedTeacherModule,
    check_caption_classes,
    teacher_record,
    text_sample_shape,
)
from sfd.apps.teachers.text_encoders import teacher_text_encoder
from sfd.errors import SFDConfigError
from sfd.folders import write_folder_atomically
from sfd.images import LabelledImages
from sfd.teachers.sd3 import SD3Denoiser
from sfd.teachers.unet import SFD_CONFIG_NAME

FAMILIES = ("unet", "sd3")  # the text teacher's network: UNet2DConditionModel or SD3 transformer
CLIP_WIDTH = 8  # hidden size and projection of each zero CLIP slot
CLIP_LENGTH = 2  # the CLIP tokenizers' model_max_length: [BOS, EOS]
FLOW_SEQUENCE_LENGTH = 24  # MiniLM tokens per prompt (the pipeline's max_sequence_length)


def byte_symbols() -> list[str]:
    """The 256 byte-level BPE symbols (printable bytes as themselves, the rest mapped past 255)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]


def byte_clip_tokenizer(max_length: int = CLIP_LENGTH) -> Any:
    """A `CLIPTokenizer` over the byte-level symbols alone (no merges), built offline."""
    from transformers import CLIPTokenizer

    symbols = byte_symbols()
    tokens = [*symbols, *(s + "</w>" for s in symbols), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def zero_clip_encoder(vocab_size: int, max_length: int = CLIP_LENGTH) -> torch.nn.Module:
    """A one-layer `CLIPTextModelWithProjection` whose every weight is zero: all outputs are 0."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=CLIP_WIDTH,
        intermediate_size=CLIP_WIDTH,
        projection_dim=CLIP_WIDTH,
        num_hidden_layers=1,
        num_attention_heads=1,
        max_position_embeddings=max_length,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
    )
    encoder = CLIPTextModelWithProjection(config)
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.zero_()
    return encoder.requires_grad_(False).eval()


class _DropSlotNotes(logging.Filter):
    """Drops the notes that this folder's slot layout is by design: the zero CLIP slots truncate
    prompts to their 2 tokens (diffusers, transformers) and the T5 slot holds a `BertModel`."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)
        if "Token indices sequence length is longer" in text:  # transformers, CLIP tokenizers
            return f"> {CLIP_LENGTH})" not in text
        if "Expected types for text_encoder_3" in text:  # diffusers, the MiniLM in T5's slot
            return "BertModel" not in text
        return f"CLIP can only handle sequences up to {CLIP_LENGTH} tokens" not in text


def quiet_clip_truncation() -> None:
    """Silence the by-design notes of the flow text teacher's slot layout (idempotent): the
    zero CLIP slots' truncation warnings and the BertModel-in-the-T5-slot type note."""
    for name in (
        StableDiffusion3Pipeline.__module__,
        "diffusers.pipelines.pipeline_utils",
        "transformers.tokenization_utils_base",
    ):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropSlotNotes) for f in logger.filters):
            logger.addFilter(_DropSlotNotes())


def make_text_transformer(
    sample_shape: tuple[int, int, int],
    joint_attention_dim: int,
    layers: int = 4,
    heads: int = 2,
    head_dim: int = 32,
    patch_size: int = 2,
) -> SD3Transformer2DModel:
    """A small `SD3Transformer2DModel` (MMDiT) over (C, H, W) samples, H = W."""
    channels, height, width = sample_shape
    if height != width or height % patch_size:
        raise SFDConfigError(
            f"samples of {height}×{width} do not fit an SD3 transformer with patch {patch_size}"
        )
    return SD3Transformer2DModel(
        sample_size=height,
        patch_size=patch_size,
        in_channels=channels,
        out_channels=channels,
        num_layers=layers,
        attention_head_dim=head_dim,
        num_attention_heads=heads,
        joint_attention_dim=joint_attention_dim,
        caption_projection_dim=heads * head_dim,
        pooled_projection_dim=2 * CLIP_WIDTH,
        pos_embed_max_size=height // patch_size,
    )


def make_flow_pipeline(
    transformer: SD3Transformer2DModel, tokenizer: Any, encoder: torch.nn.Module, vae: Any
) -> StableDiffusion3Pipeline:
    """The stock SD3 pipeline object of a flow text teacher (see the module docstring's slots)."""
    clip_tokenizer = byte_clip_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0),
        vae=vae,
        text_encoder=zero_clip_encoder(len(clip_tokenizer)),
        tokenizer=clip_tokenizer,
        text_encoder_2=zero_clip_encoder(len(clip_tokenizer)),
        tokenizer_2=byte_clip_tokenizer(),
        text_encoder_3=encoder,
        tokenizer_3=tokenizer,
    )


class FlowTextTeacherModule(CaptionedTeacherModule):
    """Rectified-flow (velocity) training of an `SD3Transformer2DModel` on captioned images.

    Args (those of `CaptionedTeacherModule`):
        network: the `SD3Transformer2DModel`.
        caption_embeds: packed SD3 embeddings of every caption (`sfd.teachers.flow.pack_pooled`),
            class-major, (U, 1 + L, D).
        caption_labels: the class of each caption, (U,), sorted.
        empty_embeds: the empty prompt's packed embeddings, (1 + L, D).
        vae, prompt_dropout, lr, weight_decay, warmup_steps, ema_decay: as there.
    """

    def flow_loss(self, x0: Tensor, labels: Tensor) -> Tensor:
        """The rectified-flow velocity loss at logit-normal times with captions (some dropped).

        Draw order (fixed, for the hand-written oracle test): captions, t's normal, ε, dropout.

        Args:
            x0: images in [-1, 1], (B, C, H, W).
            labels: their classes, (B,).

        Returns:
            mean squared error between v(x_t, t, c) and ε − x0, a scalar.
        """
        latents = self.to_latents(x0)  # (B, c, h, w)
        batch = latents.shape[0]
        embeds = self.captions_for(labels)  # (B, 1 + L, D)
        t = torch.sigmoid(torch.randn(batch, device=x0.device))  # (B,)
        noise = torch.randn_like(latents)
        t_b = t.view(-1, 1, 1, 1)
        x_t = (1 - t_b) * latents + t_b * noise
        drop = torch.rand(batch, device=x0.device) < self.hparams.prompt_dropout
        embeds = torch.where(drop.view(-1, 1, 1), self.empty_embeds.expand_as(embeds), embeds)
        velocity = self.unet(
            hidden_states=x_t,
            encoder_hidden_states=embeds[:, 1:],
            pooled_projections=embeds[:, 0, : self.unet.config.pooled_projection_dim],
            timestep=1000 * t,
        ).sample
        return F.mse_loss(velocity.float(), noise - latents)

    loss = flow_loss


def save_flow_teacher(
    output_dir: str | Path, pipeline: StableDiffusion3Pipeline, extra: dict[str, Any]
) -> Path:
    """Write the SD3 pipeline folder atomically (safetensors weights) plus sfd.json."""
    output_dir = check_output_dir(output_dir)

    def write(staging: Path) -> None:
        pipeline.save_pretrained(staging, safe_serialization=True)
        (staging / SFD_CONFIG_NAME).write_text(json.dumps(extra, indent=2) + "\n")

    return write_folder_atomically(output_dir, write)


def train_flow_text_teacher(
    train: LabelledImages,
    vocabulary: CaptionVocabulary,
    output_dir: str | Path,
    *,
    text_encoder: str | None = None,
    vae: AutoencoderKL | None = None,
    max_steps: int = 2500,
    batch_size: int = 64,
    lr: float = 5e-4,
    layers: int = 4,
    heads: int = 2,
    patch_size: int = 2,
    prompt_dropout: float = 0.1,
    max_length: int = FLOW_SEQUENCE_LENGTH,
    ema_decay: float | None = 0.999,
    seed: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
) -> Path:
    """Train a flow-matching SD3 text teacher on captioned images and save its pipeline folder.

    Args:
        train, vocabulary, output_dir, text_encoder, vae, max_steps, batch_size, lr,
        prompt_dropout, ema_decay, seed, accelerator, progress: as `train_text_teacher`.
        layers: transformer blocks.
        heads: attention heads of 32 channels each (width 32·heads).
        patch_size: pixels (or latent cells) per side of one image token.
        max_length: MiniLM tokens per prompt (the stock pipeline's `max_sequence_length`).

    Returns:
        output_dir.
    """
    check_caption_classes(vocabulary, train)
    output_dir = check_output_dir(output_dir)
    encoder_path, tokenizer, encoder = teacher_text_encoder(text_encoder, max_length)
    sample_shape = text_sample_shape(train, vae)
    if vae is not None:
        vae.register_to_config(shift_factor=0.0)  # the stock SD3 decode adds it
    quiet_clip_truncation()
    with isolate_rng():
        pl.seed_everything(seed, verbose=False)
        transformer = make_text_transformer(
            sample_shape, encoder.config.hidden_size, layers, heads, patch_size=patch_size
        )
        pipeline = make_flow_pipeline(transformer, tokenizer, encoder, vae)
        denoiser = SD3Denoiser(
            transformer, dict(pipeline.scheduler.config), max_sequence_length=max_length
        )
        captions, labels = vocabulary.caption_table()
        with torch.no_grad():
            embeds = denoiser.encode_with_pipeline(pipeline, [*captions, ""]).float()
        module = FlowTextTeacherModule(
            transformer,
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
    pipeline.transformer = copy.deepcopy(module.export_unet()).to("cpu").eval()
    extra = teacher_record(
        train, vocabulary, vae, sample_shape, encoder_path, max_length, transformer,
        family="sd3",
        objective="rectified flow: x_t = (1 - t) x0 + t eps, v = eps - x0, t logit-normal(0, 1)",
        text_encoder_slots={
            "text_encoder_3": "all-MiniLM-L6-v2 (BertModel), unmasked last hidden states",
            "text_encoder, text_encoder_2": f"zero-weight CLIP (width {CLIP_WIDTH}), outputs 0",
        },
        prompt_dropout=prompt_dropout, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed,
        diffusers=diffusers.__version__,
    )  # fmt: skip
    return save_flow_teacher(output_dir, pipeline, extra)
