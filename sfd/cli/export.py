"""`sfd export CKPT DIR`: the (EMA) generator of an SFD checkpoint as a diffusers folder."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sfd.errors import SFDConfigError
from sfd.folders import check_writable_folder

WEIGHT_LIMIT = 1e6  # |w| beyond this: a run that blew up (trained weights are O(1))


def run(args: list[str]) -> None:
    """Parse `sfd export`, check the paths (before importing torch), write the folder."""
    parser = argparse.ArgumentParser(
        prog="sfd export", description="Export the (EMA) generator of an SFD checkpoint."
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint written by `sfd fit`")
    parser.add_argument("output_dir", help="folder to create (diffusers format)")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a non-empty folder (atomically: the old one stays until the new is complete)",
    )
    parser.add_argument(
        "--dtype", choices=["fp16", "bf16"], help="also write weights in this dtype (a variant)"
    )
    parser.add_argument(
        "--single-file",
        action="store_true",
        help="also write one original-layout checkpoint (A1111 / ComfyUI; Stable Diffusion)",
    )
    parser.add_argument(
        "--lora",
        type=int,
        metavar="RANK",
        help="also write a rank-RANK LoRA of the difference from the teacher (Stable Diffusion)",
    )
    parser.add_argument(
        "--metrics", help="metrics.json for the model card (default: one beside the checkpoint)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"export even a generator whose weights exceed |w| > {WEIGHT_LIMIT:g} (a run that "
        "blew up), or with a metrics file that does not record this run (another run's forget, "
        "override or iterations)",
    )
    options = parser.parse_args(args)
    if options.lora is not None and options.lora < 1:
        raise SFDConfigError(f"--lora {options.lora} must be a LoRA rank of at least 1")
    checkpoint, output_dir = Path(options.checkpoint), Path(options.output_dir)
    if not checkpoint.is_file():
        what = "is a folder, not a file" if checkpoint.is_dir() else "does not exist"
        raise SFDConfigError(f"checkpoint {options.checkpoint!r} {what}")
    check_writable_folder(output_dir, "output folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not options.overwrite:
        raise SFDConfigError(
            f"output folder {options.output_dir!r} exists and is not empty (--overwrite replaces it)"
        )

    from sfd.pipelines.metrics_file import read_metrics_file

    if options.metrics is not None:
        read_metrics_file(options.metrics)

    from sfd.core.generator import GENERATOR_SPEC_KEY, generator_from_checkpoint
    from sfd.pipelines.io import export_loaded_checkpoint
    from sfd.training.checkpoint_files import load_checkpoint_safely

    contents = load_checkpoint_safely(checkpoint, "checkpoint")
    if GENERATOR_SPEC_KEY not in contents:
        raise SFDConfigError(
            f"checkpoint {options.checkpoint!r} is not an SFD training checkpoint (it records "
            "no generator to export)"
        )
    try:
        generator = generator_from_checkpoint(contents)
    except RuntimeError as error:  # load_state_dict: the weights do not fit the recorded spec
        reason = str(error).strip().splitlines()
        detail = next((line.strip() for line in reason[1:] if line.strip()), reason[0])
        raise SFDConfigError(
            f"checkpoint {options.checkpoint!r}: its generator weights do not fit the "
            f"architecture it records ({detail})"
        ) from error
    metrics = check_export(contents, generator, checkpoint, options)
    path = export_loaded_checkpoint(
        contents,
        generator,
        checkpoint,
        output_dir,
        options.overwrite,
        dtype=options.dtype,
        single_file=options.single_file,
        lora_rank=options.lora,
        metrics=metrics,
    )
    print(f"exported generator to {path}")


def check_export(
    contents: dict[str, Any], generator: Any, checkpoint: Path, options: argparse.Namespace
) -> Path | None:
    """Refuse, unless --force, weights that blew up and a metrics file of another run.

    Returns:
        the metrics file for the card (--metrics, or the one found beside the checkpoint).
    """
    from sfd.core.generator import GENERATOR_SPEC_KEY
    from sfd.core.guards import largest_weight
    from sfd.pipelines.io import find_metrics
    from sfd.pipelines.metrics_file import metrics_mismatch, read_metrics_file

    peak = largest_weight(generator)
    if peak is not None and peak[1] > WEIGHT_LIMIT and not options.force:
        raise SFDConfigError(
            f"checkpoint {str(checkpoint)!r}: the generator's weights blew up ({peak[0]} reaches "
            f"|w| = {peak[1]:.3g}, beyond {WEIGHT_LIMIT:g}); take an earlier checkpoint, or "
            "--force exports it anyway"
        )
    path = Path(options.metrics) if options.metrics is not None else find_metrics(checkpoint)
    if path is None:
        return None
    what = "--metrics" if options.metrics is not None else "the metrics file"
    mismatch = metrics_mismatch(
        read_metrics_file(path, what), contents[GENERATOR_SPEC_KEY].get("training")
    )
    if mismatch and not options.force:
        raise SFDConfigError(
            f"{what} {str(path)!r} is not this checkpoint's evaluation: {mismatch} (--force "
            "puts it on the model card anyway)"
        )
    if mismatch == "" and options.metrics is not None and not options.force:
        raise SFDConfigError(
            f"--metrics {str(path)!r} records no forget, override or iterations to match "
            f"against checkpoint {str(checkpoint)!r}; --force puts it on the model card anyway"
        )
    return path
