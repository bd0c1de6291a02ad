"""One-step flow generators (SD3 / SD3.5, Flux.1) exported as stock diffusers folders.

A one-step flow generator is one Euler step from t_init to 0: x0 = z − t_init·v(z, t_init)
(`sfd.teachers.flow`). So its export *is* a stock folder, `model_index.json` naming
`StableDiffusion3Pipeline` or `FluxPipeline`, with the generator's transformer and a
`FlowMatchEulerDiscreteScheduler` without shift, and the stock class samples it with no sfd code:

    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    image = pipe(prompt, num_inference_steps=1, sigmas=[t_init], guidance_scale=1.0).images[0]

(Flux: `guidance_scale` is the embedded guidance the generator was trained with). t_init and the
prompt settings sit in model_index.json's private block (`SETTINGS_KEY`), which stock pipelines
skip silently; sfd's own classes below read them and sample in σ-space with the very denoiser the
training used, which is what the stock-pipeline equality test holds against diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from torch import Tensor

from sfd.core.conditions import TextCondition
from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.folders import pipeline_class_name
from sfd.pipelines.one_step import SETTINGS_KEY, lift_settings
from sfd.pipelines.text_call import OneStepTextSampling
from sfd.teachers.flow import FlowTransformerDenoiser
from sfd.teachers.flow_time import flow_time
from sfd.teachers.flux import FluxDenoiser, check_scales_without_cfg
from sfd.teachers.sd3 import SD3Denoiser
from sfd.teachers.text_encoder import model_index

# FlowMatchEulerDiscreteScheduler settings under which `sigmas=[t_init]` is used as given: no static
# or resolution-dependent shift, no terminal stretch, no Karras-style respacing.
ONE_STEP_FLOW = {
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "shift_terminal": None,
    "use_karras_sigmas": False,
    "use_exponential_sigmas": False,
    "use_beta_sigmas": False,
    "invert_sigmas": False,
}


def one_step_flow_scheduler(scheduler_config: dict[str, Any]) -> FlowMatchEulerDiscreteScheduler:
    """The teacher's flow scheduler with the shift switched off, for `sigmas=[t_init]`."""
    return FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config), **ONE_STEP_FLOW)


class OneStepFlowSampling(OneStepTextSampling):
    """sfd's side of a stock flow pipeline class: the σ-space generator, prompts, decoding.

    The VAE is optional here (a pixel-space model, as the text demo's digits teacher, has none:
    `vae` is null in model_index.json); the stock classes load such a folder with `vae=None`.
    """

    denoiser_class: type[FlowTransformerDenoiser]
    stock_class: type
    settings: tuple[str, ...] = ("t_init", "max_sequence_length", "timestep")

    def denoiser_settings(self) -> dict[str, Any]:
        return {}

    @property
    def components(self) -> dict[str, Any]:
        """The stock class's components: the networks, tokenizers and scheduler, not the settings."""
        return {
            name: getattr(self, name)
            for name in self.config.keys()
            if not name.startswith("_") and name not in self.settings
        }

    @property
    def generator(self) -> OneStepGenerator:
        """The σ-space one-step generator over this pipeline's transformer (weights shared)."""
        scheduler_config = {**self.scheduler.config, "_class_name": type(self.scheduler).__name__}
        denoiser = self.denoiser_class(
            self.transformer,
            scheduler_config,
            self.name_or_path,
            max_sequence_length=self.config.max_sequence_length,
            **self.denoiser_settings(),
        )
        return OneStepGenerator(denoiser, t_init=self.config.t_init).eval()

    def encode(self, prompts: list[str], negative_prompts: list[str]) -> TextCondition:
        """Text conditions for prompts and their negative prompts (both length B), packed."""
        denoiser = self.generator.denoiser
        embeds = denoiser.encode_with_pipeline(self, prompts)  # (B, 1 + L, D)
        unique = list(dict.fromkeys(negative_prompts))
        table = denoiser.encode_with_pipeline(self, unique)
        negative = table[torch.tensor([unique.index(n) for n in negative_prompts])]
        return TextCondition(embeds.float(), negative.float(), tuple(prompts))

    def decode_latents(self, x0: Tensor) -> Tensor:
        """VAE-decode model latents x0 (B, C, h, w) to images in [-1, 1] (B, 3, H, W), float32."""
        config = self.vae.config
        latents = x0 / config.scaling_factor + (config.shift_factor or 0.0)
        return self.vae.decode(latents.to(self.vae.dtype)).sample.float()

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        return super().extract_init_dict(lift_settings(config_dict), **kwargs)

    @classmethod
    def from_generator(cls, generator: OneStepGenerator) -> Any:
        """Wrap a trained generator; VAE and text encoders come from its source pipeline folder."""
        denoiser = generator.denoiser
        if not isinstance(denoiser, cls.denoiser_class):
            raise SFDConfigError(
                f"{cls.__name__} needs a {cls.denoiser_class.__name__}, not "
                f"{type(denoiser).__name__}"
            )
        if denoiser.pipeline is None:
            raise SFDConfigError("the generator records no source pipeline to take the VAE from")
        absent = {
            name: None
            for name, entry in model_index(denoiser.pipeline, denoiser.revision).items()
            if isinstance(entry, list) and entry and entry[-1] is None
        }
        try:
            parts = cls.stock_class.from_pretrained(
                denoiser.pipeline, revision=denoiser.revision, **{**absent, "transformer": None}
            )
        except (OSError, ValueError) as error:
            raise SFDConfigError(
                f"cannot load the VAE and text encoders from {denoiser.pipeline!r}: {error}"
            ) from error
        components = {k: v for k, v in parts.components.items() if k != "scheduler"}
        t_init = float(flow_time(torch.tensor(generator.sigma_init, dtype=torch.float64)))
        return cls(
            **{**components, "transformer": denoiser.transformer},
            scheduler=one_step_flow_scheduler(denoiser.scheduler_config),
            t_init=t_init,
            max_sequence_length=denoiser.max_sequence_length,
            **cls.settings_of(denoiser),
        )

    @classmethod
    def settings_of(cls, denoiser: Any) -> dict[str, Any]:
        return {}

    def stock_call(self) -> dict[str, Any]:
        """The keyword arguments with which the stock class reproduces this pipeline."""
        return {
            "num_inference_steps": 1,
            "sigmas": [self.config.t_init],
            "max_sequence_length": self.config.max_sequence_length,
        }


