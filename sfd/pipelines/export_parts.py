"""The optional parts of an export folder: a lower-precision weights variant, the single-file
checkpoint and the delta LoRA, each written into the staging folder beside the standalone pipeline
file that every export carries.

`EXPORT_PARTS` is the registry: part name -> its check (made before anything is written) and its
writer (which returns the part's entries of the export record). A new part is one writer plus one
entry; `save_generator(parts={name: value})` asks for it, `sfd export` names it by an option.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.pipelines.delta_lora import (
    LORA_FOLDER,
    LORA_WEIGHTS,
    LoRAFit,
    delta_lora,
    output_error,
)
from sfd.pipelines.one_step import SETTINGS_KEY, OneStepPipeline
from sfd.pipelines.one_step_flow import FLOW_PIPELINES, OneStepFlowSampling
from sfd.pipelines.one_step_sdxl import SDXL_SETTINGS, OneStepSDXLPipeline
from sfd.pipelines.one_step_text import OneStepTextPipeline, has_vae
from sfd.pipelines.single_file import SINGLE_FILE_NAME, write_sdxl_single_file, write_single_file
from sfd.pipelines.single_file_flow import (
    FLOW_SINGLE_FILE_WRITERS,
    check_flow_projection,
    check_flow_single_file,
)
from sfd.pipelines.text_call import OneStepTextSampling
from sfd.teachers.flow import FlowTransformerDenoiser
from sfd.teachers.text_encoder import model_index

# --dtype name -> (torch dtype, diffusers variant name of the weight files)
VARIANT_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}
# pipeline class -> (module of this package copied into the folder, its file name there)
STANDALONE_FILES = {
    OneStepPipeline: ("standalone_one_step.py", "one_step_pipeline.py"),
    OneStepTextPipeline: ("standalone_one_step_text.py", "one_step_text_pipeline.py"),
    OneStepSDXLPipeline: ("standalone_one_step_sdxl.py", "one_step_sdxl_pipeline.py"),
}
# Pipeline classes whose model_index.json names the standalone file in diffusers' custom-pipeline
# list form. Not the text pipeline: diffusers 0.42 then runs the folder's file whatever class loads
# the folder (`_resolve_custom_pipeline_and_cls`), and a stock StableDiffusionPipeline must load a
# text export as itself.
NAMES_ITS_FILE = (OneStepPipeline,)
# Flow exports are stock folders: model_index.json names the stock class, no file is copied.
# pipeline class -> its settings kept in model_index.json's private block: a stock pipeline loads
# the folder of a text export and would warn about unexpected config attributes otherwise
PRIVATE_SETTINGS = {
    OneStepPipeline: (),
    OneStepTextPipeline: ("sigma_init", "prediction_type", "timestep"),
    OneStepSDXLPipeline: SDXL_SETTINGS,
    **{cls: cls.settings for cls in FLOW_PIPELINES.values()},
}
LORA_CHECK_PROMPTS = ["a photo of a person", "a landscape painting"]  # + the run's forget prompts
LORA_CHECK_SEED = 0


def write_standalone_pipeline(pipeline: Any, staging: Path) -> str | None:
    """Copy the torch + diffusers only twin of the pipeline class into the folder; return its name.

    A flow export needs none: its model_index.json names the stock class (None is returned).

    For a class-conditional export, model_index.json then names file and class in diffusers'
    custom-pipeline form, `["one_step_pipeline", "OneStepPipeline"]`, so
    `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` loads the folder without
    sfd and without naming the file. A text export keeps sigma_init, prediction_type and timestep
    in a private block (`SETTINGS_KEY`) that a stock StableDiffusionPipeline skips silently.
    """
    index_file = staging / "model_index.json"
    index = json.loads(index_file.read_text())
    name = None
    if isinstance(pipeline, OneStepFlowSampling):
        index["_class_name"] = pipeline.stock_class.__name__
    else:
        source, name = STANDALONE_FILES[type(pipeline)]
        shutil.copyfile(Path(__file__).with_name(source), staging / name)
    if isinstance(pipeline, NAMES_ITS_FILE):
        index["_class_name"] = [name.removesuffix(".py"), type(pipeline).__name__]
    private = {key: index.pop(key) for key in PRIVATE_SETTINGS[type(pipeline)]}
    if private:
        index[SETTINGS_KEY] = private
    index_file.write_text(json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    return name


def write_variant(pipeline: Any, staging: Path, variant: str) -> None:
    """Add `*.<variant>.safetensors` weights (fp16 / bf16) beside the float32 ones.

    The networks are reloaded from the staged float32 folder in the variant's dtype and saved by
    diffusers itself, so the files have exactly the names `from_pretrained(variant=...)` reads.
    """
    if variant not in VARIANT_DTYPES:
        raise SFDConfigError(
            f"dtype {variant!r} is not supported; allowed: {sorted(VARIANT_DTYPES)}"
        )
    reduced = type(pipeline).from_pretrained(staging, dtype=VARIANT_DTYPES[variant])
    with tempfile.TemporaryDirectory(dir=staging.parent) as scratch:
        reduced.save_pretrained(scratch, safe_serialization=True, variant=variant)
        for weights in Path(scratch).rglob(f"*.{variant}.safetensors"):
            target = staging / weights.relative_to(scratch)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(weights, target)
            index = weights.with_name(weights.name + ".index.json")
            if index.exists():  # sharded weights keep their index
                shutil.move(index, target.with_name(index.name))


def write_single_file_checkpoint(
    pipeline: Any, staging: Path, variant: str | None
) -> dict[str, str]:
    """The generator with VAE and text encoders as one original-layout float32 checkpoint and,
    with a weights variant, a second one in the variant's dtype beside it
    (`sfd_generator.fp16.safetensors`).

    Returns:
        the record's entries: `single_file` and, with a variant, `single_file_variant`.
    """

    def write(target: Path, dtype: torch.dtype | None = None) -> Path:
        if isinstance(pipeline, OneStepFlowSampling):
            writer = FLOW_SINGLE_FILE_WRITERS[pipeline.stock_class.__name__]
            return writer(pipeline, target, dtype)
        parts = (pipeline.unet, pipeline.vae, pipeline.text_encoder)
        if isinstance(pipeline, OneStepSDXLPipeline):  # SDXL's layout holds both text encoders
            return write_sdxl_single_file(*parts, pipeline.text_encoder_2, target, dtype)
        return write_single_file(*parts, target, dtype)

    write(staging / SINGLE_FILE_NAME)
    entries = {"single_file": SINGLE_FILE_NAME}
    if variant:
        name = SINGLE_FILE_NAME.replace(".safetensors", f".{variant}.safetensors")
        write(staging / name, VARIANT_DTYPES[variant])
        entries["single_file_variant"] = name
    return entries


@torch.no_grad()
def write_delta_lora(
    pipeline: Any,
    generator: OneStepGenerator,
    staging: Path,
    rank: int,
    forget_prompts: list[str],
) -> LoRAFit:
    """Fit generator − teacher as a rank-r LoRA, save it, and measure it against the generator.

    The error is measured the way a user applies the LoRA: the teacher's network (the UNet of a
    Stable Diffusion teacher, the transformer of a flow teacher) with the saved file loaded through
    diffusers' `load_lora_adapter` (what `load_lora_weights` does), sampled at σ_init on fixed
    noise, against the full generator on the same noise.

    Args:
        pipeline: the export's pipeline.
        generator: the generator being exported.
        staging: the staging folder; the LoRA goes to `lora/`.
        rank: LoRA rank r.
        forget_prompts: the run's forget prompts (the check set adds the first two).

    Returns:
        the fit report with output errors.
    """
    denoiser = generator.denoiser
    flow = isinstance(denoiser, FlowTransformerDenoiser)
    name = "transformer" if flow else "unet"
    network = getattr(denoiser, name)
    teacher_network = type(network).from_pretrained(
        denoiser.pipeline, subfolder=name, revision=denoiser.revision
    )
    state, fit = delta_lora(network, teacher_network, rank)
    folder = staging / LORA_FOLDER
    if flow:
        pipeline.stock_class.save_lora_weights(folder, transformer_lora_layers=state)
    else:
        # Imported here: the pipeline module imports transformers' image processors, which warn
        # about torchvision on every command that merely imports the export code.
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        sdxl = isinstance(pipeline, OneStepSDXLPipeline)
        stock = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
        stock.save_lora_weights(folder, unet_lora_layers=state)
    teacher_network.load_lora_adapter(
        str(folder), prefix=name, adapter_name="sfd_delta", weight_name=LORA_WEIGHTS
    )
    teacher_network.eval()
    adapted = (
        denoiser.with_transformer(teacher_network) if flow else denoiser.with_unet(teacher_network)
    )
    prompts = [*LORA_CHECK_PROMPTS, *forget_prompts[:2]]
    cond = pipeline.encode(prompts, [""] * len(prompts))
    z = torch.randn(
        (len(prompts), *generator.sample_shape),
        generator=torch.Generator().manual_seed(LORA_CHECK_SEED),
    )
    sigma = generator.sigma_init
    x0_lora = adapted(denoiser.generator_input(z, sigma), sigma, cond)  # (N, C, h, w)
    x0_full = generator(z, cond)
    fit.output_max_abs_error, fit.output_relative_rms_error = output_error(x0_lora, x0_full)
    fit.check_prompts, fit.check_seed = prompts, LORA_CHECK_SEED
    return fit


@dataclass
class SourceConfigs:
    """What the generator's source pipeline (the teacher folder or hub id its VAE and text
    encoders come from) says of its parts in its config files alone: no weight is read, so the
    export's checks come before any loading.

    Attributes:
        path: the folder or hub id (None: the generator records none).
        revision: its hub revision.
    """

    path: str | None
    revision: str | None = None

    def component_class(self, name: str) -> str | None:
        """The class `model_index.json` names for a component (e.g. "CLIPTextModel"), else its
        config's first architecture; None for a component the pipeline has none of."""
        if self.path is None:
            return None
        entry = model_index(self.path, self.revision).get(name)
        if isinstance(entry, (list, tuple)) and len(entry) == 2:
            return entry[1]
        architectures = self.config(name).get("architectures") or [None]
        return architectures[0]

    def config(self, name: str) -> dict[str, Any]:
        """A component's config.json ({} where it has none)."""
        from transformers import PretrainedConfig

        if self.path is None:
            return {}
        try:
            config, _ = PretrainedConfig.get_config_dict(
                self.path, subfolder=name, revision=self.revision
            )
        except (OSError, ValueError):
            return {}
        return config

    def has_vae(self) -> bool:
        return self.path is not None and has_vae(self.path, self.revision)


