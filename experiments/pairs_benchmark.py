"""Forgetting that finishes on every pair: the demos at their defaults (completion rule on), one table.

    python experiments/pairs_benchmark.py --output-dir runs/pairs [--only digits-0-1 ...] \
        [--teacher-cache DIR] [--threads 1]
    python experiments/pairs_benchmark.py --page-from runs/pairs/pairs.json

Runs `sfd demo` (class-conditional teachers) or `sfd demo-text` (text teachers, through
`text_benchmark.run`) once per pair in `PAIRS`, each with its defaults — SFD's stage 2 stopped by the
data-free completion rule (`UntilForgotten`) within the preset's cap, no per-pair settings —
and collects per pair: iterations used and why the rule stopped, the judge's UA (1 − judged forget
rate) beside the classifier's at the stop, UA (text: also on the held-back paraphrases), remain and
neighbour accuracy beside the teacher's, the remain FID over the teacher's, the judge's floor and
the classifier's UA ceiling on the pair (1 − its reading of held-out real images of the override class
or concept as the forget class), and wall time. The class
demos skip their attack and full-schedule timing (`--no-attack --skip-full-schedule-timing`: neither
touches training nor the numbers here). Each pair's numbers are saved in OUTPUT_DIR/<pair>/pair.json
as soon as it finishes; a later call skips pairs already there (`--again` reruns them), so the pairs
can be run in several calls and the table holds every finished pair. Writes OUTPUT_DIR/pairs.json
and, unless `--no-page`, docs/results/pairs.md.

Targets (issue 24, `sfd.apps.harness.targets`): UA ≥ 99 %, remain and neighbour accuracy no more
than 2 points below the teacher's (one-sided: any amount above it is met), the
rule's stop reason "forgotten", judge and classifier UA within 5 points at the stop.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import make_fashion_npz
import text_benchmark
from digits_benchmark import run_demo
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

from sfd.apps.harness.targets import POINTS, UA_TRAIN, not_below_teacher

UA_TARGET = UA_TRAIN
AGREEMENT = 0.05  # judge UA and classifier UA at the stop: at most this apart
FASHION8 = Path("runs/fashion8.npz")  # built by make_fashion_npz.build when missing
# Pairs whose last run's record is lost: {name: the commit whose docs/results/pairs.md shows its row}.
# The page names them among the pairs not in its record, so their row is not dropped silently.
LOST_RECORDS: dict[str, str] = {}  # fashion8-sneaker-sandal (70cd0c3) was measured again


@dataclass(frozen=True)
class Pair:
    """One forget request: a class demo (`forget`/`override` are class indices) or a text set-up of
    `text_benchmark.SETUPS` (`setup`)."""

    data: str
    kind: str  # "class" or "text"
    forget: str
    override: str
    tuned: bool  # the demo's preset was tuned on this pair
    setup: str | None = None  # text: text_benchmark's set-up name
    forget_index: int | None = None  # class: the indices given to `sfd demo`
    override_index: int | None = None


PAIRS = {
    "digits-0-1": Pair("digits", "class", "0", "1", True, forget_index=0, override_index=1),
    "digits-4-9": Pair("digits", "class", "4", "9", False, forget_index=4, override_index=9),
    "digits-7-2": Pair("digits", "class", "7", "2", False, forget_index=7, override_index=2),
    "fashion8-sneaker-sandal": Pair(
        "fashion-mnist 8×8", "class", "sneaker", "sandal", False, forget_index=7, override_index=5
    ),
    "text-digits-three-eight": Pair(
        "digits", "text", "three", "eight", False, setup="digits-untuned"
    ),
    "text-fashion-pullover-coat": Pair(
        "fashion-mnist", "text", "pullover", "coat", False, setup="fashion-untuned"
    ),
    "text-digits-seven-one": Pair("digits", "text", "seven", "one", True, setup="digits"),
    "text-fashion-sneaker-sandal": Pair(
        "fashion-mnist", "text", "sneaker", "sandal", True, setup="fashion"
    ),
}


def run_class(name: str, pair: Pair, output: Path, common: list[str]) -> dict[str, Any]:
    """`sfd demo` on a class pair; the pair's row."""
    data = []
    if pair.data.startswith("fashion"):
        if not FASHION8.is_file():
            print(make_fashion_npz.build(FASHION8), flush=True)
        data = ["--data", str(FASHION8)]
    args = [
        *data, "--forget", str(pair.forget_index), "--override", str(pair.override_index),
        *common, "--no-progress", "--no-attack", "--skip-full-schedule-timing",
    ]  # fmt: skip
    demo = run_demo(output / name, args)
    if isinstance(demo, int):
        raise SystemExit(f"sfd demo failed with status {demo} on {name}")
    metrics, command, wall = demo
    neighbour = str(pair.override_index)
    models = {
        key: {
            "ua": metrics[key]["ua"],
            "ua_paraphrases": None,
            "remain_accuracy": metrics[key]["remain_accuracy"],
            "neighbour_accuracy": metrics[key]["remain_per_class"][neighbour],
            "fid_remain": metrics[key]["fid_remain"],
        }
        for key in ("teacher", "sfd")
    }
    two_stage = metrics["protocol"]["two_stage"]
    return {
        "command": shlex.join(command),
        "wall_seconds": wall,
        "max_steps": metrics["protocol"]["sfd_settings"]["iterations"],
        "iterations": metrics["iterations"],
        "completion": two_stage["stage2_completion"],
        "stage2_seconds": two_stage["stage2_training_seconds"],
        "neighbours": f"class {neighbour} (the override)",
        "curve_samples": metrics["protocol"]["curve"]["forget_per_class"],
        "cached": cached_flags(metrics["protocol"]),
        "models": models,
        **sample_by_sample(output / name, pair),
    }


