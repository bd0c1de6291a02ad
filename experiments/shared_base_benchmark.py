"""Shared-base SFD (adapters on the one frozen teacher) beside full fine-tuning on the digits demo.

    python experiments/shared_base_benchmark.py --output-dir shared-base-benchmark \
        --rank 16 [-- extra `sfd demo` flags, e.g. --teacher-cache DIR --threads 1]
    python experiments/shared_base_benchmark.py --page-from shared-base-benchmark/shared_base.json

Runs `sfd demo` twice with the same teacher, classifier and stage-1 cache: full copies (the demo
as it is: SFD from the stage-1 generator and fake score) and `--model.adapters.rank RANK` (the
generator, fake score and EMA as LoRA adapters of the teacher's network, starting at the teacher;
stage 1 stays full copies and gives the distilled-without-forgetting row). Reports, for each, UA,
remain accuracy, remain FID over the teacher's (DDIM) remain FID, stage-2 training seconds per
iteration and the number of trained weights; writes shared_base.json in the output folder and the
page docs/results/shared_base.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from results_page import (
    add_page_arguments,
    command_line,
    markdown_table,
    read_record,
    run_context,
    save_record,
    write_page,
)

from sfd.cli import main as sfd_main
from sfd.teachers import PretrainedVPTeacher
from sfd.teachers.adapters import AdapterSettings, shared_base_views

MODES = ("full copies", "shared base")


def demo_row(folder: Path, wall: float, rank: int | None) -> dict[str, Any]:
    """What the comparison keeps of one demo run."""
    metrics = json.loads((folder / "metrics.json").read_text())
    teacher, sfd = metrics["teacher"], metrics["sfd"]
    stage2 = metrics["protocol"]["two_stage"]
    return {
        "ua": sfd["ua"],
        "remain_accuracy": sfd["remain_accuracy"],
        "teacher_remain_accuracy": teacher["remain_accuracy"],
        "fid_remain": sfd["fid_remain"],
        "teacher_fid_remain": teacher["fid_remain"],
        "fid_ratio": sfd["fid_remain"] / teacher["fid_remain"],
        "iterations": stage2["stage2_iterations"],
        "seconds_per_iteration": stage2["stage2_training_seconds"]
        / max(stage2["stage2_iterations"], 1),
        "trained_weights": trained_weights(metrics, rank),
        "wall_seconds": wall,
    }


def trained_weights(metrics: dict[str, Any], rank: int | None) -> int:
    """Generator + fake-score weights a run optimises: two copies of the teacher's network, or
    the two adapters of rank `rank` on it."""
    teacher = PretrainedVPTeacher(metrics["protocol"]["teacher"]["folder"])
    if rank is None:
        return 2 * sum(p.numel() for p in teacher.parameters())
    views = shared_base_views(AdapterSettings(rank=rank), teacher, ema=False)
    return sum(p.numel() for view in views.values() for p in view.parameters())


def run(options: argparse.Namespace, demo_args: list[str], argv: list[str]) -> int:
    load_start = os.getloadavg()
    rows: dict[str, Any] = {}
    commands = {}
    for mode in MODES:
        folder = options.output_dir / mode.replace(" ", "_")
        extra = ["--model.adapters.rank", str(options.rank)] if mode == "shared base" else []
        command = ["demo", "--output-dir", str(folder), *demo_args, *extra]
        start = time.perf_counter()
        status = sfd_main(command)
        if status != 0:
            print(f"sfd demo ({mode}) failed with status {status}", file=sys.stderr)
            return status
        rank = options.rank if mode == "shared base" else None
        rows[mode] = demo_row(folder, time.perf_counter() - start, rank)
        commands[mode] = ["sfd", *command]
        print(mode, json.dumps(rows[mode]))
    record = {
        "run": run_context(command_line(__file__, argv), load_start),
        "rank": options.rank,
        "commands": commands,
        "modes": rows,
    }
    json_file = options.output_dir / "shared_base.json"
    save_record(record, json_file)
    if not options.no_page:
        print(write_results_page(record, str(json_file)))
    return 0


def write_results_page(record: dict[str, Any], json_file: str) -> Path:
    """docs/results/shared_base.md from a shared_base.json record."""
    modes = record["modes"]
    table = markdown_table(
        (
            "mode",
            "UA",
            "remain accuracy (teacher)",
            "remain FID (teacher DDIM)",
            "FID ratio",
            "s / iteration",
            "iterations",
            "trained weights",
        ),
        [
            (
                mode,
                f"{100 * m['ua']:.2f} %",
                f"{100 * m['remain_accuracy']:.2f} % ({100 * m['teacher_remain_accuracy']:.2f} %)",
                f"{m['fid_remain']:.2f} ({m['teacher_fid_remain']:.2f})",
                f"{m['fid_ratio']:.2f}",
                f"{m['seconds_per_iteration']:.3f}",
                m["iterations"],
                f"{m['trained_weights']:,}",
            )
            for mode, m in modes.items()
        ],
    )
    runs = "\n\n".join(
        f"{mode}:\n\n```bash\n{shlex.join(command)}\n```"
        for mode, command in record["commands"].items()
    )
    return write_page(
        "shared_base",
        "Shared base (adapters) beside full fine-tuning: digits",
        record["run"]["command"],
        json_file,
        record,
        {
            "Comparison": table
            + "\n\nFull copies run the demo's two-stage SFD (from the stage-1 generator and fake "
            "score); the shared base's adapters (LoRA rank "
            f"{record['rank']}) start at the teacher, so they forget and distil in the same "
            "stage-2 iterations. Seconds per iteration are stage-2 training time (forgetting-"
            "curve evaluations excluded) on a shared machine: read them with the load average. "
            "Trained weights: generator + fake score (the EMA adds as many again, untrained); on "
            "this small UNet a rank-16 LoRA of its 32/64-channel convolutions is a large share "
            "of the network, where on Stable Diffusion-sized networks it is a few per cent. Every "
            "setting is on the demo command lines below (a reduced run where they lower the "
            "demo's defaults).",
            "The demo runs": runs,
        },
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own, demo_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("shared-base-benchmark"))
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of the shared base")
    add_page_arguments(parser)
    options = parser.parse_args(own)
    if options.page_from:
        print(write_results_page(read_record(options.page_from), options.page_from))
        return 0
    return run(options, demo_args, argv)


if __name__ == "__main__":
    sys.exit(main())