@dataclass
class ExportJob:
    """One export being written: what every optional part may read.

    Attributes:
        pipeline_class: the export's pipeline class (`OneStepPipeline`, `OneStepTextPipeline`,
            ...), known before the pipeline is built.
        generator: the generator being exported.
        parts: the parts asked for, name -> the user's value (e.g. {"variant": "fp16"}).
        training: the run's training record (its conditions name the forget prompts).
        pipeline: the export's pipeline, once built (None while the parts are first checked).
    """

    pipeline_class: type
    generator: OneStepGenerator
    parts: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    pipeline: Any = None

    @property
    def text(self) -> bool:
        return issubclass(self.pipeline_class, OneStepTextSampling)

    @property
    def source(self) -> SourceConfigs:
        """The config files of the generator's source pipeline."""
        denoiser = self.generator.denoiser
        return SourceConfigs(
            getattr(denoiser, "pipeline", None), getattr(denoiser, "revision", None)
        )


def _no_check(job: ExportJob, value: Any) -> None:
    return None


@dataclass(frozen=True)
class ExportPart:
    """One optional part of an export folder.

    Attributes:
        check: `check(job, value)` raises `SFDConfigError` if the part cannot be written for
            this generator; called for every asked part before the pipeline is built (its VAE
            and text encoders loaded) and before anything is written: it reads config files only.
        write: `write(job, staging, value)` writes the part into the staging folder and returns
            its entries of the export record (export.json, the model card).
        check_loaded: what only the loaded weights tell (`check_loaded(job, value)`, with
            `job.pipeline` built), before anything is written.
    """

    check: Callable[[ExportJob, Any], None]
    write: Callable[[ExportJob, Path, Any], dict[str, Any]]
    check_loaded: Callable[[ExportJob, Any], None] = _no_check


