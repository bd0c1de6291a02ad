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
    from sfd.pipelines.io import save_generator
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
    path = save_generator(generator, output_dir, options.overwrite)
    print(f"exported generator to {path}")
