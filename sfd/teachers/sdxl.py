"""Stable Diffusion XL teachers: a `text_time` `UNet2DConditionModel` as a σ-space denoiser.

An SDXL UNet takes, beside the prompt embeddings, one pooled text vector per prompt and six
"time ids" (original size, crop top-left, target size, in pixels) through `added_cond_kwargs`.
Prompts are encoded as `StableDiffusionXLPipeline.encode_prompt` does: both CLIP encoders
(`CLIPTextModel`, `CLIPTextModelWithProjection`) give their penultimate hidden states, which are
concatenated (B, 77, D1 + D2); the pooled vector is the second encoder's projected output
(B, P). When the folder sets `force_zeros_for_empty_prompt` (SDXL base does), the empty prompt is
the zero vector, pooled included, as diffusers uses it for an absent negative prompt; a dropped or
unguided row is therefore exactly what SDXL was trained and is sampled with.

The time ids are fixed per run, set as a user's generation sets them: original and target size
the generation resolution (the UNet's sample size times the VAE's scale factor, 1024² for SDXL
base), crop (0, 0); all three are configurable. Conditional and null rows share them, as in the
stock pipeline. Both encoders are loaded only to encode the fixed prompt sets once and released;
only the UNet is a submodule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor, nn

from sfd.errors import SFDConfigError
from sfd.teachers.base import pretrained_source
from sfd.teachers.stable_diffusion import (
    SDXL_ADDITION,
    StableDiffusionDenoiser,
    check_pretrained_folder,
    folder_settings,
    load_unet,
    prepare_teacher_unet,
)
from sfd.teachers.text_encoder import load_text_encoder, model_index, tokenize
from sfd.teachers.vp import check_timestep

TIME_ID_FIELDS = ("original_height", "original_width", "crop_top", "crop_left", "height", "width")


def check_size(name: str, value: Any, minimum: int) -> tuple[int, int]:
    """`value` as a pair of ints ≥ `minimum`, else an `SFDConfigError` naming it."""
    pair = tuple(value) if isinstance(value, (list, tuple)) else None
    if (
        pair is None
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair)
    ):
        raise SFDConfigError(
            f"{name}={value!r} must be two integers (height, width), each at least {minimum}"
        )
    return pair  # type: ignore[return-value]


def sdxl_time_ids(
    resolution: tuple[int, int],
    original_size: Any = None,
    crops_coords_top_left: Any = (0, 0),
    target_size: Any = None,
) -> tuple[int, ...]:
    """The six SDXL time ids, `original_size + crops_coords_top_left + target_size`.

    Args:
        resolution: the generation resolution in pixels (height, width): the default of both
            sizes, as in `StableDiffusionXLPipeline.__call__`.
        original_size: (height, width) of the "original image" the UNet is told about.
        crops_coords_top_left: (top, left) of the crop.
        target_size: (height, width) of the target image.

    Returns:
        (original h, original w, crop top, crop left, target h, target w).
    """
    original = check_size("original_size", original_size or resolution, 1)
    crop = check_size("crops_coords_top_left", crops_coords_top_left, 0)
    target = check_size("target_size", target_size or resolution, 1)
    return (*original, *crop, *target)


class StableDiffusionXLDenoiser(StableDiffusionDenoiser):
    """A discrete VP SDXL UNet on VAE latents as a σ-space denoiser D(x, σ, text).

    A text condition is any object with `prompt_embeds` (B, L, D), `pooled_embeds` (B, P) and
    `null()`, such as `sfd.core.conditions.TextCondition` built by a prompt sampler bound to an
    SDXL teacher. Guidance batches the condition and its null (with the null's pooled
    embeddings) as one 2B UNet call (`StableDiffusionDenoiser.guided`).

    Args:
        unet: the SDXL network (`addition_embed_type="text_time"`).
        scheduler_config: config of the training scheduler (gives ā_t; saved with exports).
        prediction_type: "epsilon" (SDXL base) or "v_prediction".
        time_ids: the six size/crop ids every call gets (`sdxl_time_ids`).
        pipeline: folder or hub id of the full pipeline (VAE, both text encoders), used to
            encode prompts and to export.
        revision: hub revision of `pipeline`.
        force_zeros_for_empty_prompt: the empty prompt is the zero embedding (diffusers'
            pipeline setting of the same name).
    """

    kind = "sdxl"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler_config: dict[str, Any],
        prediction_type: str = "epsilon",
        time_ids: tuple[int, ...] | list[int] = (1024, 1024, 0, 0, 1024, 1024),
        pipeline: str | None = None,
        revision: str | None = None,
        force_zeros_for_empty_prompt: bool = True,
    ) -> None:
        if unet.config.addition_embed_type != SDXL_ADDITION:
            raise SFDConfigError(
                f"an SDXL denoiser needs a UNet with addition_embed_type={SDXL_ADDITION!r}, not "
                f"{unet.config.addition_embed_type!r} (use StableDiffusionDenoiser)"
            )
        if len(time_ids) != len(TIME_ID_FIELDS):
            raise SFDConfigError(f"time_ids={list(time_ids)} must be six numbers {TIME_ID_FIELDS}")
        super().__init__(unet, scheduler_config, prediction_type, pipeline, revision)
        self.time_ids = tuple(int(v) for v in time_ids)
        self.force_zeros_for_empty_prompt = bool(force_zeros_for_empty_prompt)

    def predict(self, x_t: Tensor, timestep: Tensor, cond: Any) -> Tensor:
        pooled = getattr(cond, "pooled_embeds", None)
        if not isinstance(getattr(cond, "prompt_embeds", None), Tensor) or pooled is None:
            raise TypeError(
                "an SDXL denoiser needs a text condition with prompt_embeds and pooled_embeds "
                f"(encoded by an SDXL teacher), got {type(cond).__name__}"
            )
        dtype = self.network_dtype(self.unet)
        batch = x_t.shape[0]
        time_ids = torch.tensor([self.time_ids], dtype=dtype, device=x_t.device).expand(batch, -1)
        return self.unet(
            x_t.to(dtype),
            timestep,
            encoder_hidden_states=cond.prompt_embeds.to(device=x_t.device, dtype=dtype),
            added_cond_kwargs={
                "text_embeds": pooled.to(device=x_t.device, dtype=dtype),  # (B, P)
                "time_ids": time_ids,  # (B, 6)
            },
        ).sample

    def with_unet(self, unet: UNet2DConditionModel) -> StableDiffusionXLDenoiser:
        """This denoiser's schedule, time ids and settings around another SDXL network."""
        return StableDiffusionXLDenoiser(
            unet,
            self.scheduler_config,
            self.prediction_type,
            self.time_ids,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
        )

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], batch_size: int = 32) -> tuple[Tensor, Tensor]:
        """Encode prompts with both text encoders (loaded here, released after).

        Args:
            prompts: the prompt strings, N of them.
            batch_size: prompts per text-encoder call.

        Returns:
            (prompt embeddings (N, 77, D1 + D2), pooled embeddings (N, P)), float32 on the CPU.
        """
        encoders = [load_text_encoder(self.pipeline, self.revision, s) for s in ("", "_2")]
        embeds, pooled = encode_sdxl(
            encoders, prompts, batch_size, self.force_zeros_for_empty_prompt
        )
        return embeds.cpu(), pooled.cpu()

    def spec(self) -> dict[str, Any]:
        return {
            **super().spec(),
            "time_ids": list(self.time_ids),
            "force_zeros_for_empty_prompt": self.force_zeros_for_empty_prompt,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> StableDiffusionXLDenoiser:
        return cls(
            UNet2DConditionModel.from_config(spec["unet"]),
            spec["scheduler"],
            spec["prediction_type"],
            spec["time_ids"],
            spec["pipeline"],
            spec["revision"],
            spec["force_zeros_for_empty_prompt"],
        )


@torch.no_grad()
def encode_sdxl(
    encoders: list[tuple[Any, nn.Module]],
    prompts: list[str],
    batch_size: int = 32,
    zeros_for_empty: bool = True,
) -> tuple[Tensor, Tensor]:
    """Prompt and pooled embeddings as `StableDiffusionXLPipeline.encode_prompt` computes them.

    Each (tokenizer, encoder) pair's penultimate hidden states (no final layer norm), padded to
    the tokenizer's length, concatenated over the pairs; the pooled embedding is the last
    encoder's first output (`text_embeds` of `CLIPTextModelWithProjection`).

    Args:
        encoders: [(tokenizer, CLIPTextModel), (tokenizer_2, CLIPTextModelWithProjection)].
        prompts: N prompt strings.
        batch_size: prompts per call.
        zeros_for_empty: the empty prompt "" is the zero vector, pooled included.

    Returns:
        (embeddings (N, L, D1 + D2), pooled (N, P)), float32 on the encoders' device.
    """
    device = next(encoders[0][1].parameters()).device
    embeds, pooled = [], []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        states = []
        for tokenizer, text_encoder in encoders:
            ids = tokenize(tokenizer, chunk).input_ids.to(device)
            output = text_encoder(ids, output_hidden_states=True)
            states.append(output.hidden_states[-2].float())  # (b, L, D_i)
        embeds.append(torch.cat(states, dim=-1))
        pooled.append(output[0].float())  # (b, P)
    embeds_all, pooled_all = torch.cat(embeds), torch.cat(pooled)
    if pooled_all.ndim != 2:
        raise SFDConfigError(
            "the second SDXL text encoder gives no pooled embedding (expected a "
            f"CLIPTextModelWithProjection, got {type(encoders[-1][1]).__name__})"
        )
    if zeros_for_empty:
        empty = torch.tensor([p == "" for p in prompts], device=device)
        embeds_all = torch.where(empty.view(-1, 1, 1), 0.0, embeds_all)
        pooled_all = torch.where(empty.view(-1, 1), 0.0, pooled_all)
    return embeds_all, pooled_all


def vae_scale_factor(path: str, revision: str | None) -> int:
    """2^(levels − 1) of the folder's VAE, as `StableDiffusionXLPipeline` computes it (8 without)."""
    try:
        config = AutoencoderKL.load_config(path, subfolder="vae", revision=revision)
    except (OSError, ValueError):
        return 8
    return 2 ** (len(config["block_out_channels"]) - 1)


class StableDiffusionXLTeacher(StableDiffusionXLDenoiser):
    """An SDXL teacher loaded from a diffusers pipeline folder or hub id.

    The generator and the fake score are copies of it, so `gradient_checkpointing` and
    `attention` apply to all three networks. An SD 1.x / 2.x folder is refused with a pointer to
    `sfd.teachers.StableDiffusionTeacher`.

    Args:
        pretrained_model_name_or_path: local folder or hub id (e.g.
            "stabilityai/stable-diffusion-xl-base-1.0").
        revision: hub revision.
        prediction_type: override the scheduler's prediction type ("epsilon", "v_prediction").
        subfolder: where the UNet lives inside the pipeline folder.
        gradient_checkpointing: recompute UNet block activations in the backward pass.
        attention: "sdpa" (PyTorch scaled-dot-product attention) or "eager".
        original_size: time ids' original (height, width) in pixels (default: the
            resolution, the UNet's sample size times the VAE's scale factor).
        crops_coords_top_left: time ids' crop (top, left) (default (0, 0)).
        target_size: time ids' target (height, width) (default: the resolution).
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        revision: str | None = None,
        prediction_type: str | None = None,
        subfolder: str = "unet",
        gradient_checkpointing: bool = False,
        attention: str = "sdpa",
        original_size: list[int] | None = None,
        crops_coords_top_left: list[int] | None = None,
        target_size: list[int] | None = None,
    ) -> None:
        arguments = dict(locals())  # the teacher's `source`
        path = pretrained_model_name_or_path
        crop = (0, 0) if crops_coords_top_left is None else crops_coords_top_left
        scheduler_config, index = _check_sdxl_folder(arguments)
        unet = load_unet(path, subfolder or None, revision)
        size = unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        scale = vae_scale_factor(path, revision)
        super().__init__(
            unet,
            scheduler_config,
            prediction_type or scheduler_config.get("prediction_type", "epsilon"),
            sdxl_time_ids((height * scale, width * scale), original_size, crop, target_size),
            path,
            revision,
            bool(index.get("force_zeros_for_empty_prompt", True)),
        )
        prepare_teacher_unet(self.unet, attention, gradient_checkpointing)
        self.source = pretrained_source(StableDiffusionXLTeacher, arguments)

    @classmethod
    def check_before_loading(cls, settings: Mapping[str, Any], module: Mapping[str, Any]) -> None:
        """The folder's files, and t_init against its scheduler's number of timesteps."""
        scheduler_config, _ = _check_sdxl_folder(settings)
        if module.get("t_init") is not None:
            check_timestep(module["t_init"], scheduler_config.get("num_train_timesteps", 1000))


def _check_sdxl_folder(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Refuse what an SDXL teacher's init_args and its folder's configs rule out, reading no
    weights; return (scheduler config, model_index.json)."""
    crop = settings.get("crops_coords_top_left")
    crop = (0, 0) if crop is None else crop
    sdxl_time_ids((1, 1), settings.get("original_size"), crop, settings.get("target_size"))
    path, revision, subfolder, attention = folder_settings(settings)
    scheduler_config = check_pretrained_folder(path, revision, subfolder, attention, sdxl=True)
    index = model_index(path, revision)
    if "text_encoder_2" not in index:
        raise SFDConfigError(
            f"{path!r} has no text_encoder_2 in its model_index.json; an SDXL folder has two "
            "text encoders (text_encoder/, text_encoder_2/) and their tokenizers"
        )
    return scheduler_config, index
