"""Measure one `sfd compare` run against the comparison targets and print its table.

    python experiments/compare_benchmark.py --output-dir compare-benchmark -- --threads 1
    python experiments/compare_benchmark.py --output-dir compare-35 -- --forget 3 --override 5

Runs `sfd compare` once (every method unless `--methods` is among the extra flags), reads its
metrics.json and checks: SFD and two-stage SFD reach UA >= 95 % in fewer training seconds than ESD
and SalUn, at equal or better remain accuracy and remain FID; prints the table in README form with
the load average at the start and the end (the timings are only comparable on a quiet machine);
writes benchmark.json beside the report and, unless `--no-page`, the page
docs/results/compare.md.

    python experiments/compare_benchmark.py --page-from compare-benchmark/benchmark.json
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
    number,
    read_record,
    run_context,
    save_record,
    write_page,
)

from sfd.cli import main as sfd_main

FAST = ("sfd", "sfd_two_stage")
FINE_TUNED = ("esd", "salun")
MODEL_KEYS = (
    "nfe",
    "ua",
    "forget_as_override",
    "remain_accuracy",
    "fid_remain",
    "images_per_second",
)
METHOD_KEYS = ("title", "iterations", "train_seconds", "cached", "ua95")


def targets(metrics: dict) -> list[tuple[str, str, bool]]:
    """(target, measured, met) rows for every SFD variant against every fine-tuning baseline."""
    methods = metrics["methods"]
    rows = []
    for fast in (key for key in FAST if key in methods):
        for slow in (key for key in FINE_TUNED if key in methods):
            a, b = methods[fast], methods[slow]
            sa, sb = a["ua95"]["seconds"], b["ua95"]["seconds"]
            faster = sa is not None and (sb is None or sa < sb)
            rows.append(
                (
                    f"{fast} reaches UA >= 95 % sooner than {slow}",
                    f"{_seconds(sa)} vs {_seconds(sb)}",
                    faster,
                )
            )
            rows.append(
                (
                    f"{fast} remain accuracy >= {slow}'s",
                    f"{100 * a['remain_accuracy']:.1f} % vs {100 * b['remain_accuracy']:.1f} %",
                    a["remain_accuracy"] >= b["remain_accuracy"],
                )
            )
            rows.append(
                (
                    f"{fast} remain FID <= {slow}'s",
                    f"{a['fid_remain']:.2f} vs {b['fid_remain']:.2f}",
                    a["fid_remain"] <= b["fid_remain"],
                )
            )
    return rows


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"


def models(metrics: dict) -> dict[str, dict[str, Any]]:
    """The teacher's and every method's numbers of the main table, by key."""
    rows = {
        "teacher": {"title": "teacher (DDIM)", **{k: metrics["teacher"][k] for k in MODEL_KEYS}}
    }
    for key, method in metrics["methods"].items():
        rows[key] = {k: method[k] for k in (*METHOD_KEYS, *MODEL_KEYS)}
        rows[key]["stage1_seconds"] = method["extra"].get("stage1_seconds")
        rows[key]["traced"] = bool(method["curve"])  # the forgetting curve was evaluated
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("compare-benchmark"))
    parser.add_argument("compare_args", nargs="*", help="extra `sfd compare` flags (after --)")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if options.page_from:
        print(write_results_page(read_record(options.page_from), options.page_from))
        return 0
    command = ["compare", "--output-dir", str(options.output_dir), *options.compare_args]
    load_start = os.getloadavg()
    start = time.perf_counter()
    status = sfd_main(command)
    wall = time.perf_counter() - start
    if status != 0:
        print(f"sfd compare failed with status {status}", file=sys.stderr)
        return status
    metrics = json.loads((options.output_dir / "metrics.json").read_text())
    print("\n".join(report_table(options.output_dir / "report.md")))
    rows = targets(metrics)
    for name, measured, met in rows:
        print(f"[{'PASS' if met else 'FAIL'}] {name}: {measured}")
    context = run_context(command_line(__file__, argv), load_start)
    load_end = context["machine"]["load_average_end"]
    print(f"wall {wall / 60:.1f} min; load average at start {load_start}, at the end {load_end}")
    record = {
        "run": context,
        "command": ["sfd", *command],
        "wall_seconds": wall,
        "load_average_start": context["machine"]["load_average_start"],
        "load_average_end": load_end,
        "phase_seconds": metrics["protocol"]["phase_seconds"],
        "targets": [{"target": n, "measured": m, "met": ok} for n, m, ok in rows],
        "forget": metrics["forget"],
        "override": metrics["override"],
        "models": models(metrics),
    }
    json_file = options.output_dir / "benchmark.json"
    save_record(record, json_file)
    if not options.no_page:
        print(write_results_page(record, str(json_file)))
    return 0


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/compare.md from a benchmark.json record."""
    table = []
    for key, m in record["models"].items():
        method = key != "teacher"
        seconds = None
        if method:
            seconds = f"{m['train_seconds']:.0f} s" + (" (cached)" if m["cached"] else "")
            if m.get("stage1_seconds") is not None:
                seconds += f" + stage 1 {m['stage1_seconds']:.0f} s"
        table.append(
            (
                m["title"],
                m["nfe"],
                _percent(m["ua"]),
                _percent(m["forget_as_override"]),
                _percent(m["remain_accuracy"]),
                number(m["fid_remain"]),
                number(m["images_per_second"], 1),
                m["iterations"] if method else None,
                seconds,
                _ua95(m) if method else None,
            )
        )
    return write_page(
        "compare",
        f"Forgetting class {record['forget']} (override {record['override']}): methods compared",
        record["run"]["command"],
        json_file,
        record,
        {
            "The comparison run": (
                f"```bash\n{shlex.join(record['command'])}\n```\n\n"
                f"Wall time {record['wall_seconds'] / 60:.1f} min. Training time is the wall time "
                "of `Trainer.fit` without the forgetting-curve evaluations; two-stage SFD lists "
                "its stage 2, plus the (cached) stage 1 it starts from."
            ),
            "Models": markdown_table(
                (
                    "model",
                    "NFE",
                    "UA",
                    "forget → override",
                    "remain accuracy",
                    "remain FID",
                    "images/s",
                    "iterations",
                    "training time",
                    "UA ≥ 95 % at",
                ),
                table,
            ),  # fmt: skip
            "Targets": markdown_table(
                ("target", "measured", "met"),
                [
                    (t["target"], t["measured"], "yes" if t["met"] else "no")
                    for t in record["targets"]
                ],
            ),
            "Phase seconds": markdown_table(
                ("phase", "seconds"),
                [(phase, f"{s:.1f}") for phase, s in record["phase_seconds"].items()],
            ),
        },
        results_dir,
    )


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f} %"


def _ua95(model: dict[str, Any]) -> str:
    ua95 = model["ua95"]
    if not model["traced"]:
        return "not traced"
    if ua95.get("iteration") is None:
        return "never"
    return f"it. {ua95['iteration']} / {ua95['seconds']:.0f} s"


def report_table(report: Path) -> list[str]:
    """The main table of report.md (its first block of `|` lines)."""
    lines = report.read_text().splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[first:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return table


if __name__ == "__main__":
    sys.exit(main())
