"""Wall time of `sfd` commands that must answer at once: help, version, path errors.

    python experiments/cli_startup.py [--repeats 5]

Each command runs in a fresh `python -m sfd.cli` process; the table gives the median and the
fastest of the repeats, and which heavy modules the process had imported when it answered.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

COMMANDS = [
    ["--help"],
    ["--version"],
    ["export", "missing.ckpt", "out"],
    ["sample", "missing", "--output", "grid.png"],
    ["fit", "-c", "missing.yaml"],
    ["export", "--help"],
    ["fit", "--help"],
]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    repeats = parser.parse_args().repeats
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    print(f"load average: {os.getloadavg()[0]:.2f}; {repeats} repeats\n")
    print("| command | median s | fastest s | heavy modules imported |")
    print("|---|---|---|---|")
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
            shown = "sfd " + " ".join(command)
            print(
                f"| `{shown}` | {statistics.median(times):.2f} | {min(times):.2f} | {heavy or 'none'} |"
            )


if __name__ == "__main__":
    main()
