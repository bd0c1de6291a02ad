"""Stage 2 of the digits demo watched four ways: classifier UA of the EMA and of the raw generator,
and the data-free judge's forget rate of both (the completion rule in observe mode).

    python experiments/completion_curves.py --teacher-cache CACHE [--forget 0 --override 1] \
        [--every 10] [--threads 1] [--json runs/completion/completion_curves.json]
    python experiments/completion_curves.py --page-from runs/completion/completion_curves.json

Runs what `sfd demo` runs up to stage 2 (teacher, classifier and stage 1 from the cache, built
if missing), then stage 2 with the demo's settings for its full iteration count, with three
callbacks every `--every` iterations: the demo's forgetting curve (EMA generator), the same curve
on the raw generator, and `UntilForgotten` with a patience no run reaches (it only probes). From
the probes it reports where the rule, at each of a few thresholds and patience 3, would have
stopped, and the classifier's UA there. Writes the JSON record and docs/results/completion.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from results_page import (
    add_page_arguments,
    command_line,
    markdown_table,
    read_record,
    run_context,
    save_record,
    write_page,
)

from sfd.apps.harness.methods import Run
from sfd.apps.harness.phases import Phases
from sfd.apps.harness.settings import ClassRunSettings
from sfd.apps.harness.stages import train_sfd
from sfd.apps.harness.workspace import classifier_phase, start_run, teacher_phase
from sfd.training.completion import UntilForgotten

PATIENCE = 3
THRESHOLDS = (0.0, 0.01, 0.05)


def ema_text(record: dict[str, Any]) -> str:
    """The shipped generator's EMA in words, from a record's `ema_decay` and `ema_power`."""
    if record.get("ema_power") is None:
        return f"EMA decay {record['ema_decay']}"
    return f"power-function EMA γ {record['ema_power']:g}, decay cap {record['ema_decay']}"


def would_stop(probes: list[dict[str, Any]], threshold: float, patience: int) -> int | None:
    """The iteration at which the rule (threshold, patience) stops on these probes, or None."""
    streak = 0
    for point in probes[1:]:  # the start's probe sets the reference only
        streak = streak + 1 if point["forget_rate"] <= threshold else 0
        if streak >= patience:
            return int(point["iteration"])
    return None


def measure(
    cache: Path, forget: int, override: int, every: int, sfd_args: list[str]
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = ClassRunSettings(
            output_dir=Path(tmp) / "out",
            forget=forget,
            override=override,
            teacher_cache=cache,
            curve_every=every,
            sfd_args=sfd_args,
            progress=False,
        )
        workspace, sfd = start_run(settings)
        phases = Phases("completion_curves", 3)
        teacher_phase(workspace, settings, sfd.trainer.accelerator, phases)
        classifier_phase(workspace, settings, phases)
        run = Run(settings, workspace, {}, Path(tmp) / "logs", sfd.trainer.accelerator)
        stage1 = run.stage_one()
        args = settings.sfd_command_line(run.teacher_dir, "stage2") + stage1.stage_two_arguments()
        iterations = int(sfd.trainer.max_steps)
        curve = run.curve(iterations, raw=True)  # the EMA's and the raw generator's
        rule = UntilForgotten(every_n=every, patience=10**9)
        module, seconds, _ = train_sfd(
            args, [curve, rule], Path(tmp) / "logs" / "stage2", False, settings.seed
        )
    ema = {int(p["iteration"]): p for p in curve.as_dicts()}
    raw = {int(p["iteration"]): p for p in curve.raw_dicts()}
    rows = []
    for probe in rule.probes:
        i = int(probe["iteration"])
        rows.append(
            {
                "iteration": i,
                "ua_ema": ema[i]["ua"] if i in ema else None,
                "ua_raw": raw[i]["ua"] if i in raw else None,
                "remain_accuracy_ema": ema[i]["remain_accuracy"] if i in ema else None,
                "judge_forget_rate_ema": probe["forget_rate"],
                "judge_forget_rate_raw": probe["forget_rate_raw"],
                "drift": probe["drift"],
            }
        )
    stops = []
    for threshold in THRESHOLDS:
        at = would_stop(rule.probes, threshold, PATIENCE)
        row = next((r for r in rows if r["iteration"] == at), None)
        stops.append(
            {
                "threshold": threshold,
                "patience": PATIENCE,
                "iteration": at,
                "ua_ema": None if row is None else row["ua_ema"],
                "judge_forget_rate": None if row is None else row["judge_forget_rate_ema"],
                "remain_accuracy_ema": None if row is None else row["remain_accuracy_ema"],
            }
        )
    return {
        "pair": {"forget": forget, "override": override},
        "iterations": iterations,
        "every": every,
        "stage2_seconds": seconds,
        "curve_seconds": curve.evaluation_seconds,
        "probe_seconds": rule.probe_seconds,
        "probes": len(rule.probes),
        "ema_decay": module.hparams.ema_decay,
        "ema_power": module.hparams.ema_power,
        "judge": {
            "num_samples": rule.num_samples,
            "sigmas": list(rule.sigmas),
            "draws": rule.draws,
        },
        "rows": rows,
        "stops": stops,
    }


def pct(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f} %"


def first_at(rows: list[dict[str, Any]], key: str, good: Any) -> int | None:
    """The first probe iteration whose `key` satisfies `good` (None if never)."""
    return next((r["iteration"] for r in rows if r[key] is not None and good(r[key])), None)


def findings(record: dict[str, Any]) -> str:
    """What the curves show, computed from the record."""
    rows = record["rows"]
    ema = first_at(rows, "ua_ema", lambda v: v >= 0.95)
    raw = first_at(rows, "ua_raw", lambda v: v >= 0.95)
    judge_ema = first_at(rows, "judge_forget_rate_ema", lambda v: v <= 0.05)
    judge_raw = first_at(rows, "judge_forget_rate_raw", lambda v: v <= 0.05)
    gaps = [
        (abs((1 - r["judge_forget_rate_ema"]) - r["ua_ema"]), r["iteration"])
        for r in rows
        if r["ua_ema"] is not None
    ]
    gap, gap_at = max(gaps)
    last = rows[-1]

    def at(value: int | None) -> str:
        return "never" if value is None else f"iteration {value}"

    return "\n".join(
        [
            f"- Classifier UA ≥ 95 %: the raw generator at {at(raw)}, the EMA generator "
            f"({ema_text(record)}) at {at(ema)}.",
            f"- Judged forget rate ≤ 5 %: the raw generator at {at(judge_raw)}, the EMA at "
            f"{at(judge_ema)}.",
            f"- The judge's UA (1 − forget rate) and the classifier's UA of the EMA differ by at "
            f"most {100 * gap:.1f} points, at iteration {gap_at}; at the last probe by "
            f"{100 * abs(1 - last['judge_forget_rate_ema'] - last['ua_ema']):.1f} points.",
            f"- Remain drift of the EMA at the last probe: {last['drift']:.4f}.",
        ]
    )


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/completion.md from a record of `main`."""
    curves = markdown_table(
        ("iteration", "classifier UA, EMA", "classifier UA, raw", "judge forget rate, EMA",
         "judge forget rate, raw", "remain accuracy, EMA", "remain drift, EMA"),
        [(
            r["iteration"], pct(r["ua_ema"]), pct(r["ua_raw"]), pct(r["judge_forget_rate_ema"]),
            pct(r["judge_forget_rate_raw"]), pct(r["remain_accuracy_ema"]), f"{r['drift']:.4f}",
        ) for r in record["rows"]],
    )  # fmt: skip
    stops = markdown_table(
        ("threshold", "patience", "would stop at", "classifier UA (EMA) there",
         "judge forget rate there", "remain accuracy there"),
        [(
            s["threshold"], s["patience"], s["iteration"] if s["iteration"] is not None else "never",
            pct(s["ua_ema"]), pct(s["judge_forget_rate"]), pct(s["remain_accuracy_ema"]),
        ) for s in record["stops"]],
    )  # fmt: skip
    pair, judge = record["pair"], record["judge"]
    return write_page(
        "completion",
        f"Stage 2 on digits ({pair['forget']} → {pair['override']}): EMA and raw generator, "
        "classifier and data-free judge",
        record["run"]["command"],
        json_file,
        record,
        {
            "Curves": (
                f"Stage 2 of the digits demo ({record['iterations']} iterations, "
                f"{ema_text(record)}; {record['stage2_seconds']:.0f} s of fit, of which "
                f"{record['curve_seconds']:.0f} s the two classifier curves and "
                f"{record['probe_seconds']:.0f} s the {record['probes']} judge probes), "
                f"probed every {record['every']} iterations. Classifier UA: the demo's curve "
                "(32 forget samples, fixed noise) on the EMA generator the demo ships and on the "
                "raw generator. Judge: `UntilForgotten`'s probe (the frozen teacher's denoising "
                f"error under the forget vs the override class; {judge['num_samples']} samples, "
                f"σ {judge['sigmas']}, {judge['draws']} draws each), as a forget rate: 1 − the "
                "judge's UA. Remain drift: RMS distance of the EMA's remain samples to its "
                "samples at the start of stage 2 (images in [-1, 1]).\n\n" + curves
            ),
            "What the curves show": findings(record),
            "Where the rule would stop": (
                "From the same probes: the first iteration at which the judged forget rate of the "
                "EMA generator stayed at or below the threshold for `patience` probes in a row "
                "(the start's probe does not count).\n\n" + stops
            ),
        },
        results_dir,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher-cache", type=Path, help="the demo's cache (default ~/.cache/sfd)"
    )
    parser.add_argument("--forget", type=int, default=0)
    parser.add_argument("--override", type=int, default=1)
    parser.add_argument("--every", type=int, default=10, help="probe interval (iterations)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--json", default="runs/completion/completion_curves.json", help="the record"
    )
    parser.add_argument("sfd_args", nargs="*", help="after --: `sfd fit` overrides of stage 2")
    add_page_arguments(parser)
    args = parser.parse_args(argv)
    if args.page_from:
        print(write_results_page(read_record(args.page_from), args.page_from))
        return
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    record = measure(args.teacher_cache, args.forget, args.override, args.every, args.sfd_args)
    record = {"run": run_context(command_line(__file__, argv), load_start), **record}
    save_record(record, args.json)
    for stop in record["stops"]:
        print(stop)
    if not args.no_page:
        print(write_results_page(record, args.json))


if __name__ == "__main__":
    main()