SAMPLES = 256  # forget samples of the judge-vs-classifier comparison, sample by sample


def sample_by_sample(folder: Path, pair: Pair) -> dict[str, Any]:
    """Judge and classifier on the same images, for a finished class run in `folder` (its
    metrics.json, classifier, exported generator and cached teacher):

    - `override_read_as_forget`: the share of the held-out real images of the override class that
      the evaluation classifier reads as the forget class (a generator that draws the override class
      exactly for the forget condition gets UA 1 − this: its ceiling under this classifier);
    - `judge_real_override`: the share of the same real images the data-free judge reads as forget;
    - `agreement`: on SAMPLES forget samples of the exported generator (judge draws of seed 1, not the
      rule's), the shares read as the forget class by the judge, by the classifier, and by both.
    """
    import torch

    from sfd.apps.harness.workspace import load_split
    from sfd.core import judge
    from sfd.core.conditions import ClassConditions
    from sfd.eval.classifier import load_classifier, predict_labels
    from sfd.eval.evaluate import ua_ceiling
    from sfd.images import from_uint8
    from sfd.pipelines.io import load_generator
    from sfd.teachers.unet import PretrainedVPTeacher

    protocol = json.loads((folder / "metrics.json").read_text())["protocol"]
    split = protocol["classifier_settings"]
    heldout = load_split(
        protocol["data"], split["heldout_fraction"], split["split_seed"], None
    ).heldout
    classifier = load_classifier(folder / "classifier")
    teacher = PretrainedVPTeacher(protocol["teacher"]["folder"]).eval()
    forget, override = pair.forget_index, pair.override_index
    conditions = ClassConditions(forget, override)
    conditions.check(teacher.num_classes)
    shape = tuple(teacher.sample_shape)
    real = from_uint8(heldout.images[heldout.labels == override])
    draws = judge.JudgeDraws.draw(conditions, shape, len(real), judge.DEFAULT_SIGMAS, 2, seed=1)
    labels = draws.conditions
    judged_real = judge.judged_forget(teacher, real, labels.forget, labels.override, draws)
    draws = judge.JudgeDraws.draw(conditions, shape, SAMPLES, judge.DEFAULT_SIGMAS, 2, seed=1)
    labels = draws.conditions
    with torch.no_grad():
        x = load_generator(folder / "generator").eval()(draws.z_forget, labels.forget)
    judged = judge.judged_forget(teacher, x, labels.forget, labels.override, draws)
    read = predict_labels(classifier, x) == forget
    ceiling = ua_ceiling(classifier, heldout.images, heldout.labels, forget, override)

    def share(flags: torch.Tensor) -> float:
        return float(flags.to(torch.float32).mean())

    return {
        "override_read_as_forget": 1 - ceiling,
        "judge_real_override": share(judged_real),
        "agreement": {
            "samples": SAMPLES,
            "judge": share(judged),
            "classifier": share(read),
            "both": share(judged & read),
        },
    }


