"""The data-free judge (sfd/core/judge.py) against the evaluation classifier, level by level.

    python experiments/judge_levels.py \
        --case NAME TEACHER_FOLDER CLASSIFIER_FOLDER FORGET OVERRIDE [GENERATOR_FOLDER ...] \
        [--case ...] [--samples 200] [--threads 1] [--json runs/judge/judge_levels.json]
    python experiments/judge_levels.py --case NAME RUN_FOLDER RUN_FOLDER FORGET OVERRIDE ...
    python experiments/judge_levels.py --page-from runs/judge/judge_levels.json

For each case (a text-demo teacher folder, its evaluation classifier, a forget and an override
class by name or index, optionally exported one-step generators of the pair; the teacher and the
classifier may be given as a finished `sfd demo-text` run folder, which stands for the teacher and
the classifier its metrics.json records, so the command names no hash-named cache folder) it draws
N samples of
the training captions of the forget class and of the override class from the teacher under its own
sampler (the evaluation's: 28 flow Euler steps for an SD3 teacher, 25 DDIM steps for a UNet one,
guidance 1.25), and N forget-caption samples from each generator. For every sample set it reports

- what the classifier reads: the share read as the forget class (1 − UA for forget prompts) and as
  the override class;
- what the judge reads at its defaults (σ 0.4, 0.8, 1.6 averaged, 2 draws each, as the completion
  rule runs it) and at each of those levels alone: the share judged forget;
- how the two agree: of the samples the classifier reads as the forget class, how many the judge
  (defaults) calls forget.

The teacher's own override samples bound what any forgetting that redirects the forget prompts to
the override class can reach on the classifier: a generator that draws exactly the teacher's override
class is read as the forget class as often as those samples are. The page says, per case, how far
apart judge and classifier read such a generator, against issue 24's agreement target
(`pairs_benchmark.AGREEMENT`). Writes the JSON record and docs/results/judge_levels.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pairs_benchmark import AGREEMENT
from results_page import (
    Refusal,
    add_page_arguments,
    command_line,
    markdown_table,
    read_record,
    run_context,
    save_record,
    write_page,
)

from sfd.apps.harness.text_folders import load_text_model
from sfd.core import judge
from sfd.core.conditions.base import ConditionBatch
from sfd.eval.classifier import CONFIG_NAME as CLASSIFIER_CONFIG
from sfd.eval.classifier import load_classifier, predict_labels

GUIDANCE = 1.25  # the text presets' teacher guidance, the evaluation's too


def class_index(value: str, class_names: list[str]) -> int:
    """A class given by index or by its name in the teacher's sfd.json."""
    if value.isdigit() and int(value) < len(class_names):
        return int(value)
    lowered = [n.lower() for n in class_names]
    if value.lower() not in lowered:
        raise Refusal(f"class {value!r} is not one of {', '.join(class_names)}")
    return lowered.index(value.lower())


@dataclass(frozen=True)
class Case:
    """One `--case NAME TEACHER CLASSIFIER FORGET OVERRIDE [GENERATOR ...]`, checked before
    anything loads (`check_case`): the folders resolved, the classes as indices."""

    name: str
    teacher_given: str
    teacher: str
    classifier_given: str
    classifier: str
    forget: int
    override: int
    meta: dict[str, Any]
    generators: tuple[str, ...] = ()


def check_case(spec: list[str], generators: bool) -> Case:
    """The case of a `--case` option, or `Refusal` (one line, exit 2) for a wrong count of
    arguments, a folder that is not a text teacher / classifier / generator, or an unknown class.

    Args:
        spec: the option's arguments.
        generators: whether generator folders may follow the classes (judge_levels.py).
    """
    usage = "NAME TEACHER CLASSIFIER FORGET OVERRIDE" + (" [GENERATOR ...]" if generators else "")
    if len(spec) < 5 or (len(spec) > 5 and not generators):
        raise Refusal(f"--case {' '.join(spec)}: expected {usage}")
    name, teacher_given, classifier_given, forget_name, override_name, *folders = spec
    teacher = model_folder(teacher_given, "teacher")
    classifier = model_folder(classifier_given, "classifier")
    if not (Path(teacher) / "sfd.json").is_file():
        raise Refusal(
            f"--case {name}: {teacher_given!r} is not a text teacher folder (no sfd.json)"
        )
    if not (Path(classifier) / CLASSIFIER_CONFIG).is_file():
        raise Refusal(
            f"--case {name}: {classifier_given!r} is not a saved classifier (no {CLASSIFIER_CONFIG})"
        )
    for folder in folders:
        if not (Path(folder) / "model_index.json").is_file():
            raise Refusal(f"--case {name}: generator {folder!r} is not an exported pipeline folder")
    meta = json.loads((Path(teacher) / "sfd.json").read_text())
    forget, override = (class_index(v, meta["class_names"]) for v in (forget_name, override_name))
    return Case(
        name, teacher_given, teacher, classifier_given, classifier, forget, override, meta,
        tuple(folders),
    )  # fmt: skip


