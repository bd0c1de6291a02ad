"""`OneStepTextPipeline`: text-to-image sampling of a one-step Stable Diffusion generator.

x0 = D_θ(σ_init·z, σ_init, text) in latent space, decoded by the VAE: one UNet evaluation per image.
The folder it saves is a complete diffusers folder: `model_index.json`, `unet/`, `vae/`,
`text_encoder/`, `tokenizer/` and `scheduler/` (safetensors weights). The scheduler is the
teacher's noise schedule as an `EulerDiscreteScheduler` set up for the one step (trailing
spacing, final σ 0, discrete timesteps), so that a stock `StableDiffusionPipeline` called with
`sigmas=[σ_init, 0]` and `guidance_scale=1` reproduces this pipeline's images (docs: README,
"Sampling without sfd"). A pixel-space teacher has no VAE: then `vae` is None (saved as
such in `model_index.json`) and x0 is the image itself.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from torch import Tensor

from sfd.core.conditions import TextCondition
from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.pipelines.one_step import as_own_class, lift_settings, network_timestep
from sfd.pipelines.text_call import OneStepTextSampling
from sfd.teachers.stable_diffusion import (
    StableDiffusionDenoiser,
    encode_with,
    load_text_encoder,
    model_index,
)

# EulerDiscreteScheduler settings under which `StableDiffusionPipeline(sigmas=[σ_init, 0])` is the
# one-step generator: latents scaled by init_noise_sigma = σ_init ("trailing"), t(σ) by log-σ
# interpolation of the same table, and one Euler step to σ = 0, which lands on x0_hat.
ONE_STEP_EULER = {
    "timestep_spacing": "trailing",
    "timestep_type": "discrete",
    "final_sigmas_type": "zero",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
}


def one_step_scheduler(scheduler_config: dict[str, Any], prediction_type: str) -> Any:
    """The teacher's noise schedule as the `EulerDiscreteScheduler` of the one-step recipe."""
    return EulerDiscreteScheduler.from_config(
        dict(scheduler_config), **ONE_STEP_EULER, prediction_type=prediction_type
    )


def has_vae(pipeline: str, revision: str | None) -> bool:
    """Whether a teacher folder has a VAE (its model_index names one; SD folders always do)."""
    entry = model_index(pipeline, revision).get("vae", ["diffusers", "AutoencoderKL"])
    return isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None


def load_vae(pipeline: str, revision: str | None) -> AutoencoderKL | None:
    """The VAE of a teacher folder (eval mode), or None for a pixel-space one."""
    if not has_vae(pipeline, revision):
        return None
    try:
        return AutoencoderKL.from_pretrained(pipeline, subfolder="vae", revision=revision).eval()
    except (OSError, ValueError) as error:
        raise SFDConfigError(f"cannot load the VAE from {pipeline!r} (subfolder 'vae')") from error


class OneStepTextPipeline(OneStepTextSampling, DiffusionPipeline):
    """One-step text-to-image generation with an SFD/SiD-distilled Stable Diffusion UNet.

    Args:
        unet: the generator network.
        vae: the autoencoder that decodes latents to images (None: the UNet works on pixels).
        text_encoder: the text encoder (CLIP, or any transformers encoder of the teacher).
        tokenizer: its tokenizer.
        scheduler: the teacher's training schedule (gives ā_t).
        sigma_init: the generator's input noise level.
        prediction_type: the UNet's output type ("epsilon", "v_prediction", "sample").
        timestep: the UNet timestep t(σ_init) (recorded for other loaders; this pipeline
            works in σ).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL | None,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        sigma_init: float = 2.5,
        prediction_type: str = "epsilon",
        timestep: float | None = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.register_to_config(
            sigma_init=sigma_init, prediction_type=prediction_type, timestep=timestep
        )

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        return as_own_class(super().load_config(*args, **kwargs), cls)

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        # An export keeps sigma_init, prediction_type and timestep in a private block, which a
        # stock StableDiffusionPipeline loading the same folder skips without a warning.
        return super().extract_init_dict(lift_settings(config_dict), **kwargs)

    @classmethod
    def from_generator(cls, generator: OneStepGenerator) -> OneStepTextPipeline:
        """Wrap a trained generator; VAE, text encoder and tokenizer come from its source pipeline."""
        denoiser = generator.denoiser
        if not isinstance(denoiser, StableDiffusionDenoiser):
            raise SFDConfigError(
                f"OneStepTextPipeline needs a StableDiffusionDenoiser, not {type(denoiser).__name__}"
            )
        if denoiser.pipeline is None:
            raise SFDConfigError("the generator records no source pipeline to take the VAE from")
        tokenizer, text_encoder = load_text_encoder(denoiser.pipeline, denoiser.revision)
        return cls(
            denoiser.unet,
            load_vae(denoiser.pipeline, denoiser.revision),
            text_encoder,
            tokenizer,
            one_step_scheduler(denoiser.scheduler_config, denoiser.prediction_type),
            sigma_init=generator.sigma_init,
            prediction_type=denoiser.prediction_type,
            timestep=network_timestep(denoiser, generator.sigma_init),
        )

    @property
    def generator(self) -> OneStepGenerator:
        """The σ-space one-step generator over this pipeline's UNet (weights shared)."""
        scheduler_config = {**self.scheduler.config, "_class_name": type(self.scheduler).__name__}
        denoiser = StableDiffusionDenoiser(
            self.unet, scheduler_config, self.config.prediction_type, self.name_or_path
        )
        return OneStepGenerator(denoiser.to(self.unet.device), self.config.sigma_init).eval()

    def encode(self, prompts: list[str], negative_prompts: list[str]) -> TextCondition:
        """Text conditions for prompts and their negative prompts (both length B)."""
        embeds = encode_with(self.tokenizer, self.text_encoder, prompts)  # (B, L, D)
        unique = list(dict.fromkeys(negative_prompts))
        table = encode_with(self.tokenizer, self.text_encoder, unique)  # (U, L, D)
        negative = table[torch.tensor([unique.index(n) for n in negative_prompts])]
        return TextCondition(embeds, negative, tuple(prompts))

    def decode_latents(self, x0: Tensor) -> Tensor:
        """VAE-decode latents x0 (B, C, h, w) to images in [-1, 1] (B, 3, H, W), float32."""
        scaling = self.vae.config.scaling_factor
        return self.vae.decode((x0 / scaling).to(self.vae.dtype)).sample.float()