def run_text(name: str, pair: Pair, output: Path, common: list[str]) -> dict[str, Any]:
    """`sfd demo-text` on a text set-up (via `text_benchmark.run`); the pair's row."""
    result = text_benchmark.run(pair.setup, output, common, folder=name)
    metrics = json.loads((output / name / "metrics.json").read_text())
    protocol = metrics["protocol"]
    names = protocol["class_names"]
    return {
        "command": result["command"],
        "wall_seconds": result["wall_seconds"],
        "max_steps": protocol["sfd_settings"]["iterations"],
        "iterations": result["iterations"],
        "completion": result["completion"],
        "stage2_seconds": protocol["two_stage"].get("stage2_training_seconds"),
        "neighbours": ", ".join(names[c] for c in protocol["neighbours"]),
        "curve_samples": protocol["curve"]["per_class"],
        "cached": cached_flags(protocol),
        "models": {key: result["models"][key] for key in ("teacher", "sfd")},
        **text_ceiling(output / name),
    }


def text_ceiling(folder: Path) -> dict[str, float]:
    """`override_read_as_forget` of a finished text run in `folder`: 1 − the demo's UA ceiling
    (`ua_ceiling` in its metrics.json), or, for a record from before the demo measured it, the
    same measured now from the run's saved classifier and the held-out split of its data."""
    metrics = json.loads((folder / "metrics.json").read_text())
    protocol = metrics["protocol"]
    if "ua_ceiling" not in protocol:
        from sfd.apps.data.captions import load_captioned
        from sfd.apps.data.images import train_heldout_split
        from sfd.eval.classifier import load_classifier
        from sfd.eval.evaluate import ua_ceiling

        split = protocol["teacher_settings"]
        data, _ = load_captioned(protocol["data"])
        _, heldout = train_heldout_split(data, split["heldout_fraction"], split["split_seed"])
        classifier = load_classifier(folder / "classifier")
        forget, override = metrics["forget"], metrics["override"]
        protocol["ua_ceiling"] = ua_ceiling(
            classifier, heldout.images, heldout.labels, forget, override
        )
    ceiling = protocol["ua_ceiling"]
    return {"override_read_as_forget": None if ceiling is None else 1 - ceiling}


def cached_flags(protocol: dict[str, Any]) -> dict[str, bool]:
    return {
        "teacher": protocol["teacher"]["reused_from_cache"],
        "classifier": protocol["classifier"]["reused_from_cache"],
        "stage1": protocol["two_stage"]["stage1_reused_from_cache"],
    }


def judge_and_classifier(row: dict[str, Any]) -> tuple[float | None, float | None]:
    """(judge UA, the forgetting curve's classifier UA) at the rule's last probe; None where
    there is no reading."""
    last = (row["completion"] or {}).get("last_probe", {})
    judge = None if "forget_rate" not in last else 1 - last["forget_rate"]
    return judge, last.get("classifier_ua")


def floors(row: dict[str, Any]) -> str:
    """The judge's floor at the stop (its forget rate on the generator's own override samples,
    where the rule measured it) and the classifier's UA ceiling (1 − its reading of held-out real
    override images as the forget class; text pairs: from the demo's record)."""
    last = (row["completion"] or {}).get("last_probe", {})
    judge = _percent(last.get("override_rate")) or "–"
    read = row.get("override_read_as_forget")
    ceiling = "–" if read is None else _percent(1 - read)
    return f"{judge} / {ceiling}"


def targets(row: dict[str, Any]) -> dict[str, bool]:
    """Issue 24's targets of one pair: {name: met}."""
    sfd, teacher = row["models"]["sfd"], row["models"]["teacher"]
    judge, _ = judge_and_classifier(row)
    reason = (row["completion"] or {}).get("stop_reason")
    return {
        f"UA ≥ {100 * UA_TARGET:.0f} %": sfd["ua"] >= UA_TARGET,
        f"remain ≤ {100 * POINTS:.0f} points below the teacher's": not_below_teacher(
            sfd["remain_accuracy"], teacher["remain_accuracy"]
        ),
        f"neighbour ≤ {100 * POINTS:.0f} points below the teacher's": not_below_teacher(
            sfd["neighbour_accuracy"], teacher["neighbour_accuracy"]
        ),
        "stopped as forgotten": reason == "forgotten",
        "judge and classifier within 5 points": judge is not None
        and abs(judge - sfd["ua"]) <= AGREEMENT,
    }


