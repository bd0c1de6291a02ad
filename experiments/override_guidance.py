"""What the evaluation classifier reads of a text teacher's own override samples, by guidance.

    python experiments/override_guidance.py \
        --case NAME TEACHER CLASSIFIER FORGET OVERRIDE [--case ...] \
        [--guidance 1 1.25 2 3 4.5] [--samples 200] [--threads 1] \
        [--json runs/override_guidance/override_guidance.json]
    python experiments/override_guidance.py --page-from runs/override_guidance/override_guidance.json

SFD's unlearning term pulls the generator's forget-prompt samples to the teacher's override
concept, guided at `model.override_guidance` (`teacher_guidance` when unset; docs/method.md §4).
A generator that draws exactly the teacher's override samples for the forget prompts is read as
the forget class as often as those samples are: that share bounds the UA that forgetting by
redirection can reach on the evaluation classifier, whatever SFD's other settings. For each case
(a text-demo teacher folder and its evaluation classifier, or a finished `sfd demo-text` run
folder standing for both, as in judge_levels.py; a forget and an override class by name or index)
this draws N samples of the override class's training captions from the teacher under its own
sampler (28 flow Euler steps for an SD3 teacher, 25 DDIM steps for a UNet one) at each guidance
scale, the same noise for every scale, and reports the share the classifier reads as the forget
class and as the override class. Where the case names a demo run folder, the page also gives that
run's UA ceiling on real override images (metrics.json). Writes the JSON record and
docs/results/override_guidance.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from judge_levels import Case, captions, check_case, percent, set_threads
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
from sfd.eval.classifier import load_classifier, predict_labels

GUIDANCE = (1.0, 1.25, 2.0, 3.0, 4.5)  # the text presets' 1.25 and the SD reference's 4.5


def real_ceiling(folder: str) -> float | None:
    """The UA ceiling on real override images a demo run recorded (None: not a run folder)."""
    metrics = Path(folder) / "metrics.json"
    if not metrics.is_file():
        return None
    return json.loads(metrics.read_text())["protocol"].get("ua_ceiling")


def measure_case(case: Case, scales: list[float], samples: int, seed: int) -> dict[str, Any]:
    name, teacher_dir, meta = case.name, case.teacher, case.meta
    teacher_given, classifier_given = case.teacher_given, case.classifier_given
    forget, override = case.forget, case.override
    classifier = load_classifier(case.classifier)
    steps = 28 if meta.get("family") == "sd3" else 25
    rows = []
    for scale in scales:
        model = load_text_model(teacher_dir, steps, scale)
        cond = model.encoder.condition(captions(meta, override, samples))
        noise = torch.randn(
            (samples, *model.latent_shape), generator=torch.Generator().manual_seed(seed)
        )
        with torch.no_grad():
            labels = predict_labels(
                classifier, model.decode(model.denoise(noise, cond)).clamp(-1, 1)
            )
        rows.append(
            {
                "guidance": scale,
                "read_as_forget": float((labels == forget).float().mean()),
                "read_as_override": float((labels == override).float().mean()),
                "histogram": torch.bincount(labels, minlength=len(meta["class_names"])).tolist(),
            }
        )
        print(f"{name}: guidance {scale:g}: {rows[-1]}", flush=True)
    return {
        "name": name,
        "teacher": teacher_dir,
        "teacher_given": teacher_given,
        "classifier_given": classifier_given,
        "family": meta.get("family", "unet"),
        "steps": steps,
        "samples": samples,
        "forget": meta["class_names"][forget],
        "override": meta["class_names"][override],
        "real_ceiling": real_ceiling(classifier_given),
        "rows": rows,
    }


def case_section(case: dict[str, Any]) -> str:
    forget, override = case["forget"], case["override"]
    header = (
        "guidance",
        f"read as {forget}",
        f"read as {override}",
        f"UA of a generator that draws exactly these {override}s",
    )
    rows = [
        (
            f"{r['guidance']:g}",
            percent(r["read_as_forget"]),
            percent(r["read_as_override"]),
            percent(1 - r["read_as_forget"]),
        )
        for r in case["rows"]
    ]
    ceiling = case.get("real_ceiling")
    real = (
        ""
        if ceiling is None
        else f" On real {override} images the classifier's UA ceiling is {percent(ceiling)} "
        f"(the run `{case['classifier_given']}`'s metrics.json)."
    )
    return (
        f"{case['family']} teacher `{case['teacher_given']}` ({case['steps']} steps), "
        f"{case['samples']} samples of the {override} training captions per guidance scale, the "
        f"same noise at every scale; forget class {forget}.{real}\n\n"
        + markdown_table(header, rows)
    )


def write_results_page(record: dict[str, Any], json_file: str) -> str:
    sections = {case["name"]: case_section(case) for case in record["cases"]}
    return str(
        write_page(
            "override_guidance",
            "The teacher's own override samples, by guidance",
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
    parser.add_argument("--guidance", nargs="+", type=float, default=list(GUIDANCE))
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default="runs/override_guidance/override_guidance.json")
    add_page_arguments(parser)
    args = parser.parse_args(argv)
    if args.page_from:
        print(write_results_page(read_record(args.page_from), args.page_from))
        return
    if not args.case:
        parser.error("give at least one --case")
    if args.samples < 1:
        parser.error(f"--samples {args.samples} must be at least 1")
    for scale in args.guidance:
        if not (math.isfinite(scale) and scale >= 1):
            raise Refusal(f"--guidance {scale}: a guidance scale is a finite number of at least 1")
    checked = [check_case(spec, generators=False) for spec in args.case]
    set_threads(args.threads)
    load_start = os.getloadavg()
    cases = [measure_case(case, args.guidance, args.samples, args.seed) for case in checked]
    record = {"run": run_context(command_line(__file__, argv), load_start), "cases": cases}
    save_record(record, args.json)
    for case in cases:
        print(case_section(case))
    if not args.no_page:
        print(write_results_page(record, args.json))


if __name__ == "__main__":
    main()
