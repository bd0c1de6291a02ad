"""Exported generators: checkpoint -> diffusers folder, folder -> pipeline or σ-space generator.

Which pipeline class holds a generator is decided in one place, `PIPELINE_FOR_KIND`, keyed by the
`kind` tag of the generator's denoiser (`sfd.teachers.DENOISER_KINDS`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from sfd.core.generator import OneStepGenerator, generator_from_checkpoint
from sfd.errors import SFDConfigError
from sfd.folders import write_folder_atomically
from sfd.pipelines.one_step import OneStepPipeline
from sfd.pipelines.one_step_text import OneStepTextPipeline
from sfd.teachers import EDMUNetDenoiser, StableDiffusionDenoiser, VPUNetDenoiser

# Denoiser kind -> the diffusers pipeline class an exported generator of that kind is saved as.
PIPELINE_FOR_KIND: dict[str, type[DiffusionPipeline]] = {
    VPUNetDenoiser.kind: OneStepPipeline,
    EDMUNetDenoiser.kind: OneStepPipeline,
    StableDiffusionDenoiser.kind: OneStepTextPipeline,
}
PIPELINE_CLASSES = {cls.__name__: cls for cls in PIPELINE_FOR_KIND.values()}


def pipeline_for(generator: OneStepGenerator) -> Any:
    """The one-step pipeline that holds `generator` (its networks shared, not copied)."""
    kind = generator.denoiser.kind
    if kind not in PIPELINE_FOR_KIND:
        raise SFDConfigError(
            f"cannot export a generator built on {type(generator.denoiser).__name__}; "
            f"exportable denoiser kinds: {sorted(PIPELINE_FOR_KIND)}"
        )
    return PIPELINE_FOR_KIND[kind].from_generator(generator)


def save_generator(
    generator: OneStepGenerator, output_dir: str | Path, overwrite: bool = False
) -> Path:
    """Write a generator as a diffusers folder, atomically (a failure leaves no partial folder).

    Args:
        generator: the generator to export.
        output_dir: the folder to create.
        overwrite: replace an existing non-empty folder.

    Returns:
        the folder.
    """
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise SFDConfigError(f"output folder {str(output_dir)!r} is a file")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise SFDConfigError(f"output folder {str(output_dir)!r} exists and is not empty")
    check_finite_weights(generator, "the generator")
    pipeline = pipeline_for(generator)
    return write_folder_atomically(
        output_dir, lambda staging: pipeline.save_pretrained(staging, safe_serialization=True)
    )


def check_finite_weights(module: torch.nn.Module, name: str) -> None:
    """Refuse a network with a NaN or infinite weight, naming the first such tensor.

    Args:
        module: the network (e.g. an exported or about-to-be-exported generator).
        name: how the message names it.
    """
    for key, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
            raise SFDConfigError(
                f"{name} has non-finite weights: the first bad tensor is {key} ({nan} NaN, "
                f"{inf} infinite of {tensor.numel()}); a diverged run cannot be exported or "
                "sampled, take an earlier checkpoint"
            )


def load_pipeline(path: str | Path) -> OneStepPipeline | OneStepTextPipeline:
    """Load an exported one-step pipeline folder (class-conditional or text-to-image)."""
    path = Path(path)
    index = path / "model_index.json"
    if not index.is_file():
        raise SFDConfigError(
            f"{str(path)!r} is not an exported generator folder (no model_index.json)"
        )
    class_name = json.loads(index.read_text()).get("_class_name")
    if class_name not in PIPELINE_CLASSES:
        raise SFDConfigError(
            f"{str(path)!r} holds a {class_name!r} pipeline, not one of {sorted(PIPELINE_CLASSES)}"
        )
    pipeline = PIPELINE_CLASSES[class_name].from_pretrained(path)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def load_generator(path: str | Path) -> OneStepGenerator:
    """Load an exported generator folder as a σ-space `OneStepGenerator`."""
    return load_pipeline(path).generator


def export_checkpoint(
    checkpoint: str | Path, output_dir: str | Path, overwrite: bool = False
) -> Path:
    """`sfd export`: checkpoint → diffusers folder with the (EMA) generator."""
    return save_generator(generator_from_checkpoint(checkpoint), output_dir, overwrite)


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
