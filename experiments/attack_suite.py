"""The attack suite and the revival test on a text demo's report folder: plain SFD against the
generator that forgot nothing (stage 1), judged by the report's evaluation classifier.

Reads RUN (an `sfd demo-text` output folder: generator/, generator_without_forgetting/,
classifier/, prompts/, metrics.json for the concept pair), runs the soft-prompt and the discrete
prompt attacks at the given budgets on the first training forget prompt, the paraphrases' success,
and the revival test, writes the JSON record and docs/results/attacks.md. With `--class-run` (an
`sfd demo` output folder) instead: the class-embedding attack and the revival test of the class
generators, into docs/results/attacks_class.md.

    python experiments/attack_suite.py --run demo-text-output --revival 40
    python experiments/attack_suite.py --class-run demo-output --revival 40 \
        --json runs/attacks/attacks_class.json
"""

from __future__ import annotations

import argparse
import json
import os
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

MODELS = {"sfd": "generator", "distilled_without_forgetting": "generator_without_forgetting"}
TITLES = {
    "sfd": "one-step SFD",
    "distilled_without_forgetting": "one-step, no forgetting",
    "esd": "ESD (DDIM)",
    "salun": "SalUn (DDIM)",
}
BASELINES = ("esd", "salun")  # teacher folders under an `sfd compare` output's models/


def measure(options: argparse.Namespace) -> dict[str, Any]:
    """Run the suite and the revival test on both generators of the report folder."""
    import torch

    from sfd.apps.data.captions import load_captioned, read_labelled
    from sfd.apps.data.images import train_heldout_split
    from sfd.apps.harness.text_evaluation import (
        ConceptProtocol,
        attack_model,
        exported_model,
        revival_test,
    )
    from sfd.core.conditions.text import read_prompt_file
    from sfd.eval.attack_budget import AttackBudget, DiscreteAttackBudget, RevivalBudget
    from sfd.eval.classifier import load_classifier
    from sfd.eval.concepts import PromptSet, evaluate_forget_set

    torch.set_num_threads(options.threads)
    run = Path(options.run)
    metrics = json.loads((run / "metrics.json").read_text())
    forget, override = metrics["forget"], metrics["override"]
    classifier = load_classifier(run / "classifier")
    prompts = run / "prompts"
    train_prompts = read_prompt_file(str(prompts / "forget_prompts.txt"))
    paraphrases = read_prompt_file(str(prompts / "forget_paraphrases.txt"))
    protocol = ConceptProtocol(
        forget_train=PromptSet("forget_train", train_prompts, [forget] * len(train_prompts)),
        remain=read_labelled(prompts / "remain_prompts.csv"),
        forget=forget,
        override=override,
        neighbours=[],
        num_classes=metrics["num_classes"],
        forget_images=options.ua_images,
        seed=0,
    )
    data, _ = load_captioned(metrics["protocol"]["data"])
    _, heldout = train_heldout_split(data, metrics["protocol"].get("heldout_fraction", 0.2), 0)
    budgets = {
        "soft": AttackBudget(
            num_tokens=options.tokens, steps=options.steps, restarts=options.restarts
        ),
        "discrete": DiscreteAttackBudget(
            num_tokens=options.tokens, steps=options.discrete_steps, restarts=options.restarts
        ),
    }
    revival = RevivalBudget(steps=options.revival)
    models: dict[str, Any] = {}
    for key, folder in MODELS.items():
        model = exported_model(run / folder)
        entry: dict[str, Any] = {"attacks": {}, "seconds": {}}
        for name, budget in budgets.items():
            start = time.perf_counter()
            entry["attacks"][name] = attack_model(model, classifier, protocol, budget)
            entry["seconds"][name] = round(time.perf_counter() - start, 1)
            print(f"{key} {name}: {100 * entry['attacks'][name]['success_rate']:.1f} %")
        para = PromptSet("forget_paraphrases", paraphrases, [forget] * len(paraphrases))
        result = evaluate_forget_set(model, classifier, para, [forget], [override],
                                     protocol.num_classes, options.ua_images, 1)  # fmt: skip
        entry["attacks"]["paraphrases"] = {
            "success_rate": 1.0 - result.ua,
            "budget": {"images": result.num_images, "prompts": len(paraphrases)},
        }
        start = time.perf_counter()
        entry["revival"] = revival_test(model, classifier, protocol, heldout, revival).to_dict()
        entry["seconds"]["revival"] = round(time.perf_counter() - start, 1)
        print(f"{key} revival UA: {entry['revival']['ua']}")
        models[key] = entry
    return {"run_folder": str(run), "forget": forget, "override": override, "models": models,
            "budgets": {name: vars(b) for name, b in budgets.items()},
            "revival_budget": vars(revival), "ua_images": options.ua_images}  # fmt: skip


