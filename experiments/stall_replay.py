"""The completion rule's "stalled" stop replayed on the judged forget rates of recorded runs.

    python experiments/stall_replay.py NAME=RUN/logs/.../metrics.csv [NAME=...] \
        [--json runs/stall/stall_replay.json]
    python experiments/stall_replay.py --page-from runs/stall/stall_replay.json

Each recorded run's CSV log holds, per probe of the completion rule, the judged forget rate
(`completion/forget_rate`) and, with the override floor, the override samples' rate
(`completion/override_rate`). The probes are fed in order to `UntilForgotten._decide` with the
rule's defaults (the override floor on where the run logged it) and the "forgotten" stop switched
off, so the table shows where the "stalled" stop alone would have ended each run, beside where it
ended. A run that finished as forgotten must not stall before its end. Writes the record and
docs/results/stall_replay.md.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

from results_page import add_page_arguments, markdown_table, measure_and_write, write_page

SAMPLES = 64  # the rule's default probe size: rates are shown as samples of 64


def read_probes(path: Path) -> list[dict[str, float]]:
    """The rule's probes in a Lightning CSV log, by iteration."""
    probes: dict[int, dict[str, float]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            if row.get("completion/forget_rate"):
                point = {
                    "iteration": int(row["step"]),
                    "forget_rate": float(row["completion/forget_rate"]),
                }
                if row.get("completion/override_rate"):
                    point["override_rate"] = float(row["completion/override_rate"])
                probes[point["iteration"]] = point | {"drift": 0.0}
    return [probes[i] for i in sorted(probes)]


def replay(probes: list[dict[str, float]]) -> dict[str, Any]:
    """Where the defaults' "stalled" stop ends a run with these probes (None: never)."""
    from sfd.training.completion import UntilForgotten

    floor = any("override_rate" in p for p in probes)
    rule = UntilForgotten(override_floor=floor, patience=10**9)  # "forgotten" never stops it
    stalled = None
    for index, point in enumerate(probes):
        if index and stalled is None and rule._decide(dict(point)) == "stalled":
            stalled = point["iteration"]
        rule.probes.append(point)
    settings = rule.summary()["settings"]
    return {
        "override_floor": floor,
        "probes": len(probes),
        "last_iteration": probes[-1]["iteration"],
        "last_rate": probes[-1]["forget_rate"],
        "stalled_at": stalled,
        "rate_at_stall": None
        if stalled is None
        else next(p["forget_rate"] for p in probes if p["iteration"] == stalled),
        "settings": {k: settings[k] for k in ("stall_window", "stall_drop", "stall_margin")},
    }


def summary(record: dict[str, Any]) -> str:
    return "\n".join(
        f"{run['name']}: ended at {run['last_iteration']}, stalled at {run['stalled_at']}"
        for run in record["runs"]
    )


def write_results_page(record: dict[str, Any], json_file: str) -> str:
    def samples(rate: float | None) -> str:
        return "–" if rate is None else f"{round(SAMPLES * rate)} of {SAMPLES}"

    rows = [
        (
            run["name"],
            run["probes"],
            f"{run['last_iteration']} ({samples(run['last_rate'])})",
            "never"
            if run["stalled_at"] is None
            else f"{run['stalled_at']} ({samples(run['rate_at_stall'])})",
            "yes" if run["probes"] >= 2 * run["settings"]["stall_window"] else "no",
            "yes" if run["override_floor"] else "no",
        )
        for run in record["runs"]
    ]
    settings = record["runs"][0]["settings"] if record["runs"] else {}
    path = write_page(
        "stall_replay",
        'The "stalled" stop replayed on recorded runs',
        record["run"]["command"],
        json_file,
        record,
        {
            "What is replayed": (
                "The judged forget rates the completion rule logged at each probe of a recorded run "
                "(`completion/forget_rate`, and `completion/override_rate` with the override floor), "
                "fed in order to the rule's decision with its defaults "
                f"({', '.join(f'{k} {v}' for k, v in settings.items())}; docs/method.md §8) and the "
                '"forgotten" stop off. Ended at: the run\'s last probe (where it stopped), with its '
                'judged forget samples. Stalled at: where "stalled" alone would have ended it. '
                "Could stall: whether the run has the 2 × stall_window probes the stop needs at "
                "all; a run with fewer says nothing about the settings."
            ),
            "Runs": markdown_table(
                ("run", "probes", "ended at", "stalled at", "could stall", "override floor"), rows
            ),
        },
    )
    return str(path)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", metavar="NAME=METRICS.csv")
    parser.add_argument("--json", default="runs/stall/stall_replay.json")
    parser.add_argument("--threads", type=int, help="torch threads")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    named = [entry.partition("=") for entry in options.runs]
    bad = [name for name, sep, path in named if not sep or not Path(path).is_file()]
    if not options.page_from and (bad or not named):
        parser.error(
            f"give NAME=METRICS.csv of existing files (not: {', '.join(bad) or 'none given'})"
        )

    probes = {name: read_probes(Path(path)) for name, _, path in named}
    empty = [path for name, _, path in named if not probes[name]]
    if not options.page_from and empty:
        parser.error(
            f"no completion/* probes in {', '.join(empty)}: give logs of runs with the rule"
        )

    def measure() -> dict[str, Any]:
        return {
            "runs": [{"name": name, "log": path, **replay(probes[name])} for name, _, path in named]
        }

    measure_and_write(options, argv, __file__, measure, summary, write_results_page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
