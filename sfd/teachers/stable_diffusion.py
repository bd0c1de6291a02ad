"""Stable Diffusion 1.x / 2.x teachers: `UNet2DConditionModel` on VAE latents (or pixels) as a σ-space denoiser.

Only the UNet is a registered submodule. The tokenizer and text encoder named by the pipeline
folder's `model_index.json` (CLIP for SD 1.x / 2.x, or any transformers encoder such as a BERT
sentence encoder) are loaded on demand to encode fixed prompt sets once (`encode_prompts`) and
released; the VAE (if the pipeline has one) is loaded only by the export / sampling pipeline. So no
frozen text encoder or VAE is ever copied into the generator or the fake score, optimised, or
written to a training checkpoint.

Padding follows the encoder: CLIP keeps Stable Diffusion's convention (prompts padded to 77
tokens, every position attended by the UNet); any other encoder gets its attention mask, and its
padded positions are returned as zero vectors, which the denoiser masks out of cross-attention
(`encoder_attention_mask`). A condition needs no extra field for that: the mask is read off the
embeddings (`cross_attention_mask`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import diffusers
import torch
from diffusers import DDPMScheduler, SchedulerMixin, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
from torch import Tensor

from sfd.errors import SFDConfigError
from sfd.hub import check_hub_source
from sfd.teachers.base import Denoiser, pretrained_source
from sfd.teachers.flow import check_pipeline_class
from sfd.teachers.lora import add_lora, keep_only_trainable
from sfd.teachers.text_encoder import (  # noqa: F401  (re-exported: the text path's API)
    CLIP_MODEL_TYPES,
    cross_attention_mask,
    encode_with,
    hidden_states,
    load_text_encoder,
    load_tokenizer,
    masks_padding,
    model_index,
    pipeline_load_error,
    tokenize,
)
from sfd.teachers.vp import VPDenoiser, check_timestep

ATTENTION_BACKENDS = ("sdpa", "eager")


def set_attention_backend(unet: UNet2DConditionModel, attention: str) -> None:
    """Select the attention kernel: "sdpa" (PyTorch scaled_dot_product_attention) or "eager"."""
    if attention not in ATTENTION_BACKENDS:
        raise SFDConfigError(
            f"attention={attention!r} is not supported; allowed: {ATTENTION_BACKENDS}"
        )
    unet.set_attn_processor(AttnProcessor2_0() if attention == "sdpa" else AttnProcessor())


def scheduler_from_config(config: dict[str, Any]) -> SchedulerMixin:
    """The diffusers scheduler named by a saved scheduler config (`_class_name`, default DDPM)."""
    name = config.get("_class_name", "DDPMScheduler")
    scheduler_class = getattr(diffusers, name, None)
    if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, SchedulerMixin)):
        raise SFDConfigError(f"scheduler class {name!r} is not a diffusers scheduler")
    return scheduler_class.from_config(config)


class StableDiffusionDenoiser(VPDenoiser):
    """A discrete VP `UNet2DConditionModel` on VAE latents as a σ-space denoiser D(x, σ, text).

    The network sees the prompt embeddings as `encoder_hidden_states`; the σ table, t(σ) and the
    ε / v conversion come from `VPDenoiser`. A text condition is any object with
    `prompt_embeds` (B, L, D) and `null()` (its guidance null condition), such as
    `sfd.core.conditions.TextCondition`.

    Args:
        unet: the latent-space network.
        scheduler_config: config of the training scheduler (gives ā_t; saved with exports).
        prediction_type: "epsilon" (SD 1.x), "v_prediction" (SD 2.x 768) or "sample".
        pipeline: folder or hub id of the full pipeline (VAE, text encoder, tokenizer), used to
            encode prompts and to export.
        revision: hub revision of `pipeline`.
    """

    kind = "stable_diffusion"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler_config: dict[str, Any],
        prediction_type: str = "epsilon",
        pipeline: str | None = None,
        revision: str | None = None,
    ) -> None:
        super().__init__(scheduler_config, prediction_type)
        self.unet = unet
        self.pipeline = pipeline
        self.revision = revision
        size = unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (unet.config.in_channels, height, width)

    def predict(self, x_t: Tensor, timestep: Tensor, cond: Any) -> Tensor:
        if not isinstance(getattr(cond, "prompt_embeds", None), Tensor):
            raise TypeError(
                f"a Stable Diffusion denoiser needs a text condition (prompt_embeds), got {type(cond)}"
            )
        dtype = self.network_dtype(self.unet)
        embeds = cond.prompt_embeds.to(device=x_t.device, dtype=dtype)  # (B, L, D)
        return self.unet(
            x_t.to(dtype),
            timestep,
            encoder_hidden_states=embeds,
            encoder_attention_mask=cross_attention_mask(embeds),
        ).sample

    def null_condition(self, cond: Any) -> Any:
        return cond.null()

    guided = Denoiser.guided_in_one_batch

    def with_unet(self, unet: UNet2DConditionModel) -> StableDiffusionDenoiser:
        """This denoiser's schedule and settings around another network of the same layout."""
        return StableDiffusionDenoiser(unet, self.scheduler_config, self.prediction_type)

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 32) -> Tensor:
        """Encode prompts with the pipeline's text encoder (loaded here, released after).

        Args:
            prompts: the prompt strings, N of them.
            batch_size: prompts per text-encoder call.

        Returns:
            prompt embeddings, (N, L, D), float32 on the CPU.
        """
        tokenizer, text_encoder = load_text_encoder(self.pipeline, self.revision)
        return encode_with(tokenizer, text_encoder, prompts, batch_size).cpu()

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "unet": dict(self.unet.config),
            "scheduler": self.scheduler_config,
            "prediction_type": self.prediction_type,
            "pipeline": self.pipeline,
            "revision": self.revision,
        }

    @classmethod
    def prompt_tokenizer(cls, settings: Mapping[str, Any]) -> tuple[Any, int | None] | None:
        """The folder's (first) tokenizer, padding to its model_max_length."""
        path = settings.get("pretrained_model_name_or_path")
        return None if path is None else (load_tokenizer(str(path), settings.get("revision")), None)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> StableDiffusionDenoiser:
        return cls(
            UNet2DConditionModel.from_config(spec["unet"]),
            spec["scheduler"],
            spec["prediction_type"],
            spec["pipeline"],
            spec["revision"],
        )


