"""Measure `sfd demo` against the digits targets: UA, remain accuracy, FID ratios, curve, wall time.

    python experiments/digits_benchmark.py --output-dir demo-benchmark [-- extra `sfd demo` flags]

Runs the demo once (timed wall clock; teacher, classifier and stage-1 cache as configured), reads
its metrics.json and prints every target with its measured value and the load average; writes
benchmark.json beside the report. The wall-time budget is 20 minutes for a fresh run and 10 when
the teacher and stage 1 came from the cache; on a shared machine compare it with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from sfd.cli import main as sfd_main


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
        ("SFD UA >= 99 %", f"{100 * sfd['ua']:.2f} %", sfd["ua"] >= 0.99),
        (
            "SFD remain accuracy within 2 points of the teacher's",
            f"{100 * sfd['remain_accuracy']:.2f} % vs {100 * teacher['remain_accuracy']:.2f} %",
            sfd["remain_accuracy"] >= teacher["remain_accuracy"] - 0.02,
        ),
        (
            f"SFD remain FID <= 1.2x teacher's DDIM-{teacher['nfe']} FID",
            f"{sfd['fid_remain']:.2f} vs {teacher['fid_remain']:.2f} ({sfd_ratio:.2f}x)",
            sfd_ratio <= 1.2,
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


def run(output_dir: Path, demo_args: list[str]) -> int:
    load_start = os.getloadavg()
    start = time.perf_counter()
    status = sfd_main(["demo", "--output-dir", str(output_dir), *demo_args])
    wall = time.perf_counter() - start
    if status != 0:
        print(f"sfd demo failed with status {status}", file=sys.stderr)
        return status
    metrics = json.loads((output_dir / "metrics.json").read_text())
    rows = targets(metrics, wall)
    for name, measured, met in rows:
        print(f"[{'PASS' if met else 'FAIL'}] {name}: {measured}")
    print(f"phase seconds: {metrics['protocol']['phase_seconds']}")
    print(f"load average at start {load_start}, at the end {os.getloadavg()}")
    record = {
        "command": ["sfd", "demo", "--output-dir", str(output_dir), *demo_args],
        "wall_seconds": wall,
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "phase_seconds": metrics["protocol"]["phase_seconds"],
        "targets": [{"target": n, "measured": m, "met": ok} for n, m, ok in rows],
    }
    (output_dir / "benchmark.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("demo-benchmark"))
    parser.add_argument("demo_args", nargs="*", help="extra `sfd demo` flags (after --)")
    options = parser.parse_args()
    sys.exit(run(options.output_dir, options.demo_args))
