"""The text-to-image concept-forgetting benchmark (issue 11): `sfd demo-text` on four set-ups.

    python experiments/text_benchmark.py --output-dir runs/text-benchmark [--only digits] \
        [--teacher-cache DIR] [-- extra sfd demo-text options]

Set-ups: digits "seven" -> "one" with the shipped paraphrases (the pair the settings were tuned
on), digits "three" -> "eight" with the held-back paraphrase set b (not tuned on), and the same
for Fashion-MNIST: "sneaker" -> "sandal" (tuned) and "pullover" -> "coat" with set b (not tuned).
Each run is a plain `sfd demo-text` command (printed); the teacher of a data set is trained once
and cached. Writes benchmark.json and benchmark.md (targets met or missed, phase times, load
averages before and after each run, CPU seconds of the process) and, unless `--no-page`, the
page docs/results/text.md.

    python experiments/text_benchmark.py --page-from runs/text-benchmark/benchmark.json

With `--adversarial` each set-up runs a second time with adversarial SFD (`sfd demo-text
--adversarial` into `<set-up>-adversarial`; `--adversarial-set KEY=VALUE` refines its settings
alone), reported beside plain SFD. With `--family sd3` every set-up runs on the flow-matching
teacher (`sfd demo-text --family sd3`: a small SD3Transformer2DModel trained with rectified flow,
loaded by SD3Teacher), the FID ratio target is issue 20's (1.5x the teacher's, not 1.2x) and the
page is docs/results/flow_text.md. The targets (`sfd.apps.harness.targets`) are computed from the
models' numbers, for plain and adversarial SFD alike.

    python experiments/text_benchmark.py --page-from runs/a/benchmark.json \
        --merge runs/b/benchmark.json runs/c/benchmark.json

`--plain-from FILE.json` (with `--adversarial`) takes each set-up's plain run from an earlier
record of the same `sfd demo-text` options and runs only the adversarial one, to try adversarial
settings without measuring plain SFD again.

`--merge` adds the set-ups of earlier records (set-ups measured by other commands, e.g. one
`--only` at a time so each teacher trains once) to this run's page and record, each shown under
the command, date, commit and load of the run that measured it.

    python experiments/text_benchmark.py --page-from runs/a/benchmark.json \
        --replace runs/fashion-again/benchmark.json

`--replace` (with `--page-from`) puts the set-ups of newer records in the place of the same
set-ups on the page (a set-up measured again), each under the command that measured it.

    python experiments/text_benchmark.py --page-from runs/a/benchmark.json \
        --fresh runs/flow-fresh/benchmark.json

`--fresh` (with `--page-from`) adds the set-ups of records run with fresh caches (teacher,
classifier and stage 1 trained in the run; a record that reused one is refused) in sections of
their own ("digits, fresh caches"), each under the command that measured it, with their wall time
judged against issue 20's fresh-run target (`FRESH_MINUTES`) in the flow page's targets summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from results_page import (
    Refusal,
    add_page_arguments,
    command_line,
    git_commit,
    markdown_table,
    read_record,
    run_context,
    save_record,
    shown_path,
    write_page,
)

from sfd.apps.demo_text.prompts import shipped_paraphrases
from sfd.apps.harness.targets import DIFFERENCE, ONE_SIDED, fresh_wall_target, text_targets

SETUPS = {
    "digits": ("digits", "seven", "one", ""),
    "digits-untuned": ("digits", "three", "eight", "b"),
    "fashion": ("fashion-mnist", "sneaker", "sandal", ""),
    "fashion-untuned": ("fashion-mnist", "pullover", "coat", "b"),
}


# `--adversarial`: each set-up also runs `sfd demo-text --adversarial` into `<set-up>-adversarial`
# (teacher, classifier and stage 1 from the plain run's cache), its SFD model reported beside
# plain SFD as "adversarial_sfd" with its own targets.
ADVERSARIAL_SUFFIX = "-adversarial"


def command(name: str, output: Path, extra: list[str], folder: str | None = None) -> list[str]:
    """The `sfd demo-text` command line of one set-up (into `output/folder`, default its name)."""
    data, forget, override, variant = SETUPS[name]
    return [
        sys.executable, "-m", "sfd.cli", "demo-text", "--data", data,
        "--forget", forget, "--override", override,
        "--paraphrases", shown_path(shipped_paraphrases(data, variant)),
        "--output-dir", str(output / (folder or name)), "--no-progress", *extra,
    ]  # fmt: skip


# The shipped prompt files of a recorded command, wherever the package was: shown from the package.
SHIPPED_PROMPTS = re.compile(r"\S*/(sfd/apps/demo_text/prompts/\S+)")


def adversarial_options(settings: list[str]) -> list[str]:
    """`--adversarial-set KEY=VALUE` settings as `sfd demo-text` options of the adversarial run."""
    options = ["--adversarial"]
    for setting in settings:
        key, _, value = setting.partition("=")
        # A key with a dot or a dash is any demo-text option of that run alone (e.g.
        # trainer.max_steps=200, with baseline-iterations=400 to keep stage 1's own length).
        option = f"--{key}" if "." in key or "-" in key else f"--model.adversarial.{key}"
        options += [option, value]
    return options


def run_setup(
    name: str,
    output: Path,
    extra: list[str],
    family: str = "unet",
    adversarial: list[str] | None = None,
    plain: dict[str, Any] | None = None,
) -> dict:
    """Run one set-up (with `adversarial`, its settings: then again with adversarial SFD, merged;
    with `plain`, an earlier record's plain run of it (`plain_run`), not measured again)."""
    result = run(name, output, extra, family) if plain is None else plain
    if adversarial is None:
        return result
    folder = name + ADVERSARIAL_SUFFIX
    again = run(name, output, [*extra, *adversarial_options(adversarial)], family, folder)
    result["models"]["adversarial_sfd"] = again["models"]["sfd"]
    result["adversarial"] = {
        key: again[key]
        for key in ("command", "wall_seconds", "cpu_seconds", "load_before", "load_after",
                    "phase_seconds", "phase_cpu_seconds", "teacher_cached", "classifier_cached",
                    "stage1_cached")
    }  # fmt: skip
    result["adversarial"]["targets"] = text_targets(result["models"], family, "adversarial_sfd")
    return result


def run(
    name: str, output: Path, extra: list[str], family: str = "unet", folder: str | None = None
) -> dict:
    """Run one set-up's `sfd demo-text` (into `output/folder`); its metrics' targets and timings."""
    folder = folder or name
    if family != "unet":
        extra = ["--family", family, *extra]
    args = command(name, output, extra, folder)
    print("$", " ".join(args[1:]).replace("-m sfd.cli", "sfd"), flush=True)
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, check=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    timing = {
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    return setup_result(name, output / folder, " ".join(args[1:]), timing, family)


def setup_result(
    name: str, folder: Path, shown: str, timing: dict[str, Any], family: str = "unet"
) -> dict:
    """One finished `sfd demo-text` run in `folder`: its command (`shown`), timings, targets
    and the models' numbers from its metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    result = {
        "setup": name,
        "command": shown.replace("-m sfd.cli", "sfd"),
        **timing,
        "phase_seconds": metrics["protocol"]["phase_seconds"],
        "phase_cpu_seconds": metrics["protocol"].get("phase_cpu_seconds"),
        "teacher_cached": metrics["protocol"]["teacher"]["reused_from_cache"],
        "classifier_cached": metrics["protocol"]["classifier"]["reused_from_cache"],
        "stage1_cached": metrics["protocol"]["two_stage"]["stage1_reused_from_cache"],
        "torch_threads": metrics["protocol"]["environment"]["torch_threads"],
        "iterations": metrics["iterations"],
        "completion": metrics["protocol"]["two_stage"].get("stage2_completion"),
        "models": {
            key: {
                "ua": metrics[key]["forget_train"]["ua"],
                "ua_paraphrases": metrics[key]["forget_paraphrases"]["ua"],
                "forget_as_override": metrics[key]["forget_train"]["as_override"],
                "remain_accuracy": metrics[key]["remain_accuracy"],
                "neighbour_accuracy": metrics[key]["neighbour_accuracy"],
                "fid_remain": metrics[key]["fid_remain"],
                "attack_success": metrics["attack"][key]["soft"]["success_rate"],
            }
            for key in ("teacher", "distilled_without_forgetting", "sfd")
        },
    }
    result["targets"] = text_targets(result["models"], family)
    return result


def without_output_dir(command: str) -> str:
    """A recorded `sfd demo-text` command with its --output-dir value left out."""
    return re.sub(r"--output-dir \S+", "--output-dir", command)


def plain_run(
    file: str, name: str, output: Path, extra: list[str], family: str = "unet"
) -> dict[str, Any]:
    """Set-up `name`'s plain run from the benchmark record `file` (`--plain-from`), without its
    adversarial run; `Refusal` unless that record ran it with this command's `sfd demo-text`
    options (the output folder aside)."""
    options = ["--family", family, *extra] if family != "unet" else extra
    wanted = " ".join(command(name, output, options)[1:]).replace("-m sfd.cli", "sfd")
    if Path(file).is_dir():
        return finished_plain_run(Path(file), name, options, family)
    record = read_record(file, "--plain-from")
    found = [r for r in record["setups"] if r["setup"] == name and "record" not in r]
    if not found:
        raise Refusal(f"--plain-from {file}: no set-up {name!r} measured by that record")
    if without_output_dir(found[0]["command"]) != without_output_dir(wanted):
        raise Refusal(
            f"--plain-from {file}: set-up {name!r} ran `{found[0]['command']}`, not this "
            f"command's `{wanted}` (the output folder aside)"
        )
    result = {k: v for k, v in found[0].items() if k != "adversarial"}
    models = {k: v for k, v in result["models"].items() if k != "adversarial_sfd"}
    return {**result, "models": models, "plain_from": file}


def finished_plain_run(output: Path, name: str, options: list[str], family: str) -> dict:
    """Set-up `name`'s finished plain run in an earlier `--output-dir` whose benchmark stopped
    before writing its record (`--plain-from DIR`). Its command is the one this benchmark runs
    into that folder (the run records no command line: its set-up, data and family are checked);
    wall and CPU time are the run's own phase totals, the load the one at its start."""
    folder = output / name
    if not (folder / "metrics.json").is_file():
        raise Refusal(f"--plain-from {output}: no finished run in {folder} (no metrics.json)")
    metrics = json.loads((folder / "metrics.json").read_text())
    protocol, names = metrics["protocol"], metrics["class_names"]
    data, forget, override, _ = SETUPS[name]
    ran = (protocol["data"], names[metrics["forget"]], names[metrics["override"]],
           protocol["teacher_settings"].get("family", "unet"))  # fmt: skip
    if ran != (data, forget, override, family):
        raise Refusal(f"--plain-from {output}: {folder} ran {ran}, not set-up {name!r}")
    load = protocol["environment"]["load_average_1_5_15_min"]
    timing = {
        "wall_seconds": protocol["phase_seconds"]["total"],
        "cpu_seconds": protocol["phase_cpu_seconds"]["total"],
        "load_before": load,
        "load_after": load,
    }
    shown = " ".join(command(name, output, options)[1:])
    return {**setup_result(name, folder, shown, timing, family), "plain_from": str(output)}


def merged_setups(
    record: dict[str, Any], files: list[str], flag: str = "--merge"
) -> list[dict[str, Any]]:
    """The set-ups of the records in `files` (given by option `flag`), each carrying its record's
    "run" (command, date, commit, machine) and file; `Refusal` for another teacher family or a
    set-up twice."""
    family = record["run"].get("family", "unet")
    seen = {r["setup"] for r in record["setups"]}
    merged = []
    for file in files:
        other = read_record(file, flag)
        if other["run"].get("family", "unet") != family:
            raise Refusal(
                f"{flag} {file}: a --family {other['run'].get('family', 'unet')} record; this "
                f"page is --family {family}'s"
            )
        for r in other["setups"]:
            if r["setup"] in seen:
                raise Refusal(f"{flag} {file}: set-up {r['setup']!r} is already on the page")
            seen.add(r["setup"])
            merged.append({**r, "run": r.get("run", other["run"]), "record": r.get("record", file)})
    return merged


def fresh_setups(record: dict[str, Any], files: list[str]) -> list[dict[str, Any]]:
    """The set-ups of the records in `files` (`--fresh`), marked "fresh", each with its record's
    run and file; `Refusal` for another teacher family or a run that reused a cache."""
    fresh = merged_setups({"run": record["run"], "setups": []}, files, "--fresh")
    for r in fresh:
        reused = [k for k in ("teacher", "classifier", "stage1") if r[f"{k}_cached"]]
        if reused:
            raise Refusal(
                f"--fresh {r['record']}: set-up {r['setup']!r} reused the cached {reused[0]}; "
                "a fresh run trains teacher, classifier and stage 1 itself"
            )
    return [{**r, "fresh": True} for r in fresh]


def section_title(r: dict[str, Any]) -> str:
    """A set-up's section title: its name, "<name>, fresh caches" for a `--fresh` run."""
    return f"{r['setup']}, fresh caches" if r.get("fresh") else r["setup"]


def replaced_setups(record: dict[str, Any], files: list[str]) -> list[dict[str, Any]]:
    """The record's set-ups with those of the records in `files` in their places (the same set-up
    measured again, shown under the command that measured it); `Refusal` for another teacher
    family, a set-up twice in `files` or one that is not in the record (`--merge` adds those)."""
    newer = merged_setups({"run": record["run"], "setups": []}, files, "--replace")
    missing = [
        r["setup"] for r in newer if r["setup"] not in {s["setup"] for s in record["setups"]}
    ]
    if missing:
        raise Refusal(f"--replace: set-up {missing[0]!r} is not on the page; --merge adds it")
    by_name = {r["setup"]: r for r in newer}
    return [by_name.get(r["setup"], r) for r in record["setups"]]


def measured_by(r: dict[str, Any]) -> list[str]:
    """Where a merged set-up was measured: its record's command, date, commit and load."""
    if "run" not in r:
        return []
    run = r["run"]
    commit = run["commit"]["hash"] + (" + uncommitted changes" if run["commit"]["dirty"] else "")
    load = run["machine"]
    return [
        f"Measured by `{run['command']}` ({run['date']}, commit {commit}, load "
        f"{load['load_average_start']} -> {load['load_average_end']}; record `{r['record']}`).",
        "",
    ]


def setup_section(r: dict[str, Any], family: str = "unet") -> str:
    """One set-up: its command, timings and caches, the models' numbers, then the targets, checked
    now (`text_targets` on the recorded numbers: a record's stored targets may be an older
    issue's)."""
    models = markdown_table(
        ("model", "UA", "UA paraphrases", "remain acc.", "neighbour acc.", "FID", "soft attack"),
        [
            (
                key, f"{100 * m['ua']:.1f} %", f"{100 * m['ua_paraphrases']:.1f} %",
                f"{100 * m['remain_accuracy']:.1f} %", f"{100 * m['neighbour_accuracy']:.1f} %",
                f"{m['fid_remain']:.3f}", f"{100 * m['attack_success']:.1f} %",
            )
            for key, m in r["models"].items()
        ],
    )  # fmt: skip
    plain_from = (
        [f"Plain run (teacher, no-forgetting and SFD rows) from `{r['plain_from']}` "
         "(`--plain-from`), not measured again:", ""]
        if "plain_from" in r
        else []
    )  # fmt: skip
    lines = [*measured_by(r), *plain_from, *run_lines(r), "", models, "",
             targets_table(text_targets(r["models"], family))]  # fmt: skip
    for name, t in (
        fresh_wall_target(r["setup"], r["wall_seconds"]) if r.get("fresh") else {}
    ).items():
        lines += ["", f"Fresh caches (teacher, classifier and stage 1 trained in this run): "
                  f"{name} {t['value']:.1f} min: {'met' if t['met'] else 'missed'}."]  # fmt: skip
    if "adversarial" in r:
        lines += [
            "",
            "Adversarial SFD (`--adversarial`, the row adversarial_sfd above; teacher and "
            "no-forgetting rows from the plain run):",
            "",
            *run_lines(r["adversarial"]),
            "",
            targets_table(text_targets(r["models"], family, "adversarial_sfd")),
        ]
    return "\n".join(lines)


def run_lines(r: dict[str, Any]) -> list[str]:
    """One `sfd demo-text` run: its command, then its timings and caches."""
    command = SHIPPED_PROMPTS.sub(r"\1", r["command"])
    return [
        f"`{command}`",
        "",
        f"wall {r['wall_seconds'] / 60:.1f} min, CPU {r['cpu_seconds'] / 60:.1f} min, load "
        f"{r['load_before']} -> {r['load_after']}, cached: teacher {r['teacher_cached']}, "
        f"classifier {r['classifier_cached']}, stage 1 {r['stage1_cached']}; phases (s): "
        f"{r['phase_seconds']}"
        + (
            f"; phases, CPU of the run (s): {r['phase_cpu_seconds']}"
            if r.get("phase_cpu_seconds")
            else ""
        ),
    ]


def targets_table(targets: dict[str, dict[str, Any]]) -> str:
    """The targets of one SFD model: value and whether it is met, and how the accuracy targets
    read (one-sided)."""
    return (
        markdown_table(
            ("target", "value", "met"),
            [
                (name, "—", "not measured")  # e.g. the white-box soft attack under transfer only
                if t["met"] is None
                else (name, f"{t['value']:.3f}", "yes" if t["met"] else "no")
                for name, t in targets.items()
            ],
        )
        + f"\n\n{ONE_SIDED} {DIFFERENCE}"
    )


# The flow page's missed targets: what was tried for each, on other results pages (shown under the
# targets table for a target that a set-up misses).
FLOW_TRIED = {
    "soft_attack_at_most_half_of_no_forgetting": (
        "adversarial SFD (`--adversarial`, the adversarial_sfd row of a set-up that ran it); "
        "its settings (pool refresh, inner steps and rows, rows that start from remain "
        "prompts, `model.adversarial.remain_starts`) on "
        "[Adversarial SFD, flow teacher: attacks from any prompt](flow_robust.md); what the inner "
        "attack finds against the plain SFD generator on "
        "[Adversarial SFD diagnosis, flow teacher](flow_adversarial_diagnosis.md); why the attack "
        "reaches the concept from any prompt: [where the attack starts](attack_reach.md) and "
        "docs/method.md §5"
    ),
    "ua_train_at_least_99": (
        "the completion rule's data-free judge (it stops stage 2) against the evaluation "
        "classifier on this teacher's sneaker and sandal samples, level by level, on "
        "[The judge, level by level](judge_levels.md); the classifier's UA ceiling for the "
        "Fashion-MNIST pairs (real override images it reads as the forget class) on "
        "[Evaluation classifiers](classifier.md); what the classifier reads of this teacher's own "
        "override samples at each guidance scale, and so the teacher's guidance on the override "
        "in the unlearning term (`model.override_guidance`, 4.5 in the Fashion preset), on "
        "[The teacher's own override samples, by guidance](override_guidance.md)"
    ),
    "ua_paraphrases_at_least_95": "as for ua_train_at_least_99",
    "fid_at_most_1.5x_teacher": (
        "for adversarial SFD, its settings (among them the posterior weight and "
        "`model.adversarial.remain_starts`) and the remain FID of each on "
        "[Adversarial SFD, flow teacher: attacks from any prompt](flow_robust.md)"
    ),
}


def targets_summary(setups: list[dict[str, Any]], family: str = "sd3") -> str:
    """The flow page's first section: every set-up's targets, met or missed, per SFD model, and
    what was tried for the missed ones (`FLOW_TRIED`)."""
    names = list(
        dict.fromkeys(n for r in setups for t in model_targets(r, family).values() for n in t)
    )
    names += [n for r in setups if r.get("fresh") for n in fresh_wall_target(r["setup"], 0)]
    rows, missed = [], {}
    for r in setups:
        tuned = "no" if SETUPS[r["setup"]][3] else "yes"
        for model, targets in model_targets(r, family).items():
            if r.get("fresh") and model == "sfd":  # the run's wall time (teacher to report)
                targets = {**targets, **fresh_wall_target(r["setup"], r["wall_seconds"])}
            cells = []
            for name in names:
                t = targets.get(name)
                if t is None or t["met"] is None:
                    cells.append("not measured" if t else None)
                    continue
                cells.append(f"{'yes' if t['met'] else '**no**'} ({t['value']:.3f})")
                if not t["met"]:
                    missed.setdefault(name, []).append(f"{section_title(r)} ({model})")
            rows.append((section_title(r), tuned, model, *cells))
    lines = [
        "Each target of each set-up below, met or missed (value as in its section's table); "
        "'tuned on': whether the demo's settings were tuned on that concept pair and "
        "paraphrase set; '–': a target that does not apply to that row (the wall time of a "
        "fresh run, whose value is in minutes, applies to the runs with fresh caches only).",
        "",
        markdown_table(("set-up", "tuned on", "model", *names), rows),
    ]
    if missed:
        lines += ["", "Missed:", ""]
        for name, where in missed.items():
            tried = f" Tried: {FLOW_TRIED[name]}." if name in FLOW_TRIED else ""
            lines.append(f"- {name}: {', '.join(where)}.{tried}")
    return "\n".join(lines)


def model_targets(r: dict[str, Any], family: str) -> dict[str, dict[str, dict[str, Any]]]:
    """A set-up's targets per SFD model ("sfd", and "adversarial_sfd" when it ran), checked now
    on the recorded numbers as its section's tables are (`text_targets`)."""
    return {
        model: text_targets(r["models"], family, model)
        for model in ("sfd", "adversarial_sfd")
        if model in r["models"]
    }


def markdown(results: list[dict], family: str = "unet") -> str:
    """benchmark.md: one section per set-up."""
    lines = ["# Text-to-image concept-forgetting benchmark", ""]
    for r in results:
        lines += [f"## {r['setup']}", "", setup_section(r, family), ""]
    return "\n".join(lines)


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/text.md (flow_text.md for the flow teacher) from a benchmark.json record."""
    family = record["run"].get("family", "unet")
    flow = family == "sd3"
    sections = {section_title(r): setup_section(r, family) for r in record["setups"]}
    if flow:
        sections = {"Issue 20's targets": targets_summary(record["setups"], family), **sections}
    if "page_command" in record:
        first = next(iter(sections))
        sections[first] = (
            f"This page was put together by `{record['page_command']}` (each set-up's numbers "
            "from the record named in its section).\n\n" + sections[first]
        )
    return write_page(
        "flow_text" if flow else "text",
        "Text-to-image concept forgetting on a flow-matching teacher (`sfd demo-text --family sd3`)"
        if flow
        else "Text-to-image concept forgetting (`sfd demo-text`)",
        record["run"]["command"],
        json_file,
        record,
        sections,
        results_dir,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/text-benchmark"))
    parser.add_argument("--only", nargs="+", choices=sorted(SETUPS), help="set-ups to run")
    parser.add_argument(
        "--family", choices=("unet", "sd3"), default="unet", help="the teacher (demo-text --family)"
    )
    parser.add_argument(
        "--adversarial",
        action="store_true",
        help="also run each set-up with adversarial SFD (demo-text --adversarial) and report it "
        "beside plain SFD",
    )
    parser.add_argument(
        "--adversarial-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a setting of the adversarial run only (--model.adversarial.KEY VALUE; a KEY with a "
        "dot or a dash is --KEY VALUE, e.g. trainer.max_steps=200 with baseline-iterations=400, "
        "stage 1's own length, to cap stage 2 alone; implies --adversarial), e.g. steps=4",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=[],
        metavar="FILE.json",
        help="also show the set-ups of these earlier records (same --family), each under the "
        "command that measured it",
    )
    parser.add_argument(
        "--replace",
        nargs="+",
        default=[],
        metavar="FILE.json",
        help="with --page-from: the set-ups of these newer records (same --family) take the "
        "places of the same set-ups on the page, each under the command that measured it",
    )
    parser.add_argument(
        "--plain-from",
        metavar="FILE.json|DIR",
        help="take each set-up's plain run from this earlier record (the same sfd demo-text "
        "options), or from the finished plain runs in an earlier --output-dir whose benchmark "
        "was stopped before writing its record, and measure only the adversarial run (needs "
        "--adversarial or --adversarial-set)",
    )
    parser.add_argument(
        "--fresh",
        nargs="+",
        default=[],
        metavar="FILE.json",
        help="with --page-from: add the set-ups of these records, run with fresh caches, in "
        "sections of their own with their wall time against issue 20's fresh-run target",
    )
    add_page_arguments(parser)
    options, extra = parser.parse_known_args(argv)
    if options.replace and not options.page_from:
        parser.error("--replace rewrites a page's set-ups: use it with --page-from")
    if options.fresh and not options.page_from:
        parser.error("--fresh adds measured runs to a page: use it with --page-from")
    if options.page_from:
        record = read_record(options.page_from)
        record["setups"] = replaced_setups(record, options.replace)
        record["setups"] += merged_setups(record, options.merge)
        record["setups"] += fresh_setups(record, options.fresh)
        if options.replace or options.merge or options.fresh:  # no longer the record's alone
            record["page_command"] = command_line(__file__, argv)
        print(write_results_page(record, options.page_from))
        return
    extra = [a for a in extra if a != "--"]
    load_start = os.getloadavg()
    bad = [a for a in options.adversarial_set if "=" not in a or a.startswith("=")]
    if bad:
        parser.error(f"--adversarial-set {bad[0]!r}: expected KEY=VALUE, e.g. steps=4")
    adversarial = (
        options.adversarial_set if options.adversarial or options.adversarial_set else None
    )
    if options.plain_from and adversarial is None:
        parser.error("--plain-from measures only the adversarial run: add --adversarial")
    names = options.only or list(SETUPS)
    planned = {"run": {"family": options.family}, "setups": [{"setup": n} for n in names]}
    merged_setups(planned, options.merge)  # refused before anything is measured
    plain = {
        name: plain_run(options.plain_from, name, options.output_dir, extra, options.family)
        for name in (names if options.plain_from else [])
    }  # refused before anything is measured
    commit = git_commit()  # the code the set-ups' subprocesses start with
    results = [
        run_setup(name, options.output_dir, extra, options.family, adversarial, plain.get(name))
        for name in names
    ]
    threads = sorted({r["torch_threads"] for r in results})
    context = run_context(
        command_line(__file__, argv), load_start, ", ".join(str(t) for t in threads), commit
    )
    if options.family != "unet":
        context["family"] = options.family
    results += merged_setups({"run": context, "setups": results}, options.merge)
    json_file = options.output_dir / "benchmark.json"
    save_record({"run": context, "setups": results}, json_file)
    (options.output_dir / "benchmark.md").write_text(markdown(results, options.family))
    print(markdown(results, options.family))
    if not options.no_page:
        print(write_results_page({"run": context, "setups": results}, str(json_file)))


if __name__ == "__main__":
    main()
