"""Measure `sfd demo` against the digits targets: UA, remain accuracy, FID ratios, curve, wall time.

    python experiments/digits_benchmark.py --output-dir demo-benchmark [-- extra `sfd demo` flags]
    python experiments/digits_benchmark.py --page-from demo-benchmark/benchmark.json

Runs the demo once (timed wall clock; teacher, classifier and stage-1 cache as configured), reads
its metrics.json and prints every target with its measured value and the load average; writes
benchmark.json beside the report and, unless `--no-page`, the page docs/results/digits.md. The
wall-time budget is 20 minutes for a fresh run and 10 when the teacher and stage 1 came from the
cache; on a shared machine compare it with the load average.
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
    fill_marked_block,
    markdown_table,
    number,
    read_record,
    run_context,
    save_record,
    write_page,
)

from sfd.apps.harness.report_folder import MODEL_TITLES
from sfd.apps.harness.targets import (
    CLASS_FID_RATIO,
    ONE_SIDED,
    UA_TRAIN,
    not_below_teacher,
    points_below,
)
from sfd.cli import main as sfd_main

MODEL_KEYS = ("nfe", "ua", "remain_accuracy", "fid_remain", "images_per_second")


def targets(metrics: dict, wall_seconds: float) -> list[tuple[str, str, bool]]:
    """(target, measured, met) rows."""
    teacher, sfd = metrics["teacher"], metrics["sfd"]
    distilled = metrics["distilled_without_forgetting"]
    protocol = metrics["protocol"]
    curve = metrics["forgetting_curve_summary"]
    cached = (
        protocol["teacher"]["reused_from_cache"]
        and protocol["two_stage"]["stage1_reused_from_cache"]
    )
    budget = 10 * 60 if cached else 20 * 60
    sfd_ratio = sfd["fid_remain"] / teacher["fid_remain"]
    distilled_ratio = distilled["fid_remain"] / teacher["fid_remain"]
    first = curve["first_fraction"]
    return [
        (f"SFD UA >= {100 * UA_TRAIN:.0f} %", f"{100 * sfd['ua']:.2f} %", sfd["ua"] >= UA_TRAIN),
        (
            f"SFD {points_below('remain')}",
            f"{100 * sfd['remain_accuracy']:.2f} % vs {100 * teacher['remain_accuracy']:.2f} %",
            not_below_teacher(sfd["remain_accuracy"], teacher["remain_accuracy"]),
        ),
        (
            f"SFD remain FID <= {CLASS_FID_RATIO:g}x teacher's DDIM-{teacher['nfe']} FID",
            f"{sfd['fid_remain']:.2f} vs {teacher['fid_remain']:.2f} ({sfd_ratio:.2f}x)",
            sfd_ratio <= CLASS_FID_RATIO,
        ),
        (
            f"SFD remain FID <= 1.0x teacher's DDIM-{teacher['nfe']} FID (one-step quality)",
            f"{sfd_ratio:.2f}x",
            sfd_ratio <= 1.0,
        ),
        (
            "distilled-without-forgetting remain FID <= 1.1x the teacher's",
            f"{distilled['fid_remain']:.2f} ({distilled_ratio:.2f}x)",
            distilled_ratio <= 1.1,
        ),
        ("one network evaluation per sample", f"NFE {sfd['nfe']}", sfd["nfe"] == 1),
        (
            "UA >= 95 % within the first half of stage 2",
            "never"
            if first is None
            else f"at {100 * first:.0f} % (it. {curve['first_iteration']})",
            first is not None and first <= 0.5,
        ),
        (
            f"wall time < {budget // 60} min ({'cached teacher + stage 1' if cached else 'fresh'})",
            f"{wall_seconds / 60:.1f} min",
            wall_seconds < budget,
        ),
    ]


def benchmark_record(metrics: dict, demo_command: list[str], wall: float) -> dict[str, Any]:
    """What benchmark.json keeps of a demo run: targets, models, curve, caches, phase seconds."""
    protocol = metrics["protocol"]
    return {
        "command": demo_command,
        "wall_seconds": wall,
        "phase_seconds": protocol["phase_seconds"],
        "targets": [{"target": n, "measured": m, "met": ok} for n, m, ok in targets(metrics, wall)],
        "models": {
            key: {name: metrics[key][name] for name in MODEL_KEYS}
            for key in MODEL_TITLES
            if key in metrics
        },
        "iterations": metrics["iterations"],
        "forgetting_curve_summary": metrics["forgetting_curve_summary"],
        "cached": {
            "teacher": protocol["teacher"]["reused_from_cache"],
            "classifier": protocol["classifier"]["reused_from_cache"],
            "stage1": protocol["two_stage"]["stage1_reused_from_cache"],
        },
    }


def run_demo(output_dir: Path, demo_args: list[str]) -> tuple[dict, list[str], float] | int:
    """Run `sfd demo` into `output_dir` (timed wall clock): (its metrics.json, the command as
    typed, wall seconds), or the demo's exit status when it failed."""
    start = time.perf_counter()
    demo_command = ["demo", "--output-dir", str(output_dir), *demo_args]
    status = sfd_main(demo_command)
    wall = time.perf_counter() - start
    if status != 0:
        print(f"sfd demo failed with status {status}", file=sys.stderr)
        return status
    metrics = json.loads((output_dir / "metrics.json").read_text())
    return metrics, ["sfd", *demo_command], wall


