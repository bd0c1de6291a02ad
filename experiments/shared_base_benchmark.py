"""Shared-base SFD (adapters on the one frozen teacher) beside full fine-tuning, class or text.

    python experiments/shared_base_benchmark.py --output-dir runs/shared-base-benchmark \
        [--benchmark class] [--rank 16] [-- extra `sfd demo` flags, e.g. --teacher-cache DIR]
    python experiments/shared_base_benchmark.py --benchmark text --output-dir runs/sb-text \
        [-- extra `sfd demo-text` flags, e.g. --data digits --forget seven --override one]
    python experiments/shared_base_benchmark.py --page-from runs/shared-base-benchmark/shared_base.json

Runs the class digits demo (`sfd demo`) or the text demo (`sfd demo-text`) twice with the same
teacher and classifier cache: full copies (the demo as it is: SFD from the stage-1 generator and
fake score) and `--model.adapters.rank RANK` (the generator, fake score and EMA as adapters of the
teacher's network, the other settings those of configs/shared_base.yaml, in both stages: stage 1
distils as adapters, cached as adapters beside the full copies' stage 1, and stage 2 continues
from them, so the whole run holds one copy of the base).
Reports, for each, UA, remain accuracy, remain FID over the teacher's remain FID, stage-2 training
seconds per iteration and the number of trained weights (from the export's training record);
writes shared_base.json in the output folder and the page docs/results/shared_base.md (class) or
docs/results/shared_base_text.md (text).
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

MODES = ("full copies", "shared base")
# benchmark -> (sfd command, results page, page title)
BENCHMARKS = {
    "class": ("demo", "shared_base", "Shared base (adapters) beside full fine-tuning: digits"),
    "text": (
        "demo-text",
        "shared_base_text",
        "Shared base (adapters) beside full fine-tuning: text-to-image digits",
    ),
}


def demo_row(folder: Path, wall: float) -> dict[str, Any]:
    """What the comparison keeps of one demo run (a class or a text demo's report folder)."""
    metrics = json.loads((folder / "metrics.json").read_text())
    teacher, sfd = metrics["teacher"], metrics["sfd"]
    stage2 = metrics["protocol"]["two_stage"]
    text = "forget_train" in sfd  # the text demo's forget sets: training prompts, paraphrases
    export = json.loads((folder / "generator" / "sfd_export.json").read_text())
    row = {
        "ua": sfd["forget_train"]["ua"] if text else sfd["ua"],
        "remain_accuracy": sfd["remain_accuracy"],
        "teacher_remain_accuracy": teacher["remain_accuracy"],
        "fid_remain": sfd["fid_remain"],
        "teacher_fid_remain": teacher["fid_remain"],
        "fid_ratio": sfd["fid_remain"] / teacher["fid_remain"],
        # the iterations that ran (the completion rule may stop stage 2 before max_steps)
        "iterations": export["training"]["global_step"],
        "seconds_per_iteration": stage2["stage2_training_seconds"]
        / max(export["training"]["global_step"], 1),
        "trained_weights": sum(export["training"]["trained_weights"].values()),
        "adapters": export["training"].get("adapters"),
        "wall_seconds": wall,
    }
    if text:
        row["ua_paraphrases"] = sfd["forget_paraphrases"]["ua"]
    return row | stage_one_row(metrics)


def stage_one_row(metrics: dict[str, Any]) -> dict[str, float]:
    """The stage-1 generator's (distilled without forgetting) remain FID ratio and accuracy."""
    distilled, teacher = metrics["distilled_without_forgetting"], metrics["teacher"]
    return {
        "stage1_fid_ratio": distilled["fid_remain"] / teacher["fid_remain"],
        "stage1_remain_accuracy": distilled["remain_accuracy"],
    }


def complete_rows(record: dict[str, Any], json_file: str) -> None:
    """Read every row again from the demo folder the record names (its metrics.json and export),
    keeping the row's wall seconds, and save the record back: a record written before a column
    existed gets it. Rows whose folder is gone stay as they are."""
    changed = False
    for mode, row in record["modes"].items():
        command = record["commands"].get(mode, [])
        if "--output-dir" not in command:
            continue
        folder = Path(command[command.index("--output-dir") + 1])
        if (folder / "metrics.json").is_file():
            fresh = demo_row(folder, row["wall_seconds"])
            changed |= fresh != row
            record["modes"][mode] = fresh
    if changed:
        save_record(record, json_file)


def run(options: argparse.Namespace, demo_args: list[str], argv: list[str]) -> int:
    load_start = os.getloadavg()
    rows: dict[str, Any] = {}
    commands = {}
    tool = BENCHMARKS[options.benchmark][0]
    for mode in MODES:
        folder = options.output_dir / mode.replace(" ", "_")
        extra = ["--model.adapters.rank", str(options.rank)] if mode == "shared base" else []
        command = [tool, "--output-dir", str(folder), *demo_args, *extra]
        start = time.perf_counter()
        status = sfd_main(command)
        if status != 0:
            print(f"sfd {tool} ({mode}) failed with status {status}", file=sys.stderr)
            return status
        rows[mode] = demo_row(folder, time.perf_counter() - start)
        commands[mode] = ["sfd", *command]
        print(mode, json.dumps(rows[mode]))
    record = {
        "run": run_context(command_line(__file__, argv), load_start),
        "benchmark": options.benchmark,
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
    """docs/results/shared_base.md (class) or shared_base_text.md (text) from a record."""
    benchmark = record.get("benchmark", "class")
    _, page, title = BENCHMARKS[benchmark]
    modes = record["modes"]
    text = benchmark == "text"
    stage1 = all("stage1_fid_ratio" in m for m in modes.values())
    table = markdown_table(
        (
            "mode",
            "UA",
            *(["UA paraphrases"] if text else []),
            "remain accuracy (teacher)",
            "remain FID (teacher)",
            "FID ratio",
            *(["stage-1 FID ratio (remain accuracy)"] if stage1 else []),
            "s / iteration",
            "iterations",
            "trained weights",
        ),
        [
            (
                mode,
                f"{100 * m['ua']:.2f} %",
                *([f"{100 * m['ua_paraphrases']:.2f} %"] if text else []),
                f"{100 * m['remain_accuracy']:.2f} % ({100 * m['teacher_remain_accuracy']:.2f} %)",
                f"{m['fid_remain']:.2f} ({m['teacher_fid_remain']:.2f})",
                f"{m['fid_ratio']:.2f}",
                *(
                    [f"{m['stage1_fid_ratio']:.2f} ({100 * m['stage1_remain_accuracy']:.2f} %)"]
                    if stage1
                    else []
                ),
                f"{m['seconds_per_iteration']:.3f}",
                m["iterations"],
                f"{m['trained_weights']:,}",
            )
            for mode, m in modes.items()
        ],
    )
    adapters = modes["shared base"].get("adapters") or {"kind": "lora", "rank": record["rank"]}
    kind = {"lora": "LoRA", "dora": "DoRA", "lokr": "LoKr"}.get(adapters["kind"], adapters["kind"])
    described = f"{kind} rank {adapters['rank']}" + (
        f", alpha {adapters['alpha']:g}, adapted layers {', '.join(adapters['targets'])}"
        if "alpha" in adapters
        else ""
    )
    timing = (
        "stage-2 training time with the forgetting curve's few evaluations"
        if text
        else "stage-2 training time (forgetting-curve evaluations excluded)"
    )
    runs = "\n\n".join(
        f"{mode}:\n\n```bash\n{shlex.join(command)}\n```"
        for mode, command in record["commands"].items()
    )
    return write_page(
        page,
        title,
        record["run"]["command"],
        json_file,
        record,
        {
            "Comparison": table
            + "\n\nBoth modes run the demo's two-stage SFD: stage 1 distils without forgetting, "
            "stage 2 forgets starting from stage 1's generator and fake score. Full copies train "
            f"three networks in both stages; the shared base trains adapters ({described}) of the "
            "one frozen teacher network in both stages, and its stage 2 starts from the stage-1 "
            "adapters (cached as adapters, not the base). The stage-1 column is that stage's "
            "generator (distilled without forgetting, the EMA stage 2 starts from) on the same "
            "evaluation. The teacher's remain FID is its "
            "multi-step sampler's. Seconds per iteration are "
            f"{timing} on a shared machine: read them with the load average. Trained weights: "
            "generator + fake score (the EMA adds as many again, untrained). Every setting is "
            "on the demo command lines below (a reduced run where they lower the demo's "
            "defaults).",
            "The demo runs": runs,
        },
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    own, demo_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("shared-base-benchmark"))
    parser.add_argument("--benchmark", choices=tuple(BENCHMARKS), default="class")
    parser.add_argument("--rank", type=int, default=16, help="adapter rank of the shared base")
    add_page_arguments(parser)
    options = parser.parse_args(own)
    if options.page_from:
        record = read_record(options.page_from)
        complete_rows(record, options.page_from)
        print(write_results_page(record, options.page_from))
        return 0
    return run(options, demo_args, argv)


if __name__ == "__main__":
    sys.exit(main())