# --- loading -------------------------------------------------------------------------------------

SDXL_ADDITION = "text_time"  # an SDXL UNet's addition_embed_type: pooled text + size/crop ids


def load_unet(path: str, subfolder: str | None, revision: str | None) -> UNet2DConditionModel:
    try:
        return UNet2DConditionModel.from_pretrained(path, subfolder=subfolder, revision=revision)
    except (OSError, ValueError) as error:
        raise pipeline_load_error(path, "UNet2DConditionModel", error) from error


def _load_scheduler_config(path: str, revision: str | None) -> dict[str, Any]:
    try:
        return dict(DDPMScheduler.load_config(path, subfolder="scheduler", revision=revision))
    except (OSError, ValueError) as error:
        raise pipeline_load_error(path, "scheduler config", error) from error


def _check_family(path: str, subfolder: str | None, revision: str | None, sdxl: bool) -> None:
    """Refuse, before any weight is read, an SDXL folder for SD 1.x / 2.x and the reverse."""
    try:
        config = UNet2DConditionModel.load_config(path, subfolder=subfolder, revision=revision)
    except (OSError, ValueError) as error:
        raise pipeline_load_error(path, "UNet config", error) from error
    is_sdxl = config.get("addition_embed_type") == SDXL_ADDITION
    if is_sdxl and not sdxl:
        raise SFDConfigError(
            f"{path!r} is an SDXL pipeline (its UNet takes pooled text embeddings and size/crop "
            "time ids); load it with sfd.teachers.StableDiffusionXLTeacher (configs/sdxl_base.yaml)"
        )
    if sdxl and not is_sdxl:
        raise SFDConfigError(
            f"{path!r} is not an SDXL pipeline (its UNet's addition_embed_type is "
            f"{config.get('addition_embed_type')!r}, not {SDXL_ADDITION!r}); load it with "
            "sfd.teachers.StableDiffusionTeacher (configs/sd_base.yaml)"
        )


def load_pretrained_unet(
    path: str, revision: str | None, subfolder: str | None, attention: str, sdxl: bool = False
) -> tuple[dict[str, Any], UNet2DConditionModel]:
    """The scheduler config and UNet of a Stable Diffusion (or, with `sdxl`, SDXL) folder.

    Every check comes first (`check_pretrained_folder`).
    """
    scheduler_config = check_pretrained_folder(path, revision, subfolder, attention, sdxl)
    return scheduler_config, load_unet(path, subfolder, revision)


def check_pretrained_folder(
    path: str, revision: str | None, subfolder: str | None, attention: str, sdxl: bool = False
) -> dict[str, Any]:
    """Refuse what a Stable Diffusion (or SDXL) folder's configs rule out, reading no weights:
    the attention backend, the source, the pipeline class, the scheduler and the family.

    Returns:
        the scheduler config.
    """
    if attention not in ATTENTION_BACKENDS:
        raise SFDConfigError(
            f"attention={attention!r} is not supported; allowed: {ATTENTION_BACKENDS}"
        )
    check_hub_source(path, "Stable Diffusion XL pipeline" if sdxl else "Stable Diffusion pipeline")
    teacher = "StableDiffusionXLTeacher" if sdxl else "StableDiffusionTeacher"
    check_pipeline_class(path, model_index(path, revision), None, teacher)
    scheduler_config = _load_scheduler_config(path, revision)
    _check_family(path, subfolder, revision, sdxl)
    return scheduler_config