def run_pairs(
    names: list[str], output: Path, common: list[str], again: bool
) -> dict[str, dict[str, Any]]:
    """Run the pairs not yet in `output` (all with `again`); every finished pair's row."""
    for name in names:
        saved = output / name / "pair.json"
        if saved.is_file() and not again:
            print(f"{name}: already measured ({saved}); --again reruns it", flush=True)
            row = json.loads(saved.read_text())
            if PAIRS[name].kind == "class" and "agreement" not in row:
                row |= sample_by_sample(output / name, PAIRS[name])
                save_record(row, saved)  # a record from before these were measured
            if PAIRS[name].kind == "text" and "override_read_as_forget" not in row:
                row |= text_ceiling(output / name)
                save_record(row, saved)
            continue
        pair = PAIRS[name]
        run_one = run_class if pair.kind == "class" else run_text
        row = {"name": name, **pair.__dict__, **run_one(name, pair, output, common)}
        row["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        save_record(row, saved)
        print(f"{name}: {summary(row)}", flush=True)
    return {
        name: json.loads((output / name / "pair.json").read_text())
        for name in PAIRS
        if (output / name / "pair.json").is_file()
    }


def summary(row: dict[str, Any]) -> str:
    met = targets(row)
    done = row["completion"] or {}
    return (
        f"{done.get('stop_reason')} at {row['iterations']} / {row['max_steps']}, UA "
        f"{_percent(row['models']['sfd']['ua'])}; targets "
        + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in met.items())
    )


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/pairs.md from a pairs.json record."""
    rows, checks, commands, samples = [], [], [], []
    for row in record["pairs"].values():
        if "agreement" in row:
            both = row["agreement"]
            samples.append(
                (
                    f"{row['forget']} → {row['override']} ({row['kind']})",
                    _percent(row["override_read_as_forget"]),
                    _percent(row["judge_real_override"]),
                    _percent(1 - row["override_read_as_forget"]),
                    f"{_percent(both['judge'])} / {_percent(both['classifier'])} / "
                    f"{_percent(both['both'])}",
                )
            )
        sfd, teacher = row["models"]["sfd"], row["models"]["teacher"]
        judge, classifier = judge_and_classifier(row)
        done = row["completion"] or {}
        rows.append(
            (
                row["data"],
                row["kind"],
                f"{row['forget']} → {row['override']}",
                "yes" if row["tuned"] else "no",
                f"{row['iterations']} / {row['max_steps']}",
                done.get("stop_reason", "rule off"),
                f"{_percent(judge) or '–'} vs {_percent(sfd['ua'])} "
                f"(curve, {row['curve_samples']} samples: {_percent(classifier) or '–'})",
                _percent(sfd["ua"]),
                _percent(sfd["ua_paraphrases"]),
                f"{_percent(sfd['remain_accuracy'])} ({_percent(teacher['remain_accuracy'])})",
                f"{_percent(sfd['neighbour_accuracy'])} "
                f"({_percent(teacher['neighbour_accuracy'])}; {row['neighbours']})",
                number(sfd["fid_remain"] / teacher["fid_remain"]),
                floors(row),
                f"{row['wall_seconds'] / 60:.1f} min (stage 2 {row['stage2_seconds']:.0f} s)",
            )
        )
        checks.append(
            (f"{row['forget']} → {row['override']} ({row['kind']})",)
            + tuple("yes" if met else "no" for met in targets(row).values())
        )
        commands.append(row["command"])
    missing = [name for name in PAIRS if name not in record["pairs"]]
    first = next(iter(record["pairs"].values()), None)
    check_header = ("pair", *targets(first)) if first else ("pair",)
    return write_page(
        "pairs",
        "Forgetting under the completion rule, pair by pair",
        record["run"]["command"],
        json_file,
        record,
        {
            "The runs": (
                "Each pair is one demo at its defaults: SFD's stage 2 runs under the data-free "
                "completion rule (`UntilForgotten`) within the preset's iteration cap, with no "
                "per-pair setting. Teacher, classifier and stage 1 come from the cache where they "
                "were there (the wall time includes what was built). The 8×8 Fashion-MNIST pairs "
                f"read `{FASHION8}`, built by `experiments/make_fashion_npz.py` (from Debian's "
                "`dataset-fashion-mnist`) when missing. Commands, in the order run:"
                f"\n\n```bash\n{chr(10).join(commands)}\n```"
                + (
                    "\n\nNot in this record (run them with the same command and `--only NAME`; "
                    "pairs already measured are kept): "
                    + ", ".join(f"`{n}`{_lost(n)}" for n in missing)
                    + "."
                    if missing
                    else ""
                )
            ),
            "Every pair": (
                "Iterations: used / the budget. Judge vs classifier UA at the stop: 1 − the "
                "judge's forget rate at the rule's last probe (64 samples) against the classifier's "
                "UA of the generator stopped there (the final evaluation's, the UA column; in "
                "brackets the forgetting curve's reading at that probe, on fewer fixed "
                "samples). UA, "
                "remain and neighbour accuracy: the final evaluation of the shipped generator "
                "(teacher's in brackets); the neighbour of a class pair is its override class, "
                "of a text pair the two classes nearest the forget class. FID ratio: SFD's "
                "remain FID over the teacher's (class: DDIM; text: its multi-step sampler). Judge "
                "floor: at the stop, the judge's forget rate on the generator's own samples for the "
                "override (same noise; the rule's `override_floor`, which stops at most the "
                "threshold above it). UA ceiling: 1 − the share of the held-out real images of the "
                "override class that the evaluation classifier reads as the forget class, the UA a "
                "generator drawing the override class exactly would get (text pairs: the real images of "
                "the override concept's class); the ceilings of the Fashion-MNIST pairs under "
                "stronger classifiers: [the classifier page](classifier.md); how far the "
                "classifier and the judge read the text teacher's own override samples as the "
                "forget class (the classifier's floor, which bounds their agreement at the stop): "
                "[the judge, level by level](judge_levels.md).\n\n"
                + markdown_table(
                    (
                        "data set",
                        "model",
                        "pair",
                        "tuned on",
                        "iterations",
                        "stop reason",
                        "judge vs classifier UA at the stop",
                        "UA",
                        "UA paraphrases",
                        "remain acc. (teacher)",
                        "neighbour acc. (teacher)",
                        "FID ratio",
                        "judge floor / UA ceiling",
                        "wall time",
                    ),
                    rows,
                )  # fmt: skip
            ),
            "Targets": markdown_table(check_header, checks),
            "Judge and classifier, sample by sample": (
                "Class pairs, after the run. Real override images: the held-out real images of the "
                "override class read as the forget class by the evaluation classifier and by the "
                "data-free judge; the UA ceiling is 1 − the classifier's share, the UA of a "
                "generator that draws the override class exactly. Forget samples: "
                f"{SAMPLES} forget samples of the shipped generator (other draws than the rule's) "
                "read as the forget class by the judge, by the classifier, and by both: where "
                "*both* is far below either, the two mostly flag different samples.\n\n"
                + markdown_table(
                    (
                        "pair",
                        "real override read as forget: classifier",
                        "judge",
                        "UA ceiling",
                        "forget samples read as forget: judge / classifier / both",
                    ),
                    samples,
                )
                if samples
                else "No class pair in this record."
            ),
        },
        results_dir,
    )


def _lost(name: str) -> str:
    """For a pair missing from the record whose last run's record is lost: where its row is."""
    if name not in LOST_RECORDS:
        return ""
    return (
        f" (its last run's record was lost; its row is on this page as of commit "
        f"{LOST_RECORDS[name]}: `git show {LOST_RECORDS[name]}:docs/results/pairs.md`)"
    )


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f} %"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/pairs"))
    parser.add_argument("--only", nargs="+", choices=list(PAIRS), help="pairs to run, in order")
    parser.add_argument("--again", action="store_true", help="rerun pairs already measured")
    parser.add_argument("--teacher-cache", help="the demos' --teacher-cache")
    parser.add_argument("--threads", type=int, help="the demos' --threads")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if options.page_from:
        print(write_results_page(read_record(options.page_from), options.page_from))
        return 0
    common = []
    if options.teacher_cache:
        common += ["--teacher-cache", options.teacher_cache]
    if options.threads is not None:
        common += ["--threads", str(options.threads)]
    load_start = os.getloadavg()
    rows = run_pairs(options.only or list(PAIRS), options.output_dir, common, options.again)
    record = {
        "run": run_context(command_line(__file__, argv), load_start, options.threads),
        "pairs": rows,
    }
    json_file = options.output_dir / "pairs.json"
    save_record(record, json_file)
    for name, row in rows.items():
        print(f"{name}: {summary(row)}")
    if not options.no_page:
        print(write_results_page(record, str(json_file)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
