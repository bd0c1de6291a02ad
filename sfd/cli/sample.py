"""`sfd sample DIR`: a PNG grid from an exported one-step generator (rows = labels or prompts)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from sfd.errors import SFDConfigError
from sfd.images import image_grid, to_uint8
from sfd.pipelines.io import load_pipeline
from sfd.pipelines.one_step_text import OneStepTextPipeline


def run(args: list[str]) -> None:
    """Parse `sfd sample` and write the grid."""
    parser = argparse.ArgumentParser(
        prog="sfd sample", description="Sample an exported one-step generator."
    )
    parser.add_argument("generator", help="exported generator folder")
    parser.add_argument("--labels", type=int, nargs="+", help="class labels (default: all)")
    parser.add_argument(
        "--prompt", action="append", help="text prompt of a text-to-image generator (repeatable)"
    )
    parser.add_argument("--negative-prompt", help="negative prompt (with --guidance-scale != 1)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale (text)")
    parser.add_argument(
        "--num-per-label", "--num-per-prompt", type=int, default=8, help="images per label/prompt"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--output", default="samples.png", help="PNG grid (rows = labels)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    options = parser.parse_args(args)
    if options.num_per_label < 1:
        raise SFDConfigError(f"--num-per-label={options.num_per_label} must be at least 1")
    pipeline = load_pipeline(options.generator).to(options.device)
    rng = torch.Generator(device=options.device).manual_seed(options.seed)
    if isinstance(pipeline, OneStepTextPipeline):
        if not options.prompt:
            raise SFDConfigError(
                f"{options.generator!r} is a text-to-image generator; pass --prompt"
            )
        rows = len(options.prompt)
        images = pipeline(
            options.prompt,
            negative_prompt=options.negative_prompt,
            num_images_per_prompt=options.num_per_label,
            guidance_scale=options.guidance_scale,
            generator=rng,
            output_type="pt",
        ).images
    else:
        if options.prompt:
            raise SFDConfigError(
                f"{options.generator!r} is a class-conditional generator; use --labels"
            )
        labels = options.labels
        if labels is None:
            if pipeline.config.num_classes is None:
                raise SFDConfigError("the generator is unconditional; pass no --labels")
            labels = list(range(pipeline.config.num_classes))
        rows = len(labels)
        class_labels = torch.tensor(labels).repeat_interleave(options.num_per_label)
        images = pipeline(class_labels, generator=rng, output_type="pt").images
    output = Path(options.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    image_grid(to_uint8(images), rows=rows).save(output)
    print(f"wrote {output}")