class OneStepSD3Pipeline(OneStepFlowSampling, StableDiffusion3Pipeline):
    """A one-step SD3 / SD3.5 generator: a stock `StableDiffusion3Pipeline` folder plus t_init."""

    denoiser_class = SD3Denoiser
    stock_class = StableDiffusion3Pipeline
    _optional_components = [*StableDiffusion3Pipeline._optional_components, "vae"]

    def __init__(
        self,
        transformer: Any,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        text_encoder_3: Any,
        tokenizer_3: Any,
        image_encoder: Any = None,
        feature_extractor: Any = None,
        t_init: float = 0.97,
        max_sequence_length: int = 256,
        timestep: float | None = None,
    ) -> None:
        super().__init__(
            transformer, scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2,
            text_encoder_3, tokenizer_3, image_encoder, feature_extractor,
        )  # fmt: skip
        self.register_to_config(
            t_init=t_init, max_sequence_length=max_sequence_length, timestep=1000 * t_init
        )

    def stock_call(self) -> dict[str, Any]:
        return {**super().stock_call(), "guidance_scale": 1.0}


class OneStepFluxPipeline(OneStepFlowSampling, FluxPipeline):
    """A one-step Flux.1 generator: a stock `FluxPipeline` folder plus t_init and its guidance."""

    denoiser_class = FluxDenoiser
    stock_class = FluxPipeline
    _optional_components = [*FluxPipeline._optional_components, "vae"]
    settings = (*OneStepFlowSampling.settings, "guidance", "sample_size")

    def __init__(
        self,
        scheduler: Any,
        vae: Any,
        text_encoder: Any,
        tokenizer: Any,
        text_encoder_2: Any,
        tokenizer_2: Any,
        transformer: Any,
        image_encoder: Any = None,
        feature_extractor: Any = None,
        t_init: float = 0.97,
        max_sequence_length: int = 512,
        guidance: float | None = None,
        sample_size: int = 128,
        timestep: float | None = None,
    ) -> None:
        super().__init__(
            scheduler, vae, text_encoder, tokenizer, text_encoder_2, tokenizer_2, transformer,
            image_encoder, feature_extractor,
        )  # fmt: skip
        self.register_to_config(
            t_init=t_init,
            max_sequence_length=max_sequence_length,
            guidance=guidance,
            sample_size=sample_size,
            timestep=t_init,
        )

    def denoiser_settings(self) -> dict[str, Any]:
        return {"guidance": self.config.guidance, "sample_size": self.config.sample_size}

    @classmethod
    def settings_of(cls, denoiser: Any) -> dict[str, Any]:
        return {"guidance": denoiser.guidance, "sample_size": denoiser.sample_shape[1]}

    def stock_call(self) -> dict[str, Any]:
        size = self.config.sample_size * self.vae_scale_factor
        guidance = self.config.guidance
        return {
            **super().stock_call(),
            "guidance_scale": 1.0 if guidance is None else guidance,
            "height": size,
            "width": size,
        }


def check_export_guidance(
    index: Mapping[str, Any], guidance_scale: float, flag: str = "--guidance-scale"
) -> None:
    """Refuse, from an export's model_index.json alone (before a weight loads), a classifier-free
    guidance scale its generator does not take: any but 1 on a guidance-distilled Flux export (its
    one-step `guidance` set), the rule `FluxDenoiser.guided` applies once loaded.

    Args:
        index: the folder's model_index.json content.
        guidance_scale: the scale asked for.
        flag: how the message names the scale.
    """
    if pipeline_class_name(dict(index)) == OneStepFluxPipeline.stock_class.__name__:
        guidance = (index.get(SETTINGS_KEY) or {}).get("guidance")
        check_scales_without_cfg({flag: guidance_scale}, guidance)


# The stock class name a flow export's model_index.json holds -> sfd's class for that folder.
FLOW_PIPELINES = {
    cls.stock_class.__name__: cls for cls in (OneStepSD3Pipeline, OneStepFluxPipeline)
}