def _text_to_image_only(job: ExportJob) -> None:
    if not job.text:
        raise SFDConfigError(
            "--single-file and --lora are for text-to-image exports (Stable Diffusion, SDXL, "
            "SD3, Flux); "
            f"this generator is a {type(job.generator.denoiser).__name__}"
        )


def check_variant(job: ExportJob, variant: str) -> None:
    if variant not in VARIANT_DTYPES:
        raise SFDConfigError(
            f"dtype {variant!r} is not supported; allowed: {sorted(VARIANT_DTYPES)}"
        )


def variant_part(job: ExportJob, staging: Path, variant: str) -> dict[str, Any]:
    write_variant(job.pipeline, staging, variant)
    return {"variant": variant, "variant_dtype": str(VARIANT_DTYPES[variant]).split(".")[-1]}


def check_single_file(job: ExportJob, wanted: bool) -> None:
    if not wanted:
        return
    _text_to_image_only(job)
    source = job.source
    if not source.has_vae():
        raise SFDConfigError(
            "--single-file needs a VAE (the original checkpoint layouts hold the denoising "
            "network, VAE and text encoders); this pixel-space generator has none"
        )
    if issubclass(job.pipeline_class, OneStepFlowSampling):
        transformer = job.generator.denoiser.transformer.config
        check_flow_single_file(source, transformer, job.pipeline_class.stock_class.__name__)
        return
    encoder = source.component_class("text_encoder")
    if encoder != "CLIPTextModel":
        raise SFDConfigError(
            "--single-file writes the original Stable Diffusion layout, whose text encoder is "
            f"CLIP; this generator's is a {encoder}, which it cannot hold (export without "
            "--single-file)"
        )


