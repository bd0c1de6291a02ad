"""`sfd export CKPT DIR`: the (EMA) generator of an SFD checkpoint as a diffusers folder."""

from __future__ import annotations

import argparse


def run(args: list[str]) -> None:
    """Parse `sfd export` and write the folder."""
    parser = argparse.ArgumentParser(
        prog="sfd export", description="Export the (EMA) generator of an SFD checkpoint."
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint written by `sfd fit`")
    parser.add_argument("output_dir", help="folder to create (diffusers format)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")
    options = parser.parse_args(args)
    from sfd.pipelines.io import export_checkpoint

    path = export_checkpoint(options.checkpoint, options.output_dir, options.overwrite)
    print(f"exported generator to {path}")
