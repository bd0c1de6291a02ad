"""Wall time of `sfd` commands that must answer at once: help, version, path errors.

    python experiments/cli_startup.py [--repeats 5] [--json runs/cli_startup/cli_startup.json]
    python experiments/cli_startup.py --page-from runs/cli_startup/cli_startup.json

Each command runs in a fresh `python -m sfd.cli` process; the table gives the median and the
fastest of the repeats, and which heavy modules the process had imported when it answered.
Writes the JSON record and the page docs/results/cli_startup.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
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

VERBS = ["teacher", "export", "sample", "demo", "compare", "eval", "eval-text", "teacher-text",
         "demo-text", "fit"]  # fmt: skip
COMMANDS = [
    ["--help"],
    ["--version"],
    ["export", "missing.ckpt", "out"],
    ["sample", "missing", "--output", "grid.png"],
    ["eval", "missing", "--classifier", "c", "--forget", "0"],
    ["fit", "-c", "missing.yaml"],
    ["teacher", "-c", "missing.yaml"],
    *([verb, "--help"] for verb in VERBS),  # `sfd fit --help` last: it imports what it describes
]
FAST_SECONDS = 1.0  # what "answers at once" means here
PROBE = (
    "import sys, runpy\n"
    "sys.argv = ['sfd'] + sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_module('sfd.cli', run_name='__main__')\n"
    "except SystemExit:\n"
    "    pass\n"
    "sys.stderr.write('HEAVY=' + ','.join(m for m in ('torch', 'lightning', 'diffusers')"
    " if m in sys.modules) + '\\n')\n"
)
PROBE_THREADS = 1  # OMP_NUM_THREADS of the probes


def measure(repeats: int) -> list[dict[str, Any]]:
    """Median and fastest seconds of each command in `COMMANDS`, and its heavy imports."""
    env = {**os.environ, "OMP_NUM_THREADS": str(PROBE_THREADS)}
    rows = []
    with tempfile.TemporaryDirectory() as cwd:
        for command in COMMANDS:
            times, heavy = [], ""
            for _ in range(repeats):
                start = time.perf_counter()
                result = subprocess.run(
                    [sys.executable, "-c", PROBE, *command],
                    cwd=cwd, env=env, capture_output=True, text=True,
                )  # fmt: skip
                times.append(time.perf_counter() - start)
                heavy = result.stderr.rsplit("HEAVY=", 1)[-1].strip()
            rows.append(
                {
                    "command": "sfd " + " ".join(command),
                    "median_seconds": round(statistics.median(times), 3),
                    "fastest_seconds": round(min(times), 3),
                    "heavy_modules": heavy.split(",") if heavy else [],
                }
            )
    return rows


def table(record: dict[str, Any]) -> str:
    """The commands' timings as a markdown table."""
    return markdown_table(
        ("command", "median s", "fastest s", "heavy modules imported"),
        [
            (
                f"`{row['command']}`",
                f"{row['median_seconds']:.2f}",
                f"{row['fastest_seconds']:.2f}",
                ",".join(row["heavy_modules"]) or "none",
            )
            for row in record["commands"]
        ],
    )


def verdict(record: dict[str, Any]) -> str:
    """Which commands answered within `FAST_SECONDS` (median) without a heavy import."""
    slow = [
        row["command"]
        for row in record["commands"]
        if row["command"] != "sfd fit --help"
        and (row["median_seconds"] >= FAST_SECONDS or row["heavy_modules"])
    ]
    fast = len(record["commands"]) - len(slow) - ("sfd fit --help" in _names(record))
    if not slow:
        return (
            f"All {fast} commands other than `sfd fit --help` answered in under "
            f"{FAST_SECONDS:g} s (median) without importing torch, Lightning or diffusers."
        )
    return f"Slower than {FAST_SECONDS:g} s or importing a heavy module: " + ", ".join(
        f"`{name}`" for name in slow
    )


def _names(record: dict[str, Any]) -> list[str]:
    return [row["command"] for row in record["commands"]]


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/cli_startup.md from a record of `main`."""
    return write_page(
        "cli_startup",
        "Start-up time of `sfd` commands",
        record["run"]["command"],
        json_file,
        record,
        {
            "Wall time per command": (
                f"{record['repeats']} repeats, each a fresh `python -m sfd.cli` process with "
                f"OMP_NUM_THREADS={PROBE_THREADS}. Help, version and path errors must answer "
                "before torch is imported, in under a second; `sfd fit --help` imports the "
                "classes it describes (`sfd teacher --help` reads its options from the source; "
                "`sfd teacher --help-all`, Lightning's full page, imports them too).\n\n"
                + table(record)
                + "\n\n"
                + verdict(record)
            )
        },
        results_dir,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="runs/cli_startup/cli_startup.json", help="the record")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if options.page_from:
        print(write_results_page(read_record(options.page_from), options.page_from))
        return
    load_start = os.getloadavg()
    print(f"load average: {load_start[0]:.2f}; {options.repeats} repeats\n")
    commands = measure(options.repeats)
    context = run_context(command_line(__file__, argv), load_start, PROBE_THREADS)
    record = {"run": context, "repeats": options.repeats, "commands": commands}
    print(table(record))
    save_record(record, options.json)
    if not options.no_page:
        print(write_results_page(record, options.json))


if __name__ == "__main__":
    main()