def measure_class(options: argparse.Namespace) -> dict[str, Any]:
    """The class-embedding attack and the revival test on both generators of an `sfd demo`
    report folder."""
    import torch

    from sfd.apps.data.images import load_images, train_heldout_split
    from sfd.eval.attack_budget import ClassEmbeddingBudget, RevivalBudget
    from sfd.eval.class_embedding import class_embedding_attack
    from sfd.eval.classifier import load_classifier
    from sfd.eval.evaluate import one_step_sampler
    from sfd.eval.revival import revival_images, revive_class_sampler
    from sfd.pipelines.io import load_generator

    torch.set_num_threads(options.threads)
    run = Path(options.class_run)
    metrics = json.loads((run / "metrics.json").read_text())
    forget = metrics["forget"]
    classifier = load_classifier(run / "classifier")
    data = load_images(metrics["protocol"].get("data", "digits"))
    _, heldout = train_heldout_split(data, metrics["protocol"].get("heldout_fraction", 0.2), 0)
    budget = ClassEmbeddingBudget(steps=options.steps, restarts=options.restarts)
    revival = RevivalBudget(steps=options.revival)
    images = revival_images(heldout.images, heldout.labels, forget, revival.images, revival.seed)
    models: dict[str, Any] = {}
    for key, folder in MODELS.items():
        sampler = one_step_sampler(load_generator(run / folder))
        start = time.perf_counter()
        with torch.enable_grad():
            attack = class_embedding_attack(sampler, classifier, forget, budget)
        seconds = round(time.perf_counter() - start, 1)
        print(f"{key} class embedding: {100 * attack.success_rate:.1f} %")
        outcome = revive_class_sampler(sampler, classifier, forget, images, revival,
                                       options.ua_images)  # fmt: skip
        print(f"{key} revival UA: {outcome.ua}")
        models[key] = {"attack": attack.to_dict(), "seconds": seconds, "revival": outcome.to_dict()}
    if options.baselines:  # multi-step baselines: revival only, judged with their DDIM sampler
        from sfd.eval.evaluate import ddim_sampler
        from sfd.teachers.unet import PretrainedVPTeacher

        for key in BASELINES:
            sampler = ddim_sampler(
                PretrainedVPTeacher(str(Path(options.baselines) / key)), options.ddim_steps
            )
            outcome = revive_class_sampler(sampler, classifier, forget, images, revival,
                                           options.ua_images)  # fmt: skip
            print(f"{key} revival UA: {outcome.ua}")
            models[key] = {"revival": outcome.to_dict(), "sampler": sampler.name}
    return {"run_folder": str(run), "forget": forget, "models": models, "budget": vars(budget),
            "revival_budget": vars(revival), "ua_images": options.ua_images,
            "baselines": options.baselines}  # fmt: skip


def revival_table(models: dict[str, Any]) -> str:
    """UA after each checkpoint and the steps until UA < 50 %, per model."""
    first = next(iter(models.values()))["revival"]
    rows = [
        [TITLES[key]]
        + [f"{100 * u:.1f} %" for u in entry["revival"]["ua"]]
        + [
            f"not within {first['steps'][-1]}"
            if entry["revival"]["steps_to_revival"] is None
            else entry["revival"]["steps_to_revival"]
        ]
        for key, entry in models.items()
    ]
    header = ["model", *(f"UA after {s} steps" for s in first["steps"]), "steps until UA < 50 %"]
    return markdown_table(header, rows)


