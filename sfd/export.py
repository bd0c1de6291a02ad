"""Export trained generators from Lightning checkpoints to diffusers folders, and load them back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sfd.errors import SFDConfigError
from sfd.folders import write_folder_atomically
from sfd.generator import OneStepGenerator
from sfd.module import GENERATOR_SPEC_KEY
from sfd.pipeline import OneStepPipeline
from sfd.teachers.stable_diffusion import StableDiffusionDenoiser
from sfd.teachers.unet import EDMUNetDenoiser, VPUNetDenoiser
from sfd.text_pipeline import OneStepTextPipeline

# Format tags written by `Denoiser.spec()`; the checkpoint records which adapter built the generator.
DENOISER_FROM_SPEC = {
    "vp_unet": VPUNetDenoiser.from_spec,
    "edm_unet": EDMUNetDenoiser.from_spec,
    "stable_diffusion": StableDiffusionDenoiser.from_spec,
}


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (tensors and plain data only; no code is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise SFDConfigError(f"checkpoint {str(path)!r} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def generator_from_checkpoint(path: str | Path) -> OneStepGenerator:
    """Rebuild the generator to ship (the EMA when the run kept one) from an SFD checkpoint."""
    checkpoint = read_checkpoint(path)
    if GENERATOR_SPEC_KEY not in checkpoint:
        raise SFDConfigError(f"{str(path)!r} is not an SFD training checkpoint (no generator spec)")
    spec = checkpoint[GENERATOR_SPEC_KEY]
    kind = spec["denoiser"]["kind"]
    if kind not in DENOISER_FROM_SPEC:
        raise SFDConfigError(
            f"unknown generator kind {kind!r}; known: {sorted(DENOISER_FROM_SPEC)}"
        )
    denoiser = DENOISER_FROM_SPEC[kind](spec["denoiser"])
    prefix = spec["prefix"]
    state = {
        key[len(prefix) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(prefix)
    }
    denoiser.load_state_dict(state, strict=True)
    return OneStepGenerator(denoiser, spec["sigma_init"]).eval()


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
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise SFDConfigError(f"output folder {str(output_dir)!r} exists and is not empty")
    text = isinstance(generator.denoiser, StableDiffusionDenoiser)
    pipeline_class = OneStepTextPipeline if text else OneStepPipeline
    pipeline = pipeline_class.from_generator(generator)
    return write_folder_atomically(
        output_dir, lambda staging: pipeline.save_pretrained(staging, safe_serialization=True)
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
    pipeline_classes = {cls.__name__: cls for cls in (OneStepPipeline, OneStepTextPipeline)}
    if class_name not in pipeline_classes:
        raise SFDConfigError(
            f"{str(path)!r} holds a {class_name!r} pipeline, not one of {sorted(pipeline_classes)}"
        )
    pipeline = pipeline_classes[class_name].from_pretrained(path)
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
