"""Exported generators: checkpoint -> diffusers folder, folder -> pipeline or σ-space generator.

Which pipeline class holds a generator is decided in one place, `PIPELINE_FOR_KIND`, keyed by the
`kind` tag of the generator's denoiser (`sfd.teachers.DENOISER_KINDS`). Every folder also holds
a standalone copy of its pipeline class (torch + diffusers only), a model card (`README.md`) and
`sfd_export.json`; on request an fp16 / bf16 weights variant and, for Stable Diffusion, a
single-file checkpoint and a LoRA of the difference from the teacher (`export_parts`) for
text-to-image generators (Stable Diffusion, SDXL, SD3, Flux).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from sfd.core.checkpoint_files import DEFAULT_ROOT_DIR, load_checkpoint_safely, newest_checkpoint
from sfd.core.generator import GENERATOR_SPEC_KEY, OneStepGenerator, generator_from_checkpoint
from sfd.core.guards import WEIGHT_LIMIT, check_finite_weights, largest_weight
from sfd.errors import SFDConfigError, check_integer
from sfd.folders import (
    check_input_file,
    check_output_folder,
    pipeline_class_name,
    read_json_file,
    write_folder_atomically,
)
from sfd.pipelines.export_parts import EXPORT_PARTS, ExportJob, write_standalone_pipeline
from sfd.pipelines.metrics_file import metrics_mismatch, read_metrics_file
from sfd.pipelines.model_card import EXPORT_RECORD, model_card
from sfd.pipelines.one_step import SETTINGS_KEY, OneStepPipeline
from sfd.pipelines.one_step_flow import FLOW_PIPELINES, OneStepFlowSampling
from sfd.pipelines.one_step_sdxl import OneStepSDXLPipeline
from sfd.pipelines.one_step_text import OneStepTextPipeline
from sfd.teachers import (
    EDMUNetDenoiser,
    StableDiffusionDenoiser,
    StableDiffusionXLDenoiser,
    VPUNetDenoiser,
)
from sfd.teachers.adapter_io import merged_denoiser
from sfd.teachers.adapters import AdapterView

# Denoiser kind -> the diffusers pipeline class an exported generator of that kind is saved as.
PIPELINE_FOR_KIND: dict[str, type[DiffusionPipeline]] = {
    VPUNetDenoiser.kind: OneStepPipeline,
    EDMUNetDenoiser.kind: OneStepPipeline,
    StableDiffusionDenoiser.kind: OneStepTextPipeline,
    StableDiffusionXLDenoiser.kind: OneStepSDXLPipeline,
    **{cls.denoiser_class.kind: cls for cls in FLOW_PIPELINES.values()},
}
# model_index.json class name -> sfd's class; a flow export names the stock class (FLOW_PIPELINES).
PIPELINE_CLASSES = {
    **{cls.__name__: cls for cls in (OneStepPipeline, OneStepTextPipeline, OneStepSDXLPipeline)},
    **FLOW_PIPELINES,
}


def pipeline_class_for(generator: OneStepGenerator) -> type[DiffusionPipeline]:
    """The one-step pipeline class that holds `generator` (`PIPELINE_FOR_KIND`)."""
    kind = generator.denoiser.kind
    if kind not in PIPELINE_FOR_KIND:
        raise SFDConfigError(
            f"cannot export a generator built on {type(generator.denoiser).__name__}; "
            f"exportable denoiser kinds: {sorted(PIPELINE_FOR_KIND)}"
        )
    return PIPELINE_FOR_KIND[kind]


def pipeline_for(generator: OneStepGenerator) -> Any:
    """The one-step pipeline that holds `generator` (its networks shared, not copied)."""
    return pipeline_class_for(generator).from_generator(generator)


def standalone_generator(generator: OneStepGenerator) -> OneStepGenerator:
    """The generator as one network: a shared-base run's adapter merged into a copy of the base
    (`sfd.teachers.adapter_io.merged_denoiser`); any other generator as it is."""
    if not isinstance(generator.denoiser, AdapterView):
        return generator
    merged = merged_denoiser(generator.denoiser)
    if generator.t_init is not None:
        return OneStepGenerator(merged, t_init=generator.t_init).eval()
    return OneStepGenerator(merged, generator.sigma_init).eval()


METRICS_FILE = "metrics.json"  # an evaluation beside a checkpoint goes onto the export's card


def save_generator(
    generator: OneStepGenerator,
    output_dir: str | Path,
    overwrite: bool = False,
    dtype: str | None = None,
    single_file: bool = False,
    lora_rank: int | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    metrics_source: str | None = None,
    parts: dict[str, Any] | None = None,
    checkpoint: str | None = None,
) -> Path:
    """Write a generator as a diffusers folder, atomically (a failure leaves no partial folder).

    Args:
        generator: the generator to export.
        output_dir: the folder to create.
        overwrite: replace an existing non-empty folder.
        dtype: also write a "fp16" or "bf16" weights variant (diffusers' `variant` naming).
        single_file: also write the original-layout checkpoint (text-to-image exports).
        lora_rank: also write a rank-r LoRA of generator − teacher (text-to-image exports).
        training: the run's record (`sfd.core.generator.training_record`), for the card.
        metrics: the last evaluation's metrics, for the card.
        metrics_source: where `metrics` came from (named on the card).
        parts: other optional parts by their `EXPORT_PARTS` name, {name: value} (`dtype`,
            `single_file` and `lora_rank` are the parts "variant", "single_file" and "lora").
        checkpoint: the checkpoint file the generator came from (recorded, not on the card).

    Returns:
        the folder.
    """
    output_dir = check_output_folder(output_dir, "output folder", overwrite)
    generator = standalone_generator(generator)
    check_finite_weights("the generator", generator, trained=True)
    asked = {"variant": dtype, "single_file": single_file or None, "lora": lora_rank}
    asked |= dict(parts or {})
    job = ExportJob(
        pipeline_class_for(generator),
        generator,
        {k: v for k, v in asked.items() if v is not None},
        training,
    )
    unknown = sorted(set(job.parts) - set(EXPORT_PARTS))
    if unknown:
        raise SFDConfigError(
            f"export part {unknown[0]!r} is unknown; parts: {sorted(EXPORT_PARTS)}"
        )
    for name, value in job.parts.items():  # from config files, before anything loads
        EXPORT_PARTS[name].check(job, value)
    pipeline = job.pipeline = pipeline_for(generator)  # the VAE and text encoders load here
    for name, value in job.parts.items():
        EXPORT_PARTS[name].check_loaded(job, value)
    text = job.text
    record: dict[str, Any] = {
        "kind": "text" if text else "class",
        "has_vae": bool(text and pipeline.vae is not None),
        "pipeline_class": type(pipeline).__name__,
        "sigma_init": generator.sigma_init,
        "timestep": pipeline.config.timestep,
        "time_ids": pipeline.config.get("time_ids"),  # SDXL: the size/crop ids it was trained with
        "teacher_source": getattr(generator.denoiser, "pipeline", None),
        "training": training,
        "metrics": metrics,
        "metrics_source": metrics_source,
        "checkpoint": checkpoint,
    }
    if isinstance(pipeline, OneStepFlowSampling):  # a stock folder: the stock call samples it
        record["stock_class"] = pipeline.stock_class.__name__
        record["stock_call"] = pipeline.stock_call()

    def write(staging: Path) -> None:
        pipeline.save_pretrained(staging, safe_serialization=True)
        record["pipeline_file"] = write_standalone_pipeline(pipeline, staging)
        for name, part in EXPORT_PARTS.items():  # registry order
            if name in job.parts:
                record.update(part.write(job, staging, job.parts[name]))
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        (staging / "README.md").write_text(model_card(record))

    return write_folder_atomically(output_dir, write)


def export_index(path: str | Path) -> tuple[dict[str, Any], type[DiffusionPipeline]]:
    """The model_index.json of an exported one-step pipeline folder and sfd's class for it,
    checked as `load_pipeline` needs them, with no weight read (so a call the folder cannot take
    is refused before it loads).

    Args:
        path: the exported folder.

    Returns:
        (the model_index.json content, the pipeline class that loads the folder).
    """
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise SFDConfigError(
            f"{str(path)!r} is not an exported generator folder (no model_index.json)"
        )
    config = read_json_file(index)
    class_name = pipeline_class_name(config)
    if class_name not in PIPELINE_CLASSES:
        raise SFDConfigError(
            f"{str(path)!r} holds a {class_name!r} pipeline, not one of {sorted(PIPELINE_CLASSES)}"
        )
    if class_name in FLOW_PIPELINES and SETTINGS_KEY not in config:
        raise SFDConfigError(
            f"{str(path)!r} is a stock {class_name} folder, not an sfd export (its "
            "model_index.json has no one-step settings); a teacher folder is trained with sfd fit"
        )
    return config, PIPELINE_CLASSES[class_name]


def load_pipeline(path: str | Path) -> Any:
    """Load an exported one-step pipeline folder (class-conditional or text-to-image)."""
    _, pipeline_class = export_index(path)
    pipeline = pipeline_class.from_pretrained(str(path))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_generator(path: str | Path) -> OneStepGenerator:
    """Load an exported generator folder as a σ-space `OneStepGenerator`."""
    return load_pipeline(path).generator


def find_metrics(checkpoint: Path, levels: int = 3) -> Path | None:
    """The nearest `metrics.json` beside the checkpoint or in one of its `levels` parent folders."""
    for folder in [checkpoint.parent, *checkpoint.parent.parents][:levels]:
        if (folder / METRICS_FILE).is_file():
            return folder / METRICS_FILE
    return None


LAST = "last"  # `sfd export last OUT`: the newest checkpoint under `sfd fit`'s default run root


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """The checkpoint file that `checkpoint` names: a file, a run folder or `last`.

    A run folder (an `sfd fit` trainer.default_root_dir, or any folder above its checkpoints)
    stands for its newest `last*.ckpt` / `hpc_ckpt_*.ckpt`, the one `--ckpt_path last` resumes;
    `last` for the newest one under `runs/`, `sfd fit`'s default run root.

    Args:
        checkpoint: a checkpoint file, a run folder, or "last".

    Returns:
        the checkpoint file (not checked further).
    """
    folder = Path(DEFAULT_ROOT_DIR) if str(checkpoint) == LAST else Path(checkpoint)
    if not folder.is_dir():
        return Path(checkpoint)
    newest = newest_checkpoint([folder])
    if newest is None:
        named = f"{LAST!r} (the run root {str(folder)!r})" if folder != Path(checkpoint) else ""
        raise SFDConfigError(
            f"checkpoint {named or repr(str(folder))} is a folder that holds no last*.ckpt or "
            "hpc_ckpt_*.ckpt (no checkpoint of an `sfd fit` run); name a run folder or a "
            ".ckpt file"
        )
    return Path(newest)


def export_checkpoint(
    checkpoint: str | Path,
    output_dir: str | Path,
    overwrite: bool = False,
    dtype: str | None = None,
    single_file: bool = False,
    lora_rank: int | None = None,
    metrics: str | Path | None = None,
    force: bool = False,
) -> Path:
    """`sfd export`: checkpoint → diffusers folder with the (EMA) generator and its model card.

    Every check of `sfd export` is made here, each failure one `SFDConfigError` line: the
    options and paths first (before the checkpoint is read), then the file is read safely
    (`weights_only=True`), then its generator is rebuilt and checked for finite weights, for
    weights that blew up (|w| > `WEIGHT_LIMIT`) and for a metrics file of another run.

    Args:
        checkpoint: an `sfd fit` checkpoint, a run folder (its newest checkpoint, recorded as
            `checkpoint` in `sfd_export.json`) or "last" (`resolve_checkpoint`).
        output_dir: the folder to create.
        overwrite: replace an existing non-empty folder.
        dtype: also write a "fp16" / "bf16" weights variant.
        single_file: also write the original-layout checkpoint (text-to-image exports).
        lora_rank: also write a rank-r delta LoRA (text-to-image exports).
        metrics: a metrics.json for the card (default: the nearest one beside the checkpoint).
        force: export even weights that blew up, or with a metrics file that does not record
            this run.

    Returns:
        the folder.
    """
    if lora_rank is not None:
        check_integer("--lora", lora_rank, 1)  # a LoRA rank
    checkpoint = resolve_checkpoint(checkpoint)
    check_input_file(checkpoint, "checkpoint")
    check_output_folder(output_dir, "output folder", overwrite)
    if metrics is not None:
        read_metrics_file(metrics)
    contents = load_checkpoint_safely(checkpoint, "checkpoint")
    generator = generator_from_checkpoint(contents, f"checkpoint {str(checkpoint)!r}")
    metrics_path = check_export(contents, generator, Path(checkpoint), metrics, force)
    return save_generator(
        generator,
        output_dir,
        overwrite,
        dtype=dtype,
        single_file=single_file,
        lora_rank=lora_rank,
        training=contents.get(GENERATOR_SPEC_KEY, {}).get("training"),
        metrics=read_metrics_file(metrics_path) if metrics_path else None,
        metrics_source=str(metrics_path) if metrics_path else None,
        checkpoint=str(checkpoint),
    )


def check_export(
    contents: dict[str, Any],
    generator: OneStepGenerator,
    checkpoint: Path,
    metrics: str | Path | None,
    force: bool,
) -> Path | None:
    """Refuse, unless `force`, weights that blew up and a metrics file of another run.

    Returns:
        the metrics file for the card (`metrics`, or the one found beside the checkpoint).
    """
    peak = largest_weight(generator)
    if peak is not None and peak[1] > WEIGHT_LIMIT and not force:
        raise SFDConfigError(
            f"checkpoint {str(checkpoint)!r}: the generator's weights blew up ({peak[0]} reaches "
            f"|w| = {peak[1]:.3g}, beyond {WEIGHT_LIMIT:g}); take an earlier checkpoint, or "
            "--force exports it anyway"
        )
    path = Path(metrics) if metrics is not None else find_metrics(checkpoint)
    if path is None:
        return None
    what = "--metrics" if metrics is not None else "the metrics file"
    mismatch = metrics_mismatch(
        read_metrics_file(path, what), contents[GENERATOR_SPEC_KEY].get("training")
    )
    if mismatch and not force:
        raise SFDConfigError(
            f"{what} {str(path)!r} is not this checkpoint's evaluation: {mismatch} (--force "
            "puts it on the model card anyway)"
        )
    if mismatch == "" and metrics is not None and not force:
        raise SFDConfigError(
            f"--metrics {str(path)!r} records no forget, override or iterations to match "
            f"against checkpoint {str(checkpoint)!r}; --force puts it on the model card anyway"
        )
    return path


class PretrainedOneStepGenerator(OneStepGenerator):
    """An exported one-step generator loaded from its folder, to start a run from.

    Pass it as `model.generator` (e.g. a SiD / SiD-LSG distilled generator, or the stage-1
    generator of a two-stage run); its own σ_init is kept.

    Args:
        pretrained_model_name_or_path: the exported generator folder.
    """

    def __init__(self, pretrained_model_name_or_path: str) -> None:
        loaded = load_generator(pretrained_model_name_or_path)
        super().__init__(loaded.denoiser, loaded.sigma_init)