def write_class_page(record: dict[str, Any], json_file: str) -> Path:
    """docs/results/attacks_class.md from a record of `--class-run`."""
    models = record["models"]
    first = next(iter(models.values()))
    rows = [
        [TITLES[key], f"{100 * m['attack']['success_rate']:.1f} %",
         f"{100 * m['attack']['success_rate_without_attack']:.1f} %", f"{m['seconds']:.0f}"]
        for key, m in models.items() if "attack" in m
    ]  # fmt: skip
    baselines = [m["sampler"] for m in models.values() if "sampler" in m]
    judged = (
        f" Baselines (ESD, SalUn of `{record.get('baselines')}`, teacher folders): the denoising "
        f"loss over their DDPM schedule, judged with their sampler ({baselines[0]})."
        if baselines
        else ""
    )
    sections = {
        "Class-embedding attack": (
            f"Forget class {record['forget']} (report folder `{record['run_folder']}`). Budget: "
            f"{record['budget']}. Objective: {first['attack']['objective']}. Success (ASR): "
            f"{first['attack']['asr_definition']}.\n\n"
            + markdown_table(["model", "success", "without attack", "seconds"], rows)
        ),
        "Revival (UA after fine-tuning a copy on real images of the class)": (
            f"Budget: {record['revival_budget']}; loss: {first['revival']['objective']}; images "
            f"paired with {first['revival']['condition']}; UA on {record['ua_images']} samples of "
            f"the forget class.{judged}\n\n" + revival_table(models)
        ),
    }
    return write_page("attacks_class", "Class-embedding attack and revival test (digits)",
                      record["run"]["command"], json_file, record, sections)  # fmt: skip


def write_results_page(record: dict[str, Any], json_file: str) -> Path:
    """docs/results/attacks.md (or attacks_class.md) from a record of `main`."""
    if "budget" in record:  # a --class-run record
        return write_class_page(record, json_file)
    models = record["models"]
    attacks = ["soft", "discrete", "paraphrases"]
    attack_rows = [
        [TITLES[key]]
        + [f"{100 * models[key]['attacks'][name]['success_rate']:.1f} %" for name in attacks]
        + [f"{models[key]['seconds']['soft']:.0f} / {models[key]['seconds']['discrete']:.0f}"]
        for key in models
    ]
    first = next(iter(models.values()))["revival"]
    budgets = record["budgets"]
    sections = {
        "Attack success (share of held-out-noise samples labelled as the forgotten class)": (
            f"Concept pair: forget {record['forget']}, override {record['override']} (report "
            f"folder `{record['run_folder']}`). Soft prompt: {budgets['soft']}. Discrete prompt "
            f"(whole vocabulary words): {budgets['discrete']}. Both attack the first training "
            "forget prompt with the evaluation classifier as objective; success is measured on "
            "held-out noise for the restart with the lowest loss on separate selection noise. "
            f"Paraphrases: {record['ua_images']} samples over the held-out paraphrases.\n\n"
            + markdown_table(
                ["model", *(f"{a} success" for a in attacks), "seconds soft / discrete"],
                attack_rows,
            )
        ),
        "Revival (UA after fine-tuning a copy on real images of the concept)": (
            f"Budget: {record['revival_budget']}; loss: {first['objective']}; images paired "
            f"with {first['condition']}; UA on {record['ua_images']} samples of the training "
            "forget prompts.\n\n" + revival_table(models)
        ),
    }
    return write_page("attacks", "Attack suite and revival test (text digits)",
                      record["run"]["command"], json_file, record, sections)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an sfd demo-text output folder")
    parser.add_argument("--class-run", help="an sfd demo output folder (class path instead)")
    parser.add_argument("--baselines", help="with --class-run: an sfd compare output's models/")
    parser.add_argument("--ddim-steps", type=int, default=50, help="the baselines' sampler")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="soft-prompt steps")
    parser.add_argument("--discrete-steps", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--revival", type=int, default=40, help="revival steps")
    parser.add_argument("--ua-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="runs/attacks/attacks.json", help="the record")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if options.page_from:
        print(write_results_page(read_record(options.page_from), options.page_from))
        return
    if bool(options.run) == bool(options.class_run):
        parser.error("give one of --run and --class-run (or --page-from)")
    load_start = os.getloadavg()
    record = measure(options) if options.run else measure_class(options)
    record["run"] = run_context(command_line(__file__, argv), load_start)
    save_record(record, options.json)
    if not options.no_page:
        print(write_results_page(record, options.json))


if __name__ == "__main__":
    main()
