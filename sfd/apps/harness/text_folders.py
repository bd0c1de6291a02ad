"""Text-to-image folders as `sfd.eval.TextToImage` models: an exported one-step pipeline or a teacher.

An exported generator is loaded as the pipeline a user loads (`OneStepTextPipeline`, or
`OneStepSD3Pipeline` / `OneStepFluxPipeline` for a flow export); a teacher folder as
`StableDiffusionTeacher` under guided DDIM with the tokenizer and text encoder its
`model_index.json` names, or, for a `StableDiffusion3Pipeline` folder, as `SD3Teacher` under its
guided flow Euler sampler with the stock pipeline's prompt encoding; each with its VAE where it
has one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import AutoencoderKL

from sfd.apps.teachers.flow_text import quiet_clip_truncation
from sfd.errors import SFDConfigError
from sfd.eval.text_models import (
    FlowPromptEncoder,
    PromptEncoder,
    TextToImage,
    ddim_text_model,
    one_step_text_model,
    vae_decoder,
    vae_encoder,
)
from sfd.folders import pipeline_class_name, text_model_index
from sfd.pipelines.io import load_pipeline
from sfd.pipelines.one_step import SETTINGS_KEY
from sfd.pipelines.one_step_flow import FLOW_PIPELINES, OneStepFlowSampling
from sfd.pipelines.one_step_text import OneStepTextPipeline
from sfd.pipelines.text_call import OneStepTextSampling
from sfd.teachers import SD3Teacher
from sfd.teachers.flow import trained_sequence_length
from sfd.teachers.stable_diffusion import StableDiffusionTeacher, load_text_encoder, model_index

TEACHER_GUIDANCE = 1.25  # the teacher_guidance of sfd/apps/demo_text/sfd_text_*.yaml


def is_exported_generator(folder: str | Path) -> bool:
    """Whether a folder holds an exported one-step text pipeline (else: a teacher).

    A flow export names the stock class (StableDiffusion3Pipeline, FluxPipeline), as a teacher
    folder does; the export alone carries the one-step settings block.
    """
    config = text_model_index(folder)
    name = pipeline_class_name(config)
    return name == OneStepTextPipeline.__name__ or (
        name in FLOW_PIPELINES and SETTINGS_KEY in config
    )


def is_flow_folder(folder: str | Path) -> bool:
    """Whether a teacher folder is a Stable Diffusion 3 pipeline (a flow-matching teacher)."""
    return pipeline_class_name(model_index(str(folder))) == SD3Teacher.pipeline_class.__name__


def flow_teacher(folder: str | Path) -> SD3Teacher:
    """An SD3 teacher folder as `SD3Teacher`, at the MiniLM sequence length its sfd.json records
    (a text-demo teacher) or the stock default."""
    return SD3Teacher(str(folder), max_sequence_length=trained_sequence_length(str(folder)))


def flow_prompt_encoder(folder: str | Path, denoiser: Any) -> FlowPromptEncoder:
    """The stock SD3 pipeline's text encoders of a folder (no transformer, no VAE) as an encoder."""
    quiet_clip_truncation()
    encoders = denoiser.pipeline_class.from_pretrained(str(folder), transformer=None, vae=None)
    return FlowPromptEncoder(encoders, denoiser)


def teacher_encoder(folder: str | Path) -> PromptEncoder:
    """A teacher folder's prompt encoder: its own tokenizer and text encoder, or, for a flow
    teacher, the stock pipeline's `encode_prompt`."""
    if is_flow_folder(folder):
        return flow_prompt_encoder(folder, flow_teacher(folder))
    return PromptEncoder(*load_text_encoder(str(folder)))


def teacher_vae(folder: str | Path) -> AutoencoderKL | None:
    """The teacher folder's VAE, or None when its model_index names none (pixel space)."""
    entry = model_index(str(folder)).get("vae")
    if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and entry[1] is not None):
        return None
    return AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()


def teacher_model(folder: str | Path, ddim_steps: int, guidance_scale: float) -> TextToImage:
    """A teacher folder under its own guided sampler: `StableDiffusionTeacher` under DDIM, or
    `SD3Teacher` (a StableDiffusion3Pipeline folder) under the flow Euler sampler."""
    if is_flow_folder(folder):
        teacher: Any = flow_teacher(folder)
        encoder: PromptEncoder = flow_prompt_encoder(folder, teacher)
    else:
        teacher = StableDiffusionTeacher(str(folder))
        encoder = PromptEncoder(*load_text_encoder(str(folder)))
    vae = teacher_vae(folder)
    return ddim_text_model(
        teacher, ddim_steps, encoder, vae_decoder(vae), guidance_scale, vae_encoder(vae)
    )


def exported_model(
    folder: str | Path, guidance_scale: float = 1.0, name: str = "one-step generator"
) -> TextToImage:
    """An exported one-step text pipeline folder (Stable Diffusion, SD3, Flux) as a model."""
    pipeline = load_pipeline(folder)
    if not isinstance(pipeline, OneStepTextSampling):
        raise SFDConfigError(f"{str(folder)!r} is not a text-to-image generator")
    generator = pipeline.generator
    if isinstance(pipeline, OneStepFlowSampling):
        quiet_clip_truncation()
        encoder: PromptEncoder = FlowPromptEncoder(pipeline, generator.denoiser)
    else:
        encoder = PromptEncoder(pipeline.tokenizer, pipeline.text_encoder)
    return one_step_text_model(
        generator, encoder, vae_decoder(pipeline.vae), guidance_scale, name,
        vae_encoder(pipeline.vae),
    )  # fmt: skip


def prompt_tokenizer(folder: str | Path) -> tuple[Any, int | None] | None:
    """The tokenizer that a soft-prompt attack's tokens enter in a text model folder, read alone
    (no weights), and the padded length they must fit in (None: its model_max_length): a flow
    export's or SD3 teacher's sequence tokenizer at its max_sequence_length, else the folder's
    tokenizer; None when model_index.json names no such tokenizer. `sfd eval-text` checks
    --attack-tokens with it before the model loads."""
    index = text_model_index(folder)
    name = pipeline_class_name(index)
    settings: dict[str, Any] = {"pretrained_model_name_or_path": str(folder)}
    family: Any = StableDiffusionTeacher
    if name in FLOW_PIPELINES and is_exported_generator(folder):
        family = FLOW_PIPELINES[name].denoiser_class
        settings["max_sequence_length"] = index[SETTINGS_KEY].get("max_sequence_length")
    elif is_flow_folder(folder):
        family = SD3Teacher
        settings["max_sequence_length"] = trained_sequence_length(str(folder))
    subfolder = family.sequence_encoder[0] if hasattr(family, "sequence_encoder") else "tokenizer"
    entry = index.get(subfolder)
    if not (isinstance(entry, (list, tuple)) and entry and entry[-1] is not None):
        return None
    return family.prompt_tokenizer(settings)


def load_text_model(
    folder: str | Path, ddim_steps: int = 25, guidance_scale: float | None = None
) -> TextToImage:
    """An exported generator (guidance default 1) or a teacher (guidance default
    `TEACHER_GUIDANCE`, the text presets' teacher guidance) folder."""
    if is_exported_generator(folder):
        return exported_model(folder, 1.0 if guidance_scale is None else guidance_scale)
    scale = TEACHER_GUIDANCE if guidance_scale is None else guidance_scale
    return teacher_model(folder, ddim_steps, scale)
