"""Sampling helpers: image grids from exported generators."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sfd.errors import SFDConfigError
from sfd.pipeline import to_uint8


def image_grid(images: np.ndarray, rows: int) -> Image.Image:
    """Tile uint8 images (N, H, W, C) into a grid of `rows` rows (N divisible by rows)."""
    n, height, width, channels = images.shape
    cols = n // rows
    grid = images.reshape(rows, cols, height, width, channels).transpose(0, 2, 1, 3, 4)
    grid = grid.reshape(rows * height, cols * width, channels)
    return Image.fromarray(grid[..., 0] if channels == 1 else grid)


def sample_grid_to_file(
    generator_dir: str,
    labels: list[int] | None,
    num_per_label: int,
    seed: int,
    output: Path,
    device: str = "cpu",
) -> Path:
    """Sample `num_per_label` images for each label into a PNG grid (rows = labels)."""
    from sfd.export import load_pipeline

    pipeline = load_pipeline(generator_dir).to(device)
    if "num_classes" not in pipeline.config:
        raise SFDConfigError(f"{generator_dir!r} is a text-to-image generator; pass --prompt")
    num_classes = pipeline.config.num_classes
    if labels is None:
        if num_classes is None:
            raise SFDConfigError("the generator is unconditional; pass no --labels")
        labels = list(range(num_classes))
    class_labels = torch.tensor(labels).repeat_interleave(num_per_label)
    rng = torch.Generator(device=device).manual_seed(seed)
    images = pipeline(class_labels, generator=rng, output_type="pt").images
    output.parent.mkdir(parents=True, exist_ok=True)
    image_grid(to_uint8(images), rows=len(labels)).save(output)
    return output