def run(output_dir: Path, demo_args: list[str], argv: list[str], page: bool = True) -> int:
    """Run the demo, print the targets, write benchmark.json (and the page); the exit status."""
    load_start = os.getloadavg()
    demo = run_demo(output_dir, demo_args)
    if isinstance(demo, int):
        return demo
    metrics, demo_command, wall = demo
    record = benchmark_record(metrics, demo_command, wall)
    for row in record["targets"]:
        print(f"[{'PASS' if row['met'] else 'FAIL'}] {row['target']}: {row['measured']}")
    print(f"phase seconds: {record['phase_seconds']}")
    context = run_context(command_line(__file__, argv), load_start)
    load = context["machine"]
    print(
        f"load average at start {load['load_average_start']}, at the end {load['load_average_end']}"
    )
    # The keys benchmark.json had before pages existed stay at the top level.
    record = {
        "run": context,
        "load_average_start": load["load_average_start"],
        "load_average_end": load["load_average_end"],
        **record,
    }
    json_file = output_dir / "benchmark.json"
    save_record(record, json_file)
    if page:
        print(write_results_page(record, str(json_file)))
    return 0


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.2f} %"


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/digits.md from a benchmark.json record."""
    models = markdown_table(
        ("model", "NFE", "UA", "remain accuracy", "remain FID", "images/s"),
        [
            (
                title,
                m["nfe"],
                _percent(m["ua"]),
                _percent(m["remain_accuracy"]),
                number(m["fid_remain"]),
                number(m["images_per_second"], 1),
            )
            for key, title in MODEL_TITLES.items()
            if (m := record["models"].get(key)) is not None
        ],
    )
    curve = record["forgetting_curve_summary"]
    threshold = f"UA >= {100 * curve['ua_threshold']:.0f} %"
    if curve["first_iteration"] is None:
        reached = f"{threshold}: never reached in {record['iterations']} iterations."
    else:
        reached = (
            f"{threshold}: first reached at iteration {curve['first_iteration']} of "
            f"{record['iterations']} ({100 * curve['first_fraction']:.0f} % of stage 2)."
        )
    cached = record["cached"]
    if results_dir is None:  # the front door's headline table, beside its command
        fill_marked_block("digits", f"```bash\n{record['run']['command']}\n```\n\n{models}")
    return write_page(
        "digits",
        "Digits demo: SFD against its targets",
        record["run"]["command"],
        json_file,
        record,
        {
            "The demo run": (
                f"```bash\n{shlex.join(record['command'])}\n```\n\n"
                f"Wall time {record['wall_seconds'] / 60:.1f} min. From the cache: teacher "
                f"{_yes(cached['teacher'])}, classifier {_yes(cached['classifier'])}, stage 1 "
                f"{_yes(cached['stage1'])}."
            ),
            "Models": models,
            "Forgetting curve": reached,
            "Targets": markdown_table(
                ("target", "measured", "met"),
                [(t["target"], t["measured"], _yes(t["met"])) for t in record["targets"]],
            )
            + f"\n\n{ONE_SIDED}",
            "Phase seconds": markdown_table(
                ("phase", "seconds"),
                [(phase, f"{s:.1f}") for phase, s in record["phase_seconds"].items()],
            ),
        },
        results_dir,
    )


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("demo-benchmark"))
    parser.add_argument("demo_args", nargs="*", help="extra `sfd demo` flags (after --)")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if options.page_from:
        print(write_results_page(read_record(options.page_from), options.page_from))
        return 0
    return run(options.output_dir, options.demo_args, argv, page=not options.no_page)


if __name__ == "__main__":
    sys.exit(main())
