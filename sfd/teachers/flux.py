"""Flux.1 teachers (dev, schnell): `FluxTransformer2DModel` on packed VAE latents as a σ-space denoiser.

The transformer takes latents packed into 2×2 patches, (B, C, H, W) -> (B, H/2·W/2, 4C), with
per-patch image ids, the T5 sequence (`encoder_hidden_states`) with zero text ids, the pooled CLIP
projection and the flow time t itself. Prompts are encoded once by the stock
`FluxPipeline.encode_prompt` of the folder and travel packed in one tensor
(`sfd.teachers.flow.pack_pooled`).

Guidance-distilled models (Flux.1-dev: `guidance_embeds`) take guidance as an *input*, the guidance
embedding: the teacher's `guidance` setting is that input, fed to every call of the teacher, the
generator and the fake score, and classifier-free guidance scales must stay 1. Models without a
guidance embedding (Flux.1-schnell) take classifier-free guidance against the empty or negative
prompt, as the stock pipeline's `true_cfg_scale` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from diffusers import FluxPipeline, FluxTransformer2DModel
from einops import rearrange
from torch import Tensor

from sfd.errors import SFDConfigError, check_number
from sfd.teachers.base import GUIDANCE_SCALES, Denoiser, pretrained_source
from sfd.teachers.flow import (
    FlowTransformerDenoiser,
    flow_load_error,
    load_flow_parts,
    pack_pooled,
)

DEFAULT_GUIDANCE = 3.5  # FluxPipeline's guidance_scale for guidance-distilled models


def pack_latents(x: Tensor) -> Tensor:
    """(B, C, H, W) latents as Flux's 2×2 patch tokens, (B, H/2·W/2, 4C)."""
    return rearrange(x, "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=2, pw=2)


def unpack_latents(tokens: Tensor, height: int, width: int) -> Tensor:
    """The inverse of `pack_latents`: (B, H/2·W/2, 4C) -> (B, C, H, W)."""
    return rearrange(
        tokens, "b (h w) (c ph pw) -> b c (h ph) (w pw)", h=height // 2, w=width // 2, ph=2, pw=2
    )


def image_ids(height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Flux's position ids of the (H/2)·(W/2) latent patches: (0, row, column), (H/2·W/2, 3)."""
    rows = torch.arange(height // 2, device=device).repeat_interleave(width // 2)
    cols = torch.arange(width // 2, device=device).repeat(height // 2)
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=1).to(dtype)


def resolve_guidance(guidance_embeds: bool, guidance: float | None) -> float | None:
    """The embedded guidance input of a Flux transformer (`guidance_embeds`: its config's): a
    number if it has one, else None."""
    if not guidance_embeds:
        if guidance is not None:
            raise SFDConfigError(
                f"guidance={guidance} is an input of guidance-distilled Flux models only; this "
                "transformer has no guidance embedding (guidance_embeds false, e.g. "
                "FLUX.1-schnell): clear it with --model.teacher.init_args.guidance null "
                "(configs/flux_base.yaml sets 3.5) and use classifier-free guidance scales instead"
            )
        return None
    return check_number(
        "guidance", DEFAULT_GUIDANCE if guidance is None else guidance, low=0, low_open=True
    )


def flux_guidance_embeds(settings: Mapping[str, Any]) -> bool:
    """Whether the configured Flux transformer is guidance-distilled (its config's
    `guidance_embeds`), read from transformer/config.json without loading a weight."""
    path, revision = str(settings["pretrained_model_name_or_path"]), settings.get("revision")
    try:
        config = FluxTransformer2DModel.load_config(
            path, subfolder="transformer", revision=revision
        )
    except (OSError, ValueError) as error:
        raise flow_load_error(path, "transformer config", error) from error
    return bool(config.get("guidance_embeds"))


def check_scales_without_cfg(scales: Mapping[str, float], guidance: float | None) -> None:
    """Refuse classifier-free guidance scales != 1 where the embedded `guidance` is set (a
    guidance-distilled model; None: none, every scale allowed), in one line."""
    given = {name: s for name, s in scales.items() if s != 1.0}
    if given and guidance is not None:
        name, scale = next(iter(given.items()))
        raise SFDConfigError(
            f"{name}={scale} is classifier-free guidance, which a guidance-distilled Flux "
            f"model does not take: its guidance is the embedded input, set by the teacher's "
            f"guidance (now {guidance}); keep every guidance scale at 1"
        )


class FluxDenoiser(FlowTransformerDenoiser):
    """A `FluxTransformer2DModel` velocity model as the σ-space denoiser D(x, σ, text).

    Args:
        transformer: the Flux transformer.
        scheduler_config: the folder's flow scheduler config.
        pipeline: folder or hub id of the full pipeline.
        revision: hub revision.
        max_sequence_length: T5 tokens per prompt (default 512, the stock pipeline's).
        guidance: the embedded guidance input of a guidance-distilled model (default 3.5 there);
            must be unset for models without a guidance embedding.
        sample_size: latent height = width of the generated samples (Flux transformers do not
            record one; default 128, i.e. 1024² images).
    """

    kind = "flux"
    transformer_class = FluxTransformer2DModel
    pipeline_class = FluxPipeline
    sequence_encoder = ("tokenizer_2", "text_encoder_2")
    default_sequence_length = 512

    def __init__(
        self,
        transformer: FluxTransformer2DModel,
        scheduler_config: dict[str, Any],
        pipeline: str | None = None,
        revision: str | None = None,
        max_sequence_length: int | None = None,
        guidance: float | None = None,
        sample_size: int = 128,
    ) -> None:
        super().__init__(transformer, scheduler_config, pipeline, revision, max_sequence_length)
        self.guidance = resolve_guidance(transformer.config.guidance_embeds, guidance)
        if isinstance(sample_size, bool) or not isinstance(sample_size, int) or sample_size < 2:
            raise SFDConfigError(f"sample_size={sample_size!r} must be an even integer >= 2")
        if sample_size % 2:
            raise SFDConfigError(f"sample_size={sample_size} must be even (2×2 latent patches)")
        self.sample_shape = (transformer.config.in_channels // 4, sample_size, sample_size)

    @property
    def guidance_distilled(self) -> bool:
        return self.guidance is not None

    def predict(self, x_t: Tensor, t: Tensor, cond: Any) -> Tensor:
        prompt_embeds, pooled = self.split_prompt(cond)  # (B, L, D), (B, P)
        batch, _, height, width = x_t.shape
        dtype, device = self._dtype, x_t.device
        guidance = None
        if self.guidance is not None:
            guidance = torch.full((batch,), self.guidance, device=device, dtype=torch.float32)
        velocity = self.transformer(
            hidden_states=pack_latents(x_t).to(dtype),
            timestep=t.to(dtype),
            guidance=guidance,
            pooled_projections=pooled.to(device, dtype),
            encoder_hidden_states=prompt_embeds.to(device, dtype),
            txt_ids=torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=dtype),
            img_ids=image_ids(height, width, device, dtype),
        ).sample  # (B, H/2·W/2, 4C)
        return unpack_latents(velocity, height, width)

    def guided(self, x: Tensor, sigma: Tensor | float, cond: Any, scale: float) -> Tensor:
        check_scales_without_cfg({"guidance_scale": scale}, self.guidance)
        return Denoiser.guided_in_one_batch(self, x, sigma, cond, scale)

    def check_guidance_scales(self, scales: dict[str, float]) -> None:
        """Refuse classifier-free guidance scales != 1 on a guidance-distilled model, in one line."""
        check_scales_without_cfg(scales, self.guidance)

    def encode_with_pipeline(self, pipeline: Any, prompts: list[str]) -> Tensor:
        prompt_embeds, pooled, _ = pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, max_sequence_length=self.max_sequence_length
        )
        return pack_pooled(prompt_embeds, pooled)

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "guidance": self.guidance, "sample_size": self.sample_shape[1]}


class FluxTeacher(FluxDenoiser):
    """A Flux.1 teacher loaded from a diffusers `FluxPipeline` folder or hub id.

    Args:
        pretrained_model_name_or_path: local folder or hub id (e.g.
            "black-forest-labs/FLUX.1-dev").
        revision: hub revision.
        max_sequence_length: T5 tokens per prompt (default 512, the stock pipeline's).
        guidance: the embedded guidance of a guidance-distilled model (dev; default 3.5).
        sample_size: latent height = width (default 128: 1024² images).
        gradient_checkpointing: recompute transformer block activations in the backward pass.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        max_sequence_length: int | None = None,
        guidance: float | None = None,
        sample_size: int = 128,
        gradient_checkpointing: bool = False,
    ) -> None:
        arguments = dict(locals())  # the teacher's `source`
        path = pretrained_model_name_or_path
        transformer, scheduler_config = load_flow_parts(FluxDenoiser, path, revision, "FluxTeacher")
        super().__init__(
            transformer,
            scheduler_config,
            path,
            revision,
            max_sequence_length,
            guidance,
            sample_size,
        )
        if gradient_checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.source = pretrained_source(FluxTeacher, arguments)

    @classmethod
    def check_before_loading(cls, settings: Mapping[str, Any], module: Mapping[str, Any]) -> None:
        """Besides the folder and t_init: the embedded guidance against the transformer's config
        (guidance_embeds) and the module's classifier-free guidance scales."""
        super().check_before_loading(settings, module)
        guidance = resolve_guidance(flux_guidance_embeds(settings), settings.get("guidance"))
        scales = {name: module[name] for name in GUIDANCE_SCALES if module.get(name) is not None}
        check_scales_without_cfg(scales, guidance)

    @classmethod
    def check_negative_prompt(
        cls,
        settings: Mapping[str, Any],
        module: Mapping[str, Any],
        setting: str,
        roles: Sequence[str],
    ) -> None:
        """A guidance-distilled model (Flux.1-dev: `guidance_embeds`) runs every guidance scale at
        1, so no negative prompt can act on it: refused naming the setting to turn off; else the
        scale-1 check of every teacher."""
        if roles and flux_guidance_embeds(settings):
            name = setting.split()[0]
            off = "false" if name == "keywords_as_negative" else "null"
            raise SFDConfigError(
                f"conditions {setting} gives {', '.join(roles)} a negative prompt, which a "
                "guidance-distilled Flux model (guidance_embeds true, e.g. FLUX.1-dev) never "
                "uses: its guidance scales stay 1 (guidance is the embedded input); set "
                f"--model.conditions.init_args.{name} {off}, or use a teacher with "
                "classifier-free guidance (FLUX.1-schnell or SD3, guidance scales above 1)"
            )
        super().check_negative_prompt(settings, module, setting, roles)