def captions(meta: dict[str, Any], label: int, n: int) -> list[str]:
    """n training captions of class `label`: templates × names, cycled (template-major)."""
    names, templates = meta["names"][label], meta["templates"]
    every = [t.format(name=name) for name in names for t in templates]
    return [every[i % len(every)] for i in range(n)]


def set_threads(threads: int | None) -> None:
    """torch's CPU threads (None: its default); `Refusal` below 1."""
    if threads is not None and threads < 1:
        raise Refusal(f"--threads {threads} must be at least 1")
    if threads is not None:
        torch.set_num_threads(threads)


def model_folder(folder: str, key: str) -> str:
    """`folder` itself, or, for a finished demo run folder (one with a metrics.json), the folder of
    its `key` ("teacher" or "classifier") that the run's record names."""
    metrics = Path(folder) / "metrics.json"
    if not metrics.is_file():
        return folder
    return json.loads(metrics.read_text())["protocol"][key]["folder"]


def judge_draws(shape: tuple[int, ...], n: int, seed: int) -> judge.JudgeDraws:
    """The judge's noise at its default levels and draws (the completion rule's), fixed by seed."""
    generator = torch.Generator().manual_seed(seed)
    levels = torch.tensor(judge.DEFAULT_SIGMAS).repeat_interleave(2)
    noise = torch.randn((len(levels), n, *shape), generator=generator)
    return judge.JudgeDraws(ConditionBatch(None, None, None), noise[0], noise[0], levels, noise)


def one_level(draws: judge.JudgeDraws, sigma: float) -> judge.JudgeDraws:
    """The same draws restricted to one noise level."""
    keep = draws.sigmas == sigma
    return judge.JudgeDraws(
        draws.conditions, draws.z_forget, draws.z_remain, draws.sigmas[keep], draws.noise[keep]
    )


@torch.no_grad()
def readings(
    teacher: Any, classifier: Any, decode: Any, x: torch.Tensor, forget_cond: Any,
    override_cond: Any, forget: int, override: int, draws: judge.JudgeDraws,
) -> dict[str, Any]:  # fmt: skip
    """What the classifier and the judge read of latents x (N, C, H, W)."""
    labels = predict_labels(classifier, decode(x).clamp(-1, 1))
    read_forget = labels == forget
    judged = judge.judged_forget(teacher, x, forget_cond, override_cond, draws)
    per_level = {
        f"{s:g}": float(
            judge.judged_forget(teacher, x, forget_cond, override_cond, one_level(draws, s))
            .float()
            .mean()
        )
        for s in judge.DEFAULT_SIGMAS
    }
    return {
        "n": len(x),
        "classifier_forget": float(read_forget.float().mean()),
        "classifier_override": float((labels == override).float().mean()),
        "judged_forget": float(judged.float().mean()),
        "judged_forget_per_level": per_level,
        "classifier_forget_count": int(read_forget.sum()),
        "classifier_forget_judged_forget": int((read_forget & judged).sum()),
    }


def measure_case(case: Case, samples: int, seed: int) -> dict[str, Any]:
    name, teacher_given, teacher_dir = case.name, case.teacher_given, case.teacher
    classifier_given, classifier_dir = case.classifier_given, case.classifier
    meta, forget, override, generators = case.meta, case.forget, case.override, case.generators
    teacher_steps = 28 if meta.get("family") == "sd3" else 25
    teacher_model = load_text_model(teacher_dir, teacher_steps, GUIDANCE)
    teacher = teacher_model.network
    classifier = load_classifier(classifier_dir)
    encoder = teacher_model.encoder
    forget_cond = encoder.condition(captions(meta, forget, samples))
    override_cond = encoder.condition(captions(meta, override, samples))
    shape = tuple(teacher_model.latent_shape)
    noise = torch.randn((2, samples, *shape), generator=torch.Generator().manual_seed(seed))
    draws = judge_draws(shape, samples, seed + 1)

    def read(x: torch.Tensor) -> dict[str, Any]:
        return readings(
            teacher, classifier, teacher_model.decode, x, forget_cond, override_cond,
            forget, override, draws,
        )  # fmt: skip

    with torch.no_grad():
        sets = {
            f"teacher ({teacher_steps} steps), forget prompts": read(
                teacher_model.denoise(noise[0], forget_cond)
            ),
            f"teacher ({teacher_steps} steps), override prompts": read(
                teacher_model.denoise(noise[1], override_cond)
            ),
        }
        for folder in generators:
            model = load_text_model(folder)
            sets[f"generator {folder}, forget prompts"] = read(model.denoise(noise[0], forget_cond))
    return {
        "name": name,
        "teacher": teacher_dir,
        "teacher_given": teacher_given,
        "family": meta.get("family", "unet"),
        "classifier": classifier_dir,
        "classifier_given": classifier_given,
        "forget": meta["class_names"][forget],
        "override": meta["class_names"][override],
        "guidance": GUIDANCE,
        "sets": sets,
    }


def percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def case_section(case: dict[str, Any]) -> str:
    levels = list(next(iter(case["sets"].values()))["judged_forget_per_level"])
    header = (
        "samples",
        "classifier: forget",
        "classifier: override",
        "judge: forget (defaults)",
        *(f"judge σ = {s}" for s in levels),
        "classifier-forget judged forget",
    )
    rows = [
        (
            label,
            percent(r["classifier_forget"]),
            percent(r["classifier_override"]),
            percent(r["judged_forget"]),
            *(percent(r["judged_forget_per_level"][s]) for s in levels),
            f"{r['classifier_forget_judged_forget']} of {r['classifier_forget_count']}",
        )
        for label, r in case["sets"].items()
    ]
    n = next(iter(case["sets"].values()))["n"]
    return (
        f"{case['family']} teacher {shown(case, 'teacher')}, classifier "
        f"{shown(case, 'classifier')}; forget {case['forget']}, override {case['override']}; {n} "
        f"samples a set (training captions), guidance {case['guidance']}.\n\n"
        + markdown_table(header, rows)
        + floor(case)
    )


def shown(case: dict[str, Any], key: str) -> str:
    """The teacher or classifier as the command gave it: the folder, or the demo run standing
    for it (records from before runs could stand for them give the folder)."""
    given = case.get(f"{key}_given", case[key])
    if given == case[key]:
        return f"`{given}`"
    return f"of the run `{given}`"


def floor(case: dict[str, Any]) -> str:
    """What the teacher's own override samples bound: the UA the classifier and the judge give a
    generator that draws exactly them for the forget prompts, and whether the two are within issue
    24's agreement target there. Empty when the case has no such set."""
    found = [r for label, r in case["sets"].items() if label.endswith("override prompts")]
    if not found:
        return ""
    read, judged = found[0]["classifier_forget"], found[0]["judged_forget"]
    gap = read - judged
    verdict = (
        f"more than the {100 * AGREEMENT:.0f} points issue 24 allows between them at the stop: "
        "with this classifier, the agreement target cannot be met on this pair by a generator that "
        f"draws the teacher's {case['override']}s"
        if abs(gap) > AGREEMENT
        else f"within the {100 * AGREEMENT:.0f} points issue 24 allows between them at the stop"
    )
    return (
        f"\n\nThe classifier's floor: it reads {percent(read)} of the teacher's own "
        f"{case['override']} samples as {case['forget']} (the judge: {percent(judged)}). A "
        f"generator that draws exactly these {case['override']}s for the {case['forget']} prompts, "
        f"what forgetting by redirection to the override aims for, gets UA {percent(1 - read)} from "
        f"the classifier and {percent(1 - judged)} from the judge: {100 * abs(gap):.1f} points "
        f"apart, {verdict}."
    )


def write_results_page(record: dict[str, Any], json_file: str) -> str:
    sections = {case["name"]: case_section(case) for case in record["cases"]}
    return str(
        write_page(
            "judge_levels",
            "The data-free judge against the evaluation classifier, level by level",
            record["run"]["command"],
            json_file,
            record,
            sections,
        )
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--case", nargs="+", action="append", default=[], metavar="ARG")
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default="runs/judge/judge_levels.json")
    add_page_arguments(parser)
    args = parser.parse_args(argv)
    if args.page_from:
        print(write_results_page(read_record(args.page_from), args.page_from))
        return
    if not args.case:
        parser.error("give at least one --case")
    if args.samples < 1:
        parser.error(f"--samples {args.samples} must be at least 1")
    checked = [check_case(spec, generators=True) for spec in args.case]
    set_threads(args.threads)
    load_start = os.getloadavg()
    cases = [measure_case(case, args.samples, args.seed) for case in checked]
    record = {"run": run_context(command_line(__file__, argv), load_start), "cases": cases}
    save_record(record, args.json)
    for case in cases:
        print(case_section(case))
    if not args.no_page:
        print(write_results_page(record, args.json))


if __name__ == "__main__":
    main()