def prepare_teacher_unet(
    unet: UNet2DConditionModel, attention: str, gradient_checkpointing: bool
) -> None:
    """Attention kernel, gradient checkpointing and eval mode of a loaded teacher UNet."""
    set_attention_backend(unet, attention)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.eval()


class StableDiffusionTeacher(StableDiffusionDenoiser):
    """A Stable Diffusion 1.x / 2.x teacher loaded from a diffusers pipeline folder or hub id.

    The generator and the fake score are copies of it, so `gradient_checkpointing` and
    `attention` apply to all three networks. An SDXL folder is refused with a pointer to
    `sfd.teachers.StableDiffusionXLTeacher`.

    Args:
        pretrained_model_name_or_path: local folder or hub id (e.g.
            "stable-diffusion-v1-5/stable-diffusion-v1-5").
        revision: hub revision.
        prediction_type: override the scheduler's prediction type ("epsilon", "v_prediction").
        subfolder: where the UNet lives inside the pipeline folder.
        gradient_checkpointing: recompute UNet block activations in the backward pass.
        attention: "sdpa" (PyTorch scaled-dot-product attention) or "eager".
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        prediction_type: str | None = None,
        subfolder: str = "unet",
        gradient_checkpointing: bool = False,
        attention: str = "sdpa",
    ) -> None:
        arguments = dict(locals())  # the teacher's `source`
        path = pretrained_model_name_or_path
        scheduler_config, unet = load_pretrained_unet(path, revision, subfolder or None, attention)
        super().__init__(
            unet,
            scheduler_config,
            prediction_type or scheduler_config.get("prediction_type", "epsilon"),
            path,
            revision,
        )
        prepare_teacher_unet(self.unet, attention, gradient_checkpointing)
        self.source = pretrained_source(StableDiffusionTeacher, arguments)

    @classmethod
    def check_before_loading(cls, settings: Mapping[str, Any], module: Mapping[str, Any]) -> None:
        """The folder's files, and t_init against its scheduler's number of timesteps."""
        scheduler_config = check_pretrained_folder(*folder_settings(settings))
        if module.get("t_init") is not None:
            check_timestep(module["t_init"], scheduler_config.get("num_train_timesteps", 1000))


def folder_settings(settings: Mapping[str, Any]) -> tuple[str, str | None, str | None, str]:
    """(path, revision, subfolder, attention) of a Stable Diffusion teacher's init_args."""
    return (
        str(settings["pretrained_model_name_or_path"]),
        settings.get("revision"),
        settings.get("subfolder", "unet") or None,
        settings.get("attention", "sdpa"),
    )


# --- LoRA fake score -----------------------------------------------------------------------------


class StableDiffusionLoRAFakeScore(StableDiffusionTeacher):
    """A smaller fake score: the pretrained UNet, frozen, plus trainable PEFT LoRA on its attention.

    Pass it as `model.fake_score`. Only the LoRA factors require gradients, get optimizer state
    and are checkpointed; the frozen base weights are reloaded from
    `pretrained_model_name_or_path` on resume. Since the update B·A starts at 0, the fake score
    starts equal to the teacher.

    Args:
        pretrained_model_name_or_path: the same pipeline as the teacher's.
        rank: LoRA rank r.
        lora_alpha: LoRA α (update scaled by α/r); default r.
        revision: hub revision.
        prediction_type: override the scheduler's prediction type.
        gradient_checkpointing: recompute UNet block activations in the backward pass.
        attention: "sdpa" or "eager".
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        rank: int = 64,
        lora_alpha: float | None = None,
        revision: str | None = None,
        prediction_type: str | None = None,
        gradient_checkpointing: bool = False,
        attention: str = "sdpa",
    ) -> None:
        if rank < 1:
            raise SFDConfigError(f"LoRA rank={rank} must be at least 1")
        super().__init__(
            pretrained_model_name_or_path,
            revision,
            prediction_type,
            gradient_checkpointing=gradient_checkpointing,
            attention=attention,
        )
        alpha = float(lora_alpha if lora_alpha is not None else rank)
        self.lora_parameters = ["unet." + name for name in add_lora(self.unet, rank, alpha)]
        if not self.lora_parameters:
            raise SFDConfigError("the UNet has no attention projections to adapt with LoRA")
        keep_only_trainable(self, self.lora_parameters)

    def requires_grad_(self, requires_grad: bool = True) -> StableDiffusionLoRAFakeScore:
        """Switch gradients of the LoRA factors only; the base stays frozen."""
        lora = set(self.lora_parameters)
        for name, param in self.named_parameters():
            if name in lora:
                param.requires_grad_(requires_grad)
        return self

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError(
            "a LoRA fake score is a training-time network; it is not exported"
        )
