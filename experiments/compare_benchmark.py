"""Measure one `sfd compare` run against the comparison targets and print its table.

    python experiments/compare_benchmark.py --output-dir compare-benchmark -- --threads 1
    python experiments/compare_benchmark.py --output-dir compare-35 -- --forget 3 --override 5

Runs `sfd compare` once (every method unless `--methods` is among the extra flags), reads its
metrics.json and checks: SFD and two-stage SFD reach UA >= 95 % in fewer training seconds than ESD
and SalUn, at equal or better remain accuracy and remain FID; prints the table in README form with
the load average at the start and the end (the timings are only comparable on a quiet machine);
writes benchmark.json beside the report.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sfd.cli import main as sfd_main

FAST = ("sfd", "sfd_two_stage")
FINE_TUNED = ("esd", "salun")


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("compare-benchmark"))
    parser.add_argument("compare_args", nargs="*", help="extra `sfd compare` flags (after --)")
    options = parser.parse_args()
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
    load_end = os.getloadavg()
    print(f"wall {wall / 60:.1f} min; load average at start {load_start}, at the end {load_end}")
    record = {
        "command": ["sfd", *command],
        "wall_seconds": wall,
        "load_average_start": load_start,
        "load_average_end": load_end,
        "phase_seconds": metrics["protocol"]["phase_seconds"],
        "targets": [{"target": n, "measured": m, "met": ok} for n, m, ok in rows],
    }
    (options.output_dir / "benchmark.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


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
