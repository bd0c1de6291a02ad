"""`sfd sample DIR`: a readable grid from an exported one-step generator (rows = labels or prompts).

Arguments and paths are checked before torch is imported. Images are generated `--batch-size` at
a time and pasted into the grid as uint8 tiles, so memory holds one batch of float images and the
grid; a grid larger than an image reader opens is refused before anything is generated.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sfd.cli.common import OneLineParser, run_quietly, usable_device
from sfd.errors import SFDConfigError, check_guidance
from sfd.folders import check_writable_file, pipeline_class_name, write_file_atomically

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MAX_GRID_PIXELS = 89_478_485  # PIL.Image.MAX_IMAGE_PIXELS: larger images trip readers' bomb check
# Smallest area of one grid tile with its gutter: sfd.images.MIN_TILE + GAP squared (repeated
# here so the count is checked before torch is imported; a test keeps the two equal).
TILE_FLOOR_PIXELS = (64 + 4) ** 2


def sample_parser() -> argparse.ArgumentParser:
    """The options of `sfd sample`."""
    parser = OneLineParser(
        prog="sfd sample", description="Sample an exported one-step generator into one grid image."
    )
    add = parser.add_argument
    add("generator", help="exported generator folder")
    add("--labels", type=int, nargs="+", help="class labels, one row each (default: all)")
    add("--prompt", action="append", help="text prompt, one row each (repeatable)")
    add("--negative-prompt", help="negative prompt (with --guidance-scale != 1)")
    add("--guidance-scale", type=float, default=1.0, help="CFG scale (text)")
    add("--num-per-label", "--num-per-prompt", type=int, default=8, help="images per row")
    add("--seed", type=int, default=0, help="seed of the noise")
    add("--batch-size", type=int, default=64, help="images per generator call")
    add("--output", default="samples.png", help=f"grid image file ({', '.join(IMAGE_SUFFIXES)})")
    add("--device", default="cpu", help="torch device, e.g. cuda or cuda:1")
    add("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def run(args: list[str]) -> None:
    """Parse `sfd sample`, check everything cheap first, then generate and write the grid."""
    options = sample_parser().parse_args(args)
    _check_options(options)
    with run_quietly(not options.no_progress):  # also the libraries' loading bars
        _sample(options)


def _sample(options: argparse.Namespace) -> None:
    """`sfd sample` once every cheap check has passed: load, generate, write the grid."""

    import torch

    from sfd.core.guards import check_finite_weights
    from sfd.images import Grid, unit_to_uint8
    from sfd.pipelines.io import export_index, load_pipeline
    from sfd.pipelines.one_step_flow import check_export_guidance
    from sfd.pipelines.text_call import OneStepTextSampling, check_negative_prompt
    from sfd.progress import ProgressBar

    device = usable_device(options.device)
    # What the folder's model_index.json rules out, refused before a weight loads.
    index, pipeline_class = export_index(options.generator)
    text = issubclass(pipeline_class, OneStepTextSampling)
    _check_conditions(options, text)
    if text:
        check_negative_prompt(options.negative_prompt, options.guidance_scale)
        check_export_guidance(index, options.guidance_scale)
    pipeline = load_pipeline(options.generator).to(device)
    check_finite_weights(f"generator {options.generator!r}", pipeline.generator, trained=True)
    rows = _rows(options, pipeline, text)
    per_row = options.num_per_label
    _check_pixels(len(rows) * per_row * TILE_FLOOR_PIXELS, len(rows), per_row)
    forgotten = forgotten_rows(Path(options.generator), rows)
    rng = torch.Generator(device=device).manual_seed(options.seed)
    grid: Grid | None = None
    done = 0
    with ProgressBar(
        total=len(rows) * per_row, desc="sampling", unit="img", disable=options.no_progress
    ) as bar:
        for batch in _batches(rows, per_row, options.batch_size):
            tiles = unit_to_uint8(_generate(pipeline, batch, text, options, rng))  # (B, C, H, W)
            if grid is None:
                grid = Grid(
                    len(rows),
                    per_row,
                    tuple(tiles.shape[1:]),
                    labels=[
                        f"{row} (forgotten)" if gone else str(row)
                        for row, gone in zip(rows, forgotten, strict=True)
                    ],
                    highlight=forgotten,
                )
                _check_pixels(grid.pixels, len(rows), per_row)
            grid.paste(done, tiles)
            done += len(tiles)
            bar.update(len(tiles))
    assert grid is not None
    image = grid.image()
    write_file_atomically(options.output, lambda path: image.save(path))
    print(f"wrote {options.output} ({image.width}×{image.height}, {done} images)")


def _check_options(options: argparse.Namespace) -> str | None:
    """Everything that needs no model; returns the pipeline class the folder names."""
    for name in ("num_per_label", "batch_size"):
        value = getattr(options, name)
        if value < 1:
            raise SFDConfigError(f"--{name.replace('_', '-')}={value} must be at least 1")
    check_guidance("--guidance-scale", options.guidance_scale)
    output = Path(options.output)
    if output.is_dir():
        raise SFDConfigError(f"--output {options.output!r} is a folder; give an image file name")
    if output.suffix.lower() not in IMAGE_SUFFIXES:
        raise SFDConfigError(
            f"--output {options.output!r} has no image extension; allowed: "
            f"{', '.join(IMAGE_SUFFIXES)} (e.g. samples.png)"
        )
    check_writable_file(output, "--output")
    folder = Path(options.generator)
    index = folder / "model_index.json"
    if not index.is_file():
        raise SFDConfigError(
            f"{options.generator!r} is not an exported generator folder (no model_index.json)"
        )
    try:
        kind = pipeline_class_name(json.loads(index.read_text()))
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as error:
        raise SFDConfigError(f"{str(index)!r} is not a valid JSON mapping") from error
    known_rows = len(options.labels or options.prompt or [None])
    per_row = options.num_per_label
    _check_pixels(known_rows * per_row * TILE_FLOOR_PIXELS, known_rows, per_row)
    return kind


def _check_conditions(options: argparse.Namespace, text: bool) -> None:
    """Refuse labels for a text-to-image generator (no prompt) and prompts or labels for a class
    one the other way round."""
    if text and not options.prompt:
        raise SFDConfigError(f"{options.generator!r} is a text-to-image generator; pass --prompt")
    if not text and options.prompt:
        raise SFDConfigError(
            f"{options.generator!r} is a class-conditional generator; use --labels"
        )


def forgotten_rows(folder: Path, rows: list[Any]) -> list[bool]:
    """Which rows the run forgot, as its export record (sfd_export.json) names them: a forget
    class label, or a prompt that is a forget prompt or names a forgotten concept. False for all
    rows when the folder has no training record."""
    record_file = folder / "sfd_export.json"
    if not record_file.is_file():
        return [False] * len(rows)
    record = json.loads(record_file.read_text())
    conditions = (record.get("training") or {}).get("conditions") or {}
    forget_labels = set(conditions.get("forget") or [])
    forget_prompts = {pair[0].lower() for pair in conditions.get("examples") or []}
    concepts = [name.lower() for name in conditions.get("concepts") or {}]
    marks = []
    for row in rows:
        if isinstance(row, str):
            prompt = row.lower()
            marks.append(prompt in forget_prompts or any(c in prompt for c in concepts))
        else:
            marks.append(row in forget_labels)
    return marks


def _check_pixels(pixels: int, rows: int, per_row: int) -> None:
    """Refuse a grid of more than `MAX_GRID_PIXELS` pixels (before anything is generated, from
    the lower bound that every tile is at least `MIN_TILE` pixels square)."""
    if pixels > MAX_GRID_PIXELS:
        raise SFDConfigError(
            f"{rows} row(s) of --num-per-label {per_row} make a grid of at least {pixels:,} "
            f"pixels, more than the {MAX_GRID_PIXELS:,} an image reader opens; ask for fewer "
            "images (for evaluation sets use `sfd eval` / `sfd eval-text`, which write images "
            "one by one)"
        )


def _rows(options: argparse.Namespace, pipeline: Any, text: bool) -> list[Any]:
    if text:
        return list(options.prompt)
    if options.labels is not None:
        return list(options.labels)
    num_classes = pipeline.config.get("num_classes")
    if num_classes is None:
        raise SFDConfigError("the generator is unconditional; pass no --labels")
    return list(range(num_classes))


def _batches(rows: list[Any], per_row: int, batch_size: int) -> Iterator[list[tuple[Any, int]]]:
    """Row-major batches of (row, count) pairs, at most `batch_size` images each."""
    batch: list[tuple[Any, int]] = []
    size = 0
    for row in rows:
        left = per_row
        while left:
            take = min(left, batch_size - size)
            if per_row <= batch_size and take < per_row:  # keep a row in one call if it fits
                yield batch
                batch, size = [], 0
                continue
            batch.append((row, take))
            size += take
            left -= take
            if size == batch_size:
                yield batch
                batch, size = [], 0
    if batch:
        yield batch


def _generate(
    pipeline: Any,
    batch: list[tuple[Any, int]],
    text: bool,
    options: argparse.Namespace,
    rng: Any,
) -> Any:
    import torch

    if text:
        counts = {count for _, count in batch}
        if len(counts) == 1:  # whole rows: one call for all prompts
            return pipeline(
                [row for row, _ in batch],
                negative_prompt=options.negative_prompt,
                num_images_per_prompt=counts.pop(),
                guidance_scale=options.guidance_scale,
                generator=rng,
                output_type="np",
            ).images
        parts = [_generate(pipeline, [item], text, options, rng) for item in batch]
        import numpy as np

        return np.concatenate(parts)
    labels = torch.tensor([row for row, count in batch for _ in range(count)])
    return pipeline(labels, generator=rng, output_type="np").images
