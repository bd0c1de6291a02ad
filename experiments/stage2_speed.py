"""Stage 2 speed per forget request: two-stage SFD (EMA and raw generator) against SalUn, per pair.

    python experiments/stage2_speed.py --output-dir runs/stage2-speed \
        [--pairs 0:1 3:5] [--json runs/stage2-speed/stage2_speed.json] -- --threads 1 --no-progress
    python experiments/stage2_speed.py --page-from runs/stage2-speed/stage2_speed.json

With stage 1 cached (distil once, serve many forget requests), stage 2 is what a user waits for.
For every forget → override pair the script runs one `sfd compare --methods sfd_two_stage,salun
--until-forgotten` (teacher, classifier and stage 1 from the cache, built if missing; extra
`sfd compare` flags after `--`) and reads its metrics.json: the shipped (EMA) generator's and the
raw generator's training seconds and iteration to classifier UA >= 95 % beside SalUn's (same run,
same machine), the remain FID of each, and where the completion rule stopped stage 2 (iterations,
reason, the judge's forget rate against the classifier's UA there). It checks the targets of the
stage-2 speed issue and the demo's remain-quality target (shipped remain FID ≤ 1.2× the teacher's,
recomputed from the numbers when a page is re-written from a record) and writes the JSON record and
docs/results/stage2_speed.md.
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

from sfd.apps.harness.targets import CLASS_FID_RATIO, UA_TRAIN, not_below_teacher, points_below
from sfd.cli import main as sfd_main

PAIRS = ("0:1", "3:5")
EMA, RAW, SALUN = "sfd_two_stage", "sfd_two_stage_raw", "salun"
MODEL_KEYS = ("ua", "remain_accuracy", "fid_remain", "remain_per_class", "iterations")
UA_AT_STOP = UA_TRAIN  # the completion rule's stop: UA at least this, and remain / neighbour
# (override class) accuracy at most 2 points below the teacher's (sfd.apps.harness.targets)
LAG = 10  # the EMA forgets as fast as the raw generator: within one curve interval of it
AGREEMENT = 0.05  # the judge's UA and the classifier's UA at the stop, at most this apart
FID_TARGET = 1.0  # the one-step quality issue's: at most the teacher's


def pair_of(text: str) -> tuple[int, int]:
    forget, _, override = text.partition(":")
    return int(forget), int(override)


def run_pair(output: Path, forget: int, override: int, extra: list[str]) -> dict[str, Any]:
    """One `sfd compare` of two-stage SFD (with the completion rule) and SalUn; its numbers."""
    folder = output / f"pair-{forget}-{override}"
    command = [
        "compare", "--output-dir", str(folder), "--methods", f"{EMA},{SALUN}",
        "--forget", str(forget), "--override", str(override), "--until-forgotten", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    status = sfd_main(command)
    wall = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"sfd compare failed with status {status}: {shlex.join(command)}")
    metrics = json.loads((folder / "metrics.json").read_text())
    methods = metrics["methods"]
    models = {"teacher": {k: metrics["teacher"][k] for k in MODEL_KEYS if k in metrics["teacher"]}}
    for key in (EMA, RAW, SALUN):
        m = methods[key]
        models[key] = {k: m[k] for k in MODEL_KEYS}
        models[key] |= {"ua95": m["ua95"], "train_seconds": m["train_seconds"]}
    completion = methods[EMA]["extra"].get("completion") or {}
    settings = metrics["protocol"]["sfd_settings"]  # the SFD preset (stage 2: its extra)
    raw_fid = {p["iteration"]: p.get("fid_remain") for p in methods[RAW].get("curve", [])}
    fid_curve = [
        {"iteration": p["iteration"], "ua": p["ua"], "fid_remain": p["fid_remain"],
         "fid_remain_raw": raw_fid.get(p["iteration"])}
        for p in methods[EMA].get("curve", []) if p.get("fid_remain") is not None
    ]  # fmt: skip
    return {
        "forget": forget,
        "override": override,
        "command": ["sfd", *command],
        "wall_seconds": wall,
        "max_steps": methods[EMA]["extra"].get("max_steps", settings["iterations"]),
        "ema": methods[EMA]["extra"]["ema"],
        "stage1_seconds": methods[EMA]["extra"].get("stage1_seconds"),
        "stage1_cached": methods[EMA]["extra"].get("stage1_cached"),
        "models": models,
        "completion": {
            "stop_reason": completion.get("stop_reason"),
            "iterations": completion.get("iterations"),
            "probe_seconds": completion.get("probe_seconds"),
            "last_probe": completion.get("last_probe", {}),
            "averaged_from": completion.get("averaged_from"),
            "average_after": completion.get("settings", {}).get("average_after"),
        },
        "fid_curve": fid_curve,
    }


def targets(pair: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(target, measured, met) rows of one pair."""
    m, done = pair["models"], pair["completion"]
    ema, raw, salun, teacher = m[EMA], m[RAW], m[SALUN], m["teacher"]
    name = f"{pair['forget']} → {pair['override']}"
    s_ema, s_salun = ema["ua95"]["seconds"], salun["ua95"]["seconds"]
    neighbour = str(pair["override"])
    n_sfd, n_teacher = ema["remain_per_class"][neighbour], teacher["remain_per_class"][neighbour]
    last = done["last_probe"]
    judge_ua = None if "forget_rate" not in last else 1 - last["forget_rate"]
    classifier_ua = last.get("classifier_ua")
    agree = judge_ua is not None and classifier_ua is not None
    return [
        (
            f"{name}: EMA reaches UA ≥ 95 % sooner than SalUn",
            f"{_seconds(s_ema)} vs {_seconds(s_salun)}",
            s_ema is not None and (s_salun is None or s_ema < s_salun),
        ),
        (
            f"{name}: EMA remain FID ≤ SalUn's",
            f"{ema['fid_remain']:.2f} vs {salun['fid_remain']:.2f}",
            ema["fid_remain"] <= salun["fid_remain"],
        ),
        (
            f"{name}: EMA remain FID ≤ {CLASS_FID_RATIO:g}× the teacher's (DDIM) at the stop",
            f"{ema['fid_remain']:.2f} vs {teacher['fid_remain']:.2f} "
            f"({ema['fid_remain'] / teacher['fid_remain']:.2f}×)",
            ema["fid_remain"] <= CLASS_FID_RATIO * teacher["fid_remain"],
        ),
        (
            f"{name}: EMA remain FID ≤ {FID_TARGET:g}× the teacher's (DDIM) at the stop",
            f"{ema['fid_remain']:.2f} vs {teacher['fid_remain']:.2f}",
            ema["fid_remain"] <= FID_TARGET * teacher["fid_remain"],
        ),
        (
            f"{name}: EMA reaches UA ≥ 95 % within {LAG} iterations of the raw generator",
            f"it. {ema['ua95']['iteration']} vs it. {raw['ua95']['iteration']}",
            ema["ua95"]["iteration"] is not None
            and raw["ua95"]["iteration"] is not None
            and ema["ua95"]["iteration"] <= raw["ua95"]["iteration"] + LAG,
        ),
        (
            f"{name}: the rule stops early",
            f"{done['stop_reason']} at it. {done['iterations']} of {pair['max_steps']}",
            done["stop_reason"] == "forgotten",
        ),
        (
            f"{name}: UA ≥ {100 * UA_AT_STOP:.0f} % at the stop",
            _percent(ema["ua"]),
            ema["ua"] >= UA_AT_STOP,
        ),
        (
            f"{name}: {points_below('remain')}",
            f"{_percent(ema['remain_accuracy'])} vs {_percent(teacher['remain_accuracy'])}",
            not_below_teacher(ema["remain_accuracy"], teacher["remain_accuracy"]),
        ),
        (
            f"{name}: {points_below(f'neighbour (class {neighbour})')}",
            f"{_percent(n_sfd)} vs {_percent(n_teacher)}",
            not_below_teacher(n_sfd, n_teacher),
        ),
        (
            f"{name}: judge and classifier UA within {100 * AGREEMENT:.0f} points at the stop",
            f"{_percent(judge_ua)} vs {_percent(classifier_ua)}" if agree else "no reading",
            agree and abs(judge_ua - classifier_ua) <= AGREEMENT,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/stage2-speed"))
    parser.add_argument("--pairs", nargs="+", default=list(PAIRS), help="forget:override pairs")
    parser.add_argument("--json", type=Path, help="record (default: OUTPUT_DIR/stage2_speed.json)")
    parser.add_argument("compare_args", nargs="*", help="extra `sfd compare` flags (after --)")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if options.page_from:
        print(write_results_page(read_record(options.page_from), options.page_from))
        return 0
    load_start = os.getloadavg()
    pairs = [run_pair(options.output_dir, *pair_of(p), options.compare_args) for p in options.pairs]
    for pair in pairs:
        pair["targets"] = [{"target": n, "measured": m, "met": ok} for n, m, ok in targets(pair)]
        for row in pair["targets"]:
            print(f"[{'PASS' if row['met'] else 'FAIL'}] {row['target']}: {row['measured']}")
    threads = _flag(options.compare_args, "--threads")
    record = {
        "run": run_context(command_line(__file__, argv), load_start, threads),
        "pairs": pairs,
    }
    json_file = options.json or options.output_dir / "stage2_speed.json"
    save_record(record, json_file)
    if not options.no_page:
        print(write_results_page(record, str(json_file)))
    return 0


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/stage2_speed.md from a record."""
    speed, stops, checks, fid_rows = [], [], [], []
    for pair in record["pairs"]:
        m, done = pair["models"], pair["completion"]
        name = f"{pair['forget']} → {pair['override']}"
        teacher_fid = m["teacher"]["fid_remain"]
        for key, title in ((EMA, "SFD stage 2, EMA (shipped)"), (RAW, "SFD stage 2, raw"),
                           (SALUN, "SalUn")):  # fmt: skip
            model = m[key]
            speed.append(
                (
                    name,
                    title,
                    _at(model["ua95"]),
                    _percent(model["ua"]),
                    _percent(model["remain_accuracy"]),
                    f"{model['fid_remain']:.2f}",
                    model["iterations"],
                    f"{model['train_seconds']:.0f} s",
                )
            )
        last = done["last_probe"]
        ema = m[EMA]
        restart = done.get("averaged_from")
        stops.append(
            (
                name,
                done["iterations"],
                done["stop_reason"],
                "no" if restart is None else f"it. {restart}",
                _percent(ema["ua"]),
                _percent(last.get("classifier_ua")),
                _percent(None if "forget_rate" not in last else 1 - last["forget_rate"]),
                f"{_percent(ema['remain_accuracy'])} (teacher "
                f"{_percent(m['teacher']['remain_accuracy'])})",
                f"{ema['fid_remain'] / teacher_fid:.2f}",
                f"{m[EMA]['train_seconds']:.0f} s",
                f"{pair['wall_seconds'] / 60:.1f} min",
            )
        )
        checks += [
            (target, measured, "yes" if met else "no") for target, measured, met in targets(pair)
        ]
        fid_rows += [
            (name, p["iteration"], _percent(p["ua"]), f"{p['fid_remain']:.2f}",
             "" if p["fid_remain_raw"] is None else f"{p['fid_remain_raw']:.2f}")
            for p in pair.get("fid_curve", [])
        ]  # fmt: skip
    first = record["pairs"][0]
    ema = first["ema"]
    after = first["completion"].get("average_after")
    averaging = (
        ""
        if after is None
        else f" With EMA after forgetting (`--average-after {after}`), the first probe that "
        "judges the forget class gone restarts the shipped generator as the plain mean of the "
        f"generator iterates from there, and the rule stops once it averages {after} iterations."
    )
    commands = "\n".join(shlex.join(pair["command"]) for pair in record["pairs"])
    return write_page(
        "stage2_speed",
        "Stage 2 per forget request: EMA and raw generator against SalUn",
        record["run"]["command"],
        json_file,
        record,
        {
            "The runs": (
                f"One `sfd compare` per pair, in turn on the same machine:\n\n```bash\n{commands}\n"
                "```\n\nTeacher, classifier and stage 1 come from the cache; stage 2 of two-stage "
                f"SFD (at most {first['max_steps']} iterations, EMA: {ema_words(ema)}) stops by "
                "the completion rule "
                "(`UntilForgotten`, the demos' default). Training seconds are the wall time of "
                "`Trainer.fit` without the classifier's forgetting-curve evaluations (the "
                "judge's probes count: the rule is part of the method); the raw generator is the "
                f"same run's, evaluated beside the EMA on the same noise and clock.{averaging}"
            ),
            "Time to UA ≥ 95 % and remain quality": markdown_table(
                (
                    "pair",
                    "model",
                    "UA ≥ 95 % at",
                    "UA",
                    "remain accuracy",
                    "remain FID",
                    "iterations",
                    "training time",
                ),
                speed,
            ),  # fmt: skip
            "Where the completion rule stopped": (
                "Classifier UA at the stop: the forgetting curve's point of the stop's iteration "
                "(32 forget samples); judge UA: 1 − the judged forget rate there (64 samples); UA: "
                "the final evaluation of the shipped generator (200 forget samples). FID ratio: "
                "its remain FID over the teacher's (DDIM).\n\n"
                + markdown_table(
                    (
                        "pair",
                        "iterations used",
                        "stop reason",
                        "EMA restarted",
                        "UA",
                        "classifier UA at stop",
                        "judge UA at stop",
                        "remain accuracy",
                        "FID ratio",
                        "stage-2 training time",
                        "wall time of the run",
                    ),
                    stops,
                )  # fmt: skip
            ),
            "Targets": markdown_table(("target", "measured", "met"), checks),
            "Remain FID along stage 2": (
                "The forgetting curve's remain FID (32 samples per remain class on fixed noise, "
                "the classifier's features, against the held-out remain images): biased upward "
                "against the final evaluation's 200 per class, for following the transient, not "
                "for comparing with the tables above.\n\n"
                + markdown_table(
                    ("pair", "iteration", "UA (EMA)", "curve FID, EMA", "curve FID, raw"),
                    fid_rows,
                )  # fmt: skip
                if fid_rows
                else "Not traced by this record."
            ),
        },
        results_dir,
    )


def ema_words(ema: dict[str, Any]) -> str:
    if ema.get("ema_power") is None:
        return f"constant decay {ema['ema_decay']}"
    return f"power function γ {ema['ema_power']:g}, decay cap {ema['ema_decay']}"


def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args[:-1] else None


def _seconds(value: float | None) -> str:
    return "never" if value is None else f"{value:.0f} s"


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f} %"


def _at(ua95: dict[str, Any]) -> str:
    if ua95.get("iteration") is None:
        return "never"
    return f"it. {ua95['iteration']} / {ua95['seconds']:.0f} s"


if __name__ == "__main__":
    sys.exit(main())
