"""Stable Diffusion 3 / 3.5 teachers: `SD3Transformer2DModel` on VAE latents as a σ-space denoiser.

The transformer sees the joint sequence of CLIP-L + CLIP-G + T5 hidden states
(`encoder_hidden_states`), the pooled CLIP-L + CLIP-G projections (`pooled_projections`) and the
timestep 1000·t. Prompts are encoded once by the stock `StableDiffusion3Pipeline.encode_prompt` of
the folder (encoders loaded, used, released) and travel packed in one tensor
(`sfd.teachers.flow.pack_pooled`). Guidance is classifier-free, against the empty or negative
prompt, as the stock pipeline does.
"""

from __future__ import annotations

from typing import Any

from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from torch import Tensor

from sfd.teachers.base import Denoiser, pretrained_source
from sfd.teachers.flow import FlowTransformerDenoiser, load_flow_parts, pack_pooled


class SD3Denoiser(FlowTransformerDenoiser):
    """An `SD3Transformer2DModel` velocity model as the σ-space denoiser D(x, σ, text)."""

    kind = "sd3"
    transformer_class = SD3Transformer2DModel
    pipeline_class = StableDiffusion3Pipeline
    sequence_encoder = ("tokenizer_3", "text_encoder_3")

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        scheduler_config: dict[str, Any],
        pipeline: str | None = None,
        revision: str | None = None,
        max_sequence_length: int | None = None,
    ) -> None:
        super().__init__(transformer, scheduler_config, pipeline, revision, max_sequence_length)
        size = transformer.config.sample_size
        self.sample_shape = (transformer.config.in_channels, size, size)

    def predict(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        prompt_embeds, pooled = self.split_prompt(cond)  # (B, L, D), (B, P)
        return self.transformer(
            hidden_states=x_t.to(self._dtype),
            encoder_hidden_states=prompt_embeds.to(x_t.device, self._dtype),
            pooled_projections=pooled.to(x_t.device, self._dtype),
            timestep=1000 * t,
        ).sample

    guided = Denoiser.guided_in_one_batch

    def encode_with_pipeline(self, pipeline: Any, prompts: list[str]) -> Tensor:
        prompt_embeds, _, pooled, _ = pipeline.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            do_classifier_free_guidance=False,
            max_sequence_length=self.max_sequence_length,
        )
        return pack_pooled(prompt_embeds, pooled)


class SD3Teacher(SD3Denoiser):
    """An SD3 / SD3.5 teacher loaded from a diffusers `StableDiffusion3Pipeline` folder or hub id.

    The generator and the fake score are copies of it, so `gradient_checkpointing` applies to
    all three networks.

    Args:
        pretrained_model_name_or_path: local folder or hub id (e.g.
            "stabilityai/stable-diffusion-3.5-medium").
        revision: hub revision.
        max_sequence_length: T5 tokens per prompt (default 256, the stock pipeline's).
        gradient_checkpointing: recompute transformer block activations in the backward pass.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        max_sequence_length: int | None = None,
        gradient_checkpointing: bool = False,
    ) -> None:
        arguments = dict(locals())  # the teacher's `source`
        path = pretrained_model_name_or_path
        transformer, scheduler_config = load_flow_parts(SD3Denoiser, path, revision, "SD3Teacher")
        super().__init__(transformer, scheduler_config, path, revision, max_sequence_length)
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.source = pretrained_source(SD3Teacher, arguments)
