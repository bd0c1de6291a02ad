"""`sfd export CKPT DIR`: the (EMA) generator of an SFD checkpoint as a diffusers folder.

CKPT is a checkpoint file, a run folder (its newest checkpoint) or `last`; the command says which
checkpoint it exported and at which iteration.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfd.cli.common import OneLineParser
from sfd.errors import check_integer
from sfd.folders import check_input_file, check_output_folder


def run(args: list[str]) -> None:
    """Parse `sfd export`, check the paths (before importing torch), export the checkpoint."""
    parser = OneLineParser(
        prog="sfd export", description="Export the (EMA) generator of an SFD checkpoint."
    )
    parser.add_argument(
        "checkpoint",
        help="checkpoint written by `sfd fit`, or its run folder (trainer.default_root_dir: the "
        "newest checkpoint of the run, resumed starts included), or `last` (the newest under runs/)",
    )
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
        help="also write one original-layout checkpoint (text-to-image: SD 1.x / 2.x, SDXL, SD3, "
        "Flux)",
    )
    parser.add_argument(
        "--lora",
        type=int,
        metavar="RANK",
        help="also write a rank-RANK LoRA of the difference from the teacher (text-to-image)",
    )
    parser.add_argument(
        "--metrics", help="metrics.json for the model card (default: one beside the checkpoint)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="export even a generator whose weights blew up (|w| beyond 1e6), or with a metrics "
        "file that does not record this run (another run's forget, override or iterations)",
    )
    options = parser.parse_args(args)
    check_options(options)

    from sfd.pipelines.io import export_checkpoint

    path = export_checkpoint(
        options.checkpoint,
        options.output_dir,
        options.overwrite,
        dtype=options.dtype,
        single_file=options.single_file,
        lora_rank=options.lora,
        metrics=options.metrics,
        force=options.force,
    )
    from sfd.pipelines.model_card import EXPORT_RECORD

    record = json.loads((path / EXPORT_RECORD).read_text())
    step = (record.get("training") or {}).get("global_step")
    at = f" (iteration {step})" if step is not None else ""
    print(f"exported the generator of {record['checkpoint']}{at} to {path}")


def check_options(options: argparse.Namespace) -> None:
    """The checks of `sfd export` that need no checkpoint (paths, LoRA rank), before torch is
    imported; `export_checkpoint` makes them again for library callers, then the rest."""
    if options.checkpoint != "last" and not Path(options.checkpoint).is_dir():
        check_input_file(options.checkpoint, "checkpoint")
    check_output_folder(options.output_dir, "output folder", options.overwrite)
    if options.lora is not None:
        check_integer("--lora", options.lora, 1)  # a LoRA rank
