"""A small `AutoencoderKL` trained on real images: the latent space of a miniature Stable Diffusion.

The loss is Stable Diffusion's first stage without its perceptual and adversarial terms: an L1 +
L2 reconstruction of a posterior sample plus a small KL term toward N(0, I). After training, the
VAE's `scaling_factor` is set to 1 / std of the training latents (SD 1.x's 0.18215 is the same
statistic for its VAE), so that scaled latents have unit variance, as the diffusion teacher
expects.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor

from sfd.apps.teachers.pixel import TeacherDataModule, one_device_trainer
from sfd.errors import SFDConfigError
from sfd.folders import write_folder_atomically
from sfd.images import LabelledImages, from_uint8

DEFAULT_VAE_CHANNELS = (16, 32, 64)  # three levels: 32×32 images -> 8×8 latents


def make_vae(
    channels: int,
    image_size: int,
    block_out_channels: tuple[int, ...] = DEFAULT_VAE_CHANNELS,
    latent_channels: int = 4,
) -> AutoencoderKL:
    """A randomly initialised `AutoencoderKL` (one ResNet block per level, GroupNorm of 8)."""
    groups = math.gcd(8, *block_out_channels)
    levels = len(block_out_channels)
    return AutoencoderKL(
        in_channels=channels,
        out_channels=channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=groups,
        sample_size=image_size,
    )


class VAEModule(pl.LightningModule):
    """Trains an `AutoencoderKL` on images in [-1, 1] (reconstruction + β·KL).

    Args:
        vae: the autoencoder to train.
        lr: peak Adam learning rate (cosine decay to 10 %).
        kl_weight: β of the KL term (per latent element, relative to the per-pixel loss).
    """

    def __init__(self, vae: AutoencoderKL, lr: float = 1e-3, kl_weight: float = 1e-4) -> None:
        super().__init__()
        self.vae = vae
        self.lr = lr
        self.kl_weight = kl_weight

    def vae_loss(self, x: Tensor) -> Tensor:
        """Reconstruction (L1 + L2 per pixel) plus β·KL per latent element, a scalar."""
        posterior = self.vae.encode(x).latent_dist
        reconstruction = self.vae.decode(posterior.sample()).sample  # (B, C, H, W)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        error = reconstruction - x
        return error.abs().mean() + error.pow(2).mean() + self.kl_weight * kl

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, _ = batch
        loss = self.vae_loss(x0)
        self.log("train/vae_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(self.vae.parameters(), lr=self.lr)
        total = max(1, self.trainer.max_steps)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0))),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


@torch.no_grad()
def latent_std(vae: AutoencoderKL, images: LabelledImages, max_images: int = 4096) -> float:
    """The standard deviation of posterior means of (up to `max_images`) training images."""
    x = from_uint8(images.images[:max_images])
    means = torch.cat([vae.encode(chunk).latent_dist.mean for chunk in x.split(512)])
    return float(means.std())


def train_vae(
    train: LabelledImages,
    output_dir: str | Path,
    *,
    max_steps: int = 3000,
    batch_size: int = 64,
    lr: float = 1e-3,
    kl_weight: float = 1e-4,
    block_out_channels: tuple[int, ...] = DEFAULT_VAE_CHANNELS,
    latent_channels: int = 4,
    seed: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
) -> AutoencoderKL:
    """Train a small `AutoencoderKL` on `train` and save it (diffusers layout) to `output_dir`.

    Args:
        train: the real training images (square).
        output_dir: the folder for `config.json` + `diffusion_pytorch_model.safetensors`.
        max_steps: optimizer steps.
        batch_size: images per step.
        lr: peak Adam learning rate.
        kl_weight: β of the KL term.
        block_out_channels: channels per level (the latents are 2^(levels − 1) times smaller).
        latent_channels: latent channels (4, as Stable Diffusion).
        seed: seed of the weights, batches and posterior samples.
        accelerator: Lightning accelerator.
        progress: show a progress bar.

    Returns:
        the trained VAE (eval mode, CPU) with its `scaling_factor` set.
    """
    channels, height, width = train.image_shape
    if height != width or height % 2 ** (len(block_out_channels) - 1):
        raise SFDConfigError(
            f"VAE images must be square and divisible by {2 ** (len(block_out_channels) - 1)}; "
            f"got {height}×{width}"
        )
    if max_steps < 1:
        raise SFDConfigError(f"VAE max_steps={max_steps} must be at least 1")
    with isolate_rng():
        pl.seed_everything(seed, verbose=False)
        vae = make_vae(channels, height, tuple(block_out_channels), latent_channels)
        module = VAEModule(vae, lr, kl_weight)
        trainer = one_device_trainer(accelerator, max_steps, progress, Path(output_dir).parent)
        trainer.fit(module, datamodule=TeacherDataModule.from_images(train, batch_size, seed=seed))
    vae = module.vae.to("cpu").eval().requires_grad_(False)
    vae.register_to_config(scaling_factor=1.0 / latent_std(vae, train))
    write_folder_atomically(
        Path(output_dir), lambda staging: vae.save_pretrained(staging, safe_serialization=True)
    )
    return vae


def reconstruction_error(
    vae: AutoencoderKL, images: LabelledImages, max_images: int = 1024
) -> float:
    """Mean absolute reconstruction error (posterior mean, [-1, 1] scale) on `images`."""
    x = from_uint8(images.images[:max_images])
    with torch.no_grad():
        decoded = torch.cat(
            [vae.decode(vae.encode(chunk).latent_dist.mean).sample for chunk in x.split(256)]
        )
    return float(F.l1_loss(decoded.clamp(-1, 1), x))