def check_single_file_weights(job: ExportJob, wanted: bool) -> None:
    if wanted and issubclass(job.pipeline_class, OneStepFlowSampling):
        check_flow_projection(job.pipeline, job.pipeline_class.stock_class.__name__)


def single_file_part(job: ExportJob, staging: Path, wanted: bool) -> dict[str, Any]:
    if not wanted:
        return {}
    return write_single_file_checkpoint(job.pipeline, staging, job.parts.get("variant"))


def check_lora(job: ExportJob, rank: int) -> None:
    if rank < 1:
        raise SFDConfigError(f"LoRA rank {rank} must be at least 1")
    _text_to_image_only(job)


def lora_part(job: ExportJob, staging: Path, rank: int) -> dict[str, Any]:
    conditions = (job.training or {}).get("conditions", {})
    forget = [pair[0] for pair in conditions.get("examples", [])]
    return {"lora": write_delta_lora(job.pipeline, job.generator, staging, rank, forget).as_dict()}


# Part name -> check and writer, in the order they are written (with a variant, the single file
# is also written in the variant's dtype).
EXPORT_PARTS: dict[str, ExportPart] = {
    "variant": ExportPart(check_variant, variant_part),
    "single_file": ExportPart(check_single_file, single_file_part, check_single_file_weights),
    "lora": ExportPart(check_lora, lora_part),
}
