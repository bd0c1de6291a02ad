"""`sfd export CKPT DIR`: the (EMA) generator of an SFD checkpoint as a diffusers folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from sfd.errors import SFDConfigError
from sfd.folders import check_writable_folder


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
    options = parser.parse_args(args)
    checkpoint, output_dir = Path(options.checkpoint), Path(options.output_dir)
    if not checkpoint.is_file():
        what = "is a folder, not a file" if checkpoint.is_dir() else "does not exist"
        raise SFDConfigError(f"checkpoint {options.checkpoint!r} {what}")
    check_writable_folder(output_dir, "output folder")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not options.overwrite:
        raise SFDConfigError(
            f"output folder {options.output_dir!r} exists and is not empty (--overwrite replaces it)"
        )

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
    path = export_loaded_checkpoint(
        contents,
        generator,
        checkpoint,
        output_dir,
        options.overwrite,
        dtype=options.dtype,
        single_file=options.single_file,
        lora_rank=options.lora,
        metrics=options.metrics,
    )
    print(f"exported generator to {path}")
