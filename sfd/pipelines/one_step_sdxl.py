"""`OneStepSDXLPipeline`: text-to-image sampling of a one-step SDXL generator.

x0 = D_θ(σ_init·z, σ_init, text) in latent space, decoded by the VAE: one UNet evaluation per image,
with the pooled text embeddings and size/crop time ids the generator was trained with. The folder
it saves is a complete SDXL diffusers folder (`unet/`, `vae/`, `text_encoder/`, `text_encoder_2/`,
`tokenizer/`, `tokenizer_2/`, `scheduler/`), whose scheduler is the one-step Euler scheduler of
`OneStepTextPipeline`: a stock `StableDiffusionXLPipeline` called with `sigmas=[σ_init, 0]` and
`guidance_scale=1` reproduces this pipeline's images (docs/exports.md, docs/families/sdxl.md).
Guidance with no negative prompt uses the zero embedding when the teacher sets
`force_zeros_for_empty_prompt`, as the stock pipeline does.
"""

from __future__ import annotations

from typing import Any

from diffusers import AutoencoderKL, UNet2DConditionModel

from sfd.core.conditions import TextCondition
from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.pipelines.one_step import network_timestep
from sfd.pipelines.one_step_text import OneStepTextPipeline, load_vae, one_step_scheduler
from sfd.teachers.sdxl import StableDiffusionXLDenoiser, encode_sdxl
from sfd.teachers.text_encoder import load_text_encoder

# The generator's settings kept in model_index.json's private block (stock pipelines skip it);
# force_zeros_for_empty_prompt stays public: the stock StableDiffusionXLPipeline reads it.
SDXL_SETTINGS = ("sigma_init", "prediction_type", "timestep", "time_ids")


class OneStepSDXLPipeline(OneStepTextPipeline):
    """One-step text-to-image generation with an SFD/SiD-distilled SDXL UNet.

    Sampling (`__call__`) is `OneStepTextPipeline`'s; the prompts go through both CLIP encoders.

    Args:
        unet: the generator network (`addition_embed_type="text_time"`).
        vae: the autoencoder that decodes latents to images.
        text_encoder: the first CLIP text encoder (`CLIPTextModel`).
        text_encoder_2: the second one, with projection (`CLIPTextModelWithProjection`).
        tokenizer: the first tokenizer.
        tokenizer_2: the second tokenizer.
        scheduler: the teacher's training schedule as the one-step Euler scheduler.
        sigma_init: the generator's input noise level.
        prediction_type: the UNet's output type ("epsilon", "v_prediction", "sample").
        timestep: the UNet timestep t(σ_init) (recorded for other loaders).
        time_ids: the six size/crop time ids the generator was trained with.
        force_zeros_for_empty_prompt: the empty prompt is the zero embedding.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    _optional_components: list[str] = []

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: Any,
        text_encoder_2: Any,
        tokenizer: Any,
        tokenizer_2: Any,
        scheduler: Any,
        sigma_init: float = 2.5,
        prediction_type: str = "epsilon",
        timestep: float | None = None,
        time_ids: list[int] | None = None,
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        super(OneStepTextPipeline, self).__init__()
        self.register_modules(
            unet=unet,
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer_2,
            scheduler=scheduler,
        )
        self.register_to_config(
            sigma_init=sigma_init,
            prediction_type=prediction_type,
            timestep=timestep,
            time_ids=list(time_ids) if time_ids is not None else None,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt,
        )

    @classmethod
    def from_generator(cls, generator: OneStepGenerator) -> OneStepSDXLPipeline:
        """Wrap a trained generator; VAE, encoders and tokenizers come from its source pipeline."""
        denoiser = generator.denoiser
        if not isinstance(denoiser, StableDiffusionXLDenoiser):
            raise SFDConfigError(
                "OneStepSDXLPipeline needs a StableDiffusionXLDenoiser, not "
                f"{type(denoiser).__name__}"
            )
        if denoiser.pipeline is None:
            raise SFDConfigError("the generator records no source pipeline to take the VAE from")
        tokenizer, text_encoder = load_text_encoder(denoiser.pipeline, denoiser.revision)
        tokenizer_2, text_encoder_2 = load_text_encoder(denoiser.pipeline, denoiser.revision, "_2")
        vae = load_vae(denoiser.pipeline, denoiser.revision)
        if vae is None:
            raise SFDConfigError(f"the SDXL teacher {denoiser.pipeline!r} has no VAE")
        return cls(
            denoiser.unet,
            vae,
            text_encoder,
            text_encoder_2,
            tokenizer,
            tokenizer_2,
            one_step_scheduler(denoiser.scheduler_config, denoiser.prediction_type),
            sigma_init=generator.sigma_init,
            prediction_type=denoiser.prediction_type,
            timestep=network_timestep(denoiser, generator.sigma_init),
            time_ids=list(denoiser.time_ids),
            force_zeros_for_empty_prompt=denoiser.force_zeros_for_empty_prompt,
        )

    @property
    def generator(self) -> OneStepGenerator:
        """The σ-space one-step generator over this pipeline's UNet (weights shared)."""
        if self.config.time_ids is None:
            raise SFDConfigError("the folder's model_index.json records no SDXL time_ids")
        scheduler_config = {**self.scheduler.config, "_class_name": type(self.scheduler).__name__}
        denoiser = StableDiffusionXLDenoiser(
            self.unet,
            scheduler_config,
            self.config.prediction_type,
            self.config.time_ids,
            self.name_or_path,
            force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt,
        )
        return OneStepGenerator(denoiser.to(self.unet.device), self.config.sigma_init).eval()

    def encode(self, prompts: list[str], negative_prompts: list[str]) -> TextCondition:
        """Text conditions, pooled embeddings included, for prompts and their negatives (B each)."""
        encoders = [(self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)]
        zeros = self.config.force_zeros_for_empty_prompt
        unique = list(dict.fromkeys(negative_prompts))
        embeds, pooled = encode_sdxl(encoders, prompts, zeros_for_empty=zeros)
        table, table_pooled = encode_sdxl(encoders, unique, zeros_for_empty=zeros)
        rows = [unique.index(n) for n in negative_prompts]
        return TextCondition(
            embeds,
            table[rows],
            tuple(prompts),
            pooled_embeds=pooled,
            negative_pooled=table_pooled[rows],
        )
