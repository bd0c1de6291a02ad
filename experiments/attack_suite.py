"""The attack suite and the revival test on a text demo's report folder: plain SFD against the
generator that forgot nothing (stage 1) and, with `--adversarial-run`, adversarial SFD, judged by
the report's evaluation classifier.

Reads RUN (an `sfd demo-text` output folder: generator/, generator_without_forgetting/,
classifier/, prompts/, metrics.json for the concept pair), runs the soft-prompt and the discrete
prompt attacks at the given budgets on the first training forget prompt, the paraphrases' success,
and the revival test, writes the JSON record and docs/results/attacks.md. With `--class-run` (an
`sfd demo` output folder) instead: the class-embedding attack and the revival test of the class
generators, into docs/results/attacks_class.md. `--adversarial-run` names the same demo's output
folder run with `--adversarial` on the same teacher and stage 1 (checked: the two stage-1
generators must be the same files); its generator joins the table, beside the two report folders'
UA, remain and neighbour accuracy, FID and stage-2 training time and iterations (and why it
stopped), and the issue's targets.

    python experiments/attack_suite.py --run demo-text-output --revival 40
    python experiments/attack_suite.py --run demo-text-output \
        --adversarial-run demo-text-adversarial-output --revival 40
    python experiments/attack_suite.py --class-run demo-output --revival 40 \
        --json runs/attacks/attacks_class.json

With `--class-run`, `--baselines MODELS` (an `sfd compare` output's models/, made on the same
teacher and evaluation classifier: checked against the two report folders' content-hashed cache
entries) adds ESD and SalUn to every table: the class-embedding attack through their DDIM sampler
of `--attack-ddim-steps` (4, as `sfd eval` attacks a teacher), the revival test judged with DDIM
`--ddim-steps` (50), and their UA, remain accuracy and FID from the compare's own metrics.json.
`--page NAME` names the page of a class record too (default attacks_class, with or without
`--adversarial-run`), so all five models share one page:

    python experiments/attack_suite.py --class-run demo-output --adversarial-run demo-adversarial \
        --baselines compare-output/models --revival 40 --page attacks_class

`--pair RECORD.json` (repeatable) adds earlier text records of this script, each another concept
pair or teacher, to the page: each pair's tables under its name ("fashion-mnist sneaker → sandal")
with the command that measured it; `--page NAME` names the page. Measure each pair with
`--no-page`, then combine them without measuring:

    python experiments/attack_suite.py --page-from runs/attacks/fashion.json \
        --pair runs/attacks/digits-3-8.json --page attacks_adversarial_pairs

`--attacks soft` runs only the soft-prompt attack (the page shows – for the discrete one).

`--attack-objective both` also runs every attack with the attacker classifier as its objective
(the key NAME-transfer in the record; the report folder's attacker_classifier/, else one trained
once from classifier/'s recorded recipe with another seed, cached under --cache) and records, for
the white-box attacks, the attacker classifier's agreement with the judge. The pages compare the
white-box attacks, so it is always run (`white-box` or `both`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from results_page import (
    Refusal,
    add_page_arguments,
    command_line,
    markdown_table,
    read_record,
    run_context,
    save_record,
    shown_path,
    write_page,
)

# model key -> (report folder: the plain or the adversarial run, generator folder in it)
MODELS = {
    "sfd": ("plain", "generator"),
    "adversarial_sfd": ("adversarial", "generator"),
    "distilled_without_forgetting": ("plain", "generator_without_forgetting"),
}
TITLES = {
    "sfd": "one-step SFD",
    "adversarial_sfd": "one-step adversarial SFD",
    "distilled_without_forgetting": "one-step, no forgetting",
    "esd": "ESD (DDIM)",
    "salun": "SalUn (DDIM)",
}
BASELINES = ("esd", "salun")  # teacher folders under an `sfd compare` output's models/


def shown(path: str | Path | None) -> str | None:
    """`shown_path` of an optional folder (None stays None)."""
    return None if path is None else shown_path(path)


def model_folders(plain: Path, adversarial: Path | None) -> dict[str, Path]:
    """Each measured model's generator folder: plain SFD, adversarial SFD (when given), stage 1."""
    runs = {"plain": plain, "adversarial": adversarial}
    return {
        key: runs[run] / folder for key, (run, folder) in MODELS.items() if runs[run] is not None
    }


def folder_digest(folder: Path) -> str:
    """sha256 over a generator folder's weights (relative names and contents of its
    *.safetensors files; its README and metadata may differ between exports of one network)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.safetensors")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def check_same_base(plain: Path, adversarial: Path) -> str | None:
    """Why the two report folders are not one comparison (None when they are): the same
    concept pair and the same stage-1 generator (file for file)."""
    first, second = (json.loads((run / "metrics.json").read_text()) for run in (plain, adversarial))
    for name in ("forget", "override"):
        if first.get(name) != second.get(name):
            return (
                f"{name} {first.get(name)!r} in {plain} but {second.get(name)!r} in {adversarial}"
            )
    stage1 = "generator_without_forgetting"
    if folder_digest(plain / stage1) != folder_digest(adversarial / stage1):
        return (
            f"the weights of {plain / stage1} and {adversarial / stage1} differ: "
            "not the same stage 1"
        )
    return None


def cache_entry(protocol: dict[str, Any], name: str) -> str | None:
    """The content-hashed cache entry (folder name, e.g. teacher-6b1410b7edee201c) of a report's
    teacher or classifier, None when its protocol does not name one."""
    folder = (protocol.get(name) or {}).get("folder")
    return None if folder is None else Path(folder).name


# The protocol entries a compare and a demo must share where both record them: the sampling
# seed, data set, samples per class and the split (its train and held-out image counts).
SAME_PROTOCOL = ("seed", "data", "generated_per_class", "train_images", "heldout_images")


def baselines_sampler(baselines: Path) -> str | None:
    """The multi-step sampler the `sfd compare` report beside `baselines` evaluated ESD and
    SalUn with (its protocol's samplers["multi-step"]), None when it records none."""
    metrics = json.loads((baselines.parent / "metrics.json").read_text())
    return (metrics.get("protocol", {}).get("samplers") or {}).get("multi-step")


def check_baselines(class_run: Path, baselines: Path, ddim_steps: int = 50) -> str | None:
    """Why `baselines` (an `sfd compare` output's models/) does not compare with the `sfd demo`
    report folder `class_run` (None when it does): the compare's metrics.json must name the same
    concept pair, teacher and evaluation classifier (their cache entries), the protocol entries of
    `SAME_PROTOCOL` both record, have evaluated with DDIM `ddim_steps` (this command's revival
    sampler), and hold ESD and SalUn."""
    compare_metrics = baselines.parent / "metrics.json"
    if not compare_metrics.is_file():
        return f"no {compare_metrics} (the sfd compare report folder's models/ is expected)"
    demo, compare = (
        json.loads(f.read_text()) for f in (class_run / "metrics.json", compare_metrics)
    )
    for name in ("forget", "override"):
        if demo.get(name) != compare.get(name):
            return f"{name} {compare.get(name)!r} there but {demo.get(name)!r} in {class_run}"
    for name in ("teacher", "classifier"):
        ours, theirs = (cache_entry(m["protocol"], name) for m in (demo, compare))
        if ours is None or ours != theirs:
            return f"its {name} is {theirs!r}, not {ours!r} as in {class_run}"
    ours, theirs = demo.get("protocol", {}), compare.get("protocol", {})
    for name in SAME_PROTOCOL:
        if name in ours and name in theirs and ours[name] != theirs[name]:
            return f"its {name} is {theirs[name]!r}, not {ours[name]!r} as in {class_run}"
    import re

    sampler = baselines_sampler(baselines)
    steps = re.match(r"DDIM (\d+) steps", sampler or "")
    if steps is None or int(steps.group(1)) != ddim_steps:
        return (
            f"sfd compare evaluated them with {sampler or 'no recorded sampler'}, not DDIM "
            f"{ddim_steps} steps (--ddim-steps {ddim_steps}); give its steps to --ddim-steps"
        )
    missing = [key for key in BASELINES if key not in compare["methods"] or
               not (baselines / key).is_dir()]  # fmt: skip
    if missing:
        return f"it holds no {', '.join(missing)} (run sfd compare --methods esd,salun)"
    return None


def baseline_summary(baselines: Path) -> dict[str, Any]:
    """ESD's and SalUn's own evaluation in the `sfd compare` report beside `baselines`, in the
    fields of `run_summary` (training seconds: the wall time of their fine-tuning)."""
    methods = json.loads((baselines.parent / "metrics.json").read_text())["methods"]
    return {
        key: {
            "ua": methods[key]["ua"],
            "ua_paraphrases": None,
            "remain_accuracy": methods[key].get("remain_accuracy"),
            "neighbour_accuracy": None,
            "fid_remain": methods[key].get("fid_remain"),
            "training_seconds": methods[key].get("train_seconds"),
        }
        for key in BASELINES
    }


def run_summary(plain: Path, adversarial: Path | None) -> dict[str, Any]:
    """The report folders' own evaluation per model: UA (training prompts or class, paraphrases),
    remain and neighbour accuracy, FID, and the stage-2 wall seconds (SFD models)."""

    def scores(metrics: dict[str, Any], key: str) -> dict[str, Any]:
        entry = metrics[key]
        ua = entry["forget_train"]["ua"] if "forget_train" in entry else entry["ua"]
        paraphrases = entry.get("forget_paraphrases", {}).get("ua")
        stage2 = metrics["protocol"].get("two_stage", {}).get("stage2_training_seconds")
        seconds = (
            metrics["protocol"].get("phase_seconds", {}).get("sfd") if stage2 is None else stage2
        )
        two_stage = metrics["protocol"].get("two_stage", {})
        completion = two_stage.get("stage2_completion") or {}
        # no completion rule (`--no-until-forgotten`: its record kept as null beside the cap):
        # stage 2 ran to its cap
        no_rule = ("stage2_completion" in two_stage and two_stage["stage2_completion"] is None
                   and two_stage.get("stage2_max_steps") is not None)  # fmt: skip
        return {
            "ua": ua,
            "ua_paraphrases": paraphrases,
            "remain_accuracy": entry.get("remain_accuracy"),
            "neighbour_accuracy": entry.get("neighbour_accuracy"),
            "fid_remain": entry.get("fid_remain"),
            "training_seconds": seconds if key == "sfd" else None,
            # SFD models: stage 2's iterations, why it stopped (a completion-rule reason or
            # max_steps) and its cap (`trainer.max_steps`)
            **({"stage2_iterations": completion.get("iterations",
                                                     two_stage.get("stage2_iterations")),
                "stage2_stop": "max_steps" if no_rule else completion.get("stop_reason"),
                "stage2_cap": two_stage.get("stage2_max_steps")} if key == "sfd" else {}),
        }  # fmt: skip

    runs = {"plain": plain, "adversarial": adversarial}
    metrics = {run: json.loads((folder / "metrics.json").read_text())
               for run, folder in runs.items() if folder is not None}  # fmt: skip
    summary = {"teacher": scores(metrics["plain"], "teacher")}
    for key, (run, folder) in MODELS.items():
        if run in metrics:
            summary[key] = scores(metrics[run], "sfd" if folder == "generator" else key)
    if adversarial is not None:
        settings = metrics["adversarial"]["protocol"].get("sfd_settings", {})
        summary["adversarial_settings"] = settings.get("model", {}).get("adversarial")
    return summary


def preset_cap(metrics: dict[str, Any]) -> int | None:
    """Stage 2's cap (`trainer.max_steps`) in the packaged `sfd demo-text` preset of a text
    report's data set and teacher family (the completion rule stops stage 2 within it)."""
    from sfd.apps.demo_text.settings import default_sfd_config

    protocol = metrics["protocol"]
    family = protocol.get("teacher_settings", {}).get("family", "unet")
    return max_steps_of(default_sfd_config(str(protocol["data"]).split("/")[0], family=family))


def class_preset_cap() -> int | None:
    """Stage 2's cap (`trainer.max_steps`) in the packaged `sfd demo` presets: the SFD preset
    with its stage-2 overlay composed after it (as the demo composes them)."""
    from sfd.apps.harness.class_run import default_sfd_config, default_stage2_config

    caps = [max_steps_of(preset) for preset in (default_sfd_config(), default_stage2_config())]
    return next((cap for cap in reversed(caps) if cap is not None), None)


def max_steps_of(preset: Path) -> int | None:
    """`trainer.max_steps` of a packaged preset (None when it sets none)."""
    import yaml

    return ((yaml.safe_load(preset.read_text()) or {}).get("trainer") or {}).get("max_steps")


# The options that must agree for a record's models to be reused (`--reuse`).
SAME_SETTINGS = ("run", "class_run", "adversarial_run", "tokens", "steps", "discrete_steps",
                 "restarts", "revival", "ua_images", "attacks", "attack_objective")  # fmt: skip


def to_measure(options: argparse.Namespace, run: Path, adversarial: Path | None) -> dict[str, Path]:
    """The generator folders this command measures: `--only`'s models (all by default), less the
    models taken from the `--reuse` record."""
    folders = model_folders(run, adversarial)
    return {key: folder for key, folder in folders.items()
            if key in (options.only or folders) and key not in options.reused_models}  # fmt: skip


def reused(options: argparse.Namespace, measured: dict[str, Any]) -> dict[str, Any]:
    """The measured models and the reused ones, in the order of `MODELS` (baselines last)."""
    models = {**options.reused_models, **measured}
    return {key: models[key] for key in [*MODELS, *models] if key in models}


PROMPT_ATTACKS = ("soft", "discrete")  # `--attacks`' choices; a record before it ran both


def kept_settings(old: dict[str, Any]) -> dict[str, Any]:
    """The record's `settings`, with those written before they were kept there read from the
    record: `attack_objective` from its top level, `attacks` from the prompt attacks its models
    ran (both where none did: a class record, or every record before `--attacks`)."""
    settings = dict(old["settings"])
    if "attack_objective" not in settings and "attack_objective" in old:
        settings["attack_objective"] = old["attack_objective"]
    if "attacks" not in settings:
        ran = {name for model in old["models"].values() for name in model.get("attacks") or {}}
        settings["attacks"] = [name for name in PROMPT_ATTACKS if name in ran] or list(
            PROMPT_ATTACKS
        )
    return settings


def check_reuse(options: argparse.Namespace) -> str | None:
    """Why the `--reuse` record cannot be reused by this command (None when it can): it must come
    from the same report folders and budgets (`kept_settings`)."""
    old = read_record(options.reuse)
    if old.get("settings") is None:
        return "it names no settings (written before --reuse existed); measure again"
    settings = kept_settings(old)
    for name in SAME_SETTINGS:
        if name == "adversarial_run" and "adversarial_sfd" not in old["models"]:
            continue  # the reused models all come from --run (or --class-run)
        if name not in settings:
            return f"it names no {name} (written before it was kept); measure again"
        if settings.get(name) != getattr(options, name):
            was, now = settings.get(name), getattr(options, name)
            return f"it was measured with {name}={was!r}, not {now!r}"
    return None


def split_of(run: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """The report's split (heldout_fraction, split_seed): its protocol's, else the record of its
    classifier (classifier/cache.json, which names the split it was trained on)."""
    protocol = metrics["protocol"]
    record_file = run / "classifier" / "cache.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    recorded = {**record, **protocol.get("classifier_settings", {})}
    fraction = protocol.get("heldout_fraction", recorded.get("heldout_fraction"))
    seed = protocol.get("split_seed", recorded.get("split_seed", protocol.get("seed")))
    if fraction is None or seed is None:
        raise Refusal(f"attack_suite.py: {run} records no split (heldout_fraction, seed)")
    return {"heldout_fraction": fraction, "split_seed": seed}


def attacker_of(options: argparse.Namespace, run: Path, judge: Any, real: str, train: Any,
                heldout: Any, kind: str, split: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:  # fmt: skip
    """The attacker classifier of a report folder under --attack-objective both, else None."""
    if options.attack_objective == "white-box":
        return None, None
    from sfd.apps.harness.workspace import attacker_classifier

    given = run / "attacker_classifier"
    return attacker_classifier(
        judge, run / "classifier", given if given.is_dir() else None, options.cache and
        Path(options.cache), kind, real, train, heldout, split, False,
    )  # fmt: skip


def measure(options: argparse.Namespace) -> dict[str, Any]:
    """Run the suite and the revival test on both generators of the report folder."""
    import torch

    from sfd.apps.data.captions import load_captioned, read_labelled
    from sfd.apps.data.images import train_heldout_split
    from sfd.apps.harness.text_evaluation import ConceptProtocol, attack_model, revival_test
    from sfd.apps.harness.text_folders import exported_model
    from sfd.core.conditions.text import read_prompt_file
    from sfd.eval.attack_budget import (
        AttackBudget,
        DiscreteAttackBudget,
        RevivalBudget,
        attack_objectives,
        suite_key,
    )
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
    split = split_of(run, metrics)
    train, heldout = train_heldout_split(data, split["heldout_fraction"], split["split_seed"])
    attacker, attacker_entry = attacker_of(options, run, classifier, metrics["protocol"]["data"],
                                           train, heldout, "text-classifier", split)  # fmt: skip
    objectives = attack_objectives(options.attack_objective)
    budgets = {
        "soft": AttackBudget(
            num_tokens=options.tokens, steps=options.steps, restarts=options.restarts
        ),
        "discrete": DiscreteAttackBudget(
            num_tokens=options.tokens, steps=options.discrete_steps, restarts=options.restarts
        ),
    }
    budgets = {name: budget for name, budget in budgets.items() if name in options.attacks}
    revival = RevivalBudget(steps=options.revival)
    models: dict[str, Any] = {}
    adversarial = Path(options.adversarial_run) if options.adversarial_run else None
    for key, folder in to_measure(options, run, adversarial).items():
        model = exported_model(folder)
        entry: dict[str, Any] = {"attacks": {}, "seconds": {}}
        for name, budget in budgets.items():
            for objective in objectives:
                start, at = time.perf_counter(), suite_key(name, objective)
                entry["attacks"][at] = attack_model(model, classifier, protocol, budget,
                                                    attacker=attacker, objective=objective)  # fmt: skip
                entry["seconds"][at] = round(time.perf_counter() - start, 1)
                print(f"{key} {at}: {100 * entry['attacks'][at]['success_rate']:.1f} %")
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
    return {"run_folder": shown_path(run), "adversarial_run_folder": shown(options.adversarial_run),
            "forget": forget, "override": override, "data": metrics["protocol"]["data"],
            "class_names": metrics.get("class_names"), "models": reused(options, models),
            "budgets": {name: vars(b) for name, b in budgets.items()},
            "revival_budget": vars(revival), "ua_images": options.ua_images,
            "summary": {**run_summary(run, adversarial), "stage2_preset_cap": preset_cap(metrics)},
            "attack_objective": options.attack_objective,
            "attacker_classifier": attacker_entry}  # fmt: skip


def measure_class(options: argparse.Namespace) -> dict[str, Any]:
    """The class-embedding attack and the revival test on both generators of an `sfd demo`
    report folder."""
    import torch

    from sfd.apps.data.images import load_images, train_heldout_split
    from sfd.eval.attack_budget import ClassEmbeddingBudget, RevivalBudget, attack_objectives
    from sfd.eval.class_embedding import class_embedding_suite
    from sfd.eval.classifier import load_classifier
    from sfd.eval.evaluate import one_step_sampler
    from sfd.eval.revival import revival_images, revive_class_sampler
    from sfd.pipelines.io import load_generator

    torch.set_num_threads(options.threads)
    run = Path(options.class_run)
    metrics = json.loads((run / "metrics.json").read_text())
    forget = metrics["forget"]
    classifier = load_classifier(run / "classifier")
    source = metrics["protocol"].get("data", "digits")
    data = load_images(source)
    split = split_of(run, metrics)
    train, heldout = train_heldout_split(data, split["heldout_fraction"], split["split_seed"])
    attacker, attacker_entry = attacker_of(
        options, run, classifier, source, train, heldout, "classifier", split
    )
    budget = ClassEmbeddingBudget(steps=options.steps, restarts=options.restarts)
    revival = RevivalBudget(steps=options.revival)
    images = revival_images(heldout.images, heldout.labels, forget, revival.images, revival.seed)
    models: dict[str, Any] = {}
    adversarial = Path(options.adversarial_run) if options.adversarial_run else None
    for key, folder in to_measure(options, run, adversarial).items():
        sampler = one_step_sampler(load_generator(folder))
        start = time.perf_counter()
        suite = class_embedding_suite(sampler, classifier, forget, budget, attacker=attacker,
                                      objectives=attack_objectives(options.attack_objective))  # fmt: skip
        seconds = round(time.perf_counter() - start, 1)
        for name, result in suite.items():
            print(f"{key} {name}: {100 * result['success_rate']:.1f} %")
        outcome = revive_class_sampler(sampler, classifier, forget, images, revival,
                                       options.ua_images)  # fmt: skip
        print(f"{key} revival UA: {outcome.ua}")
        models[key] = {"attack": suite["class_embedding"], "attacks": suite, "seconds": seconds,
                       "revival": outcome.to_dict()}  # fmt: skip
    summary = {**run_summary(run, adversarial), "stage2_preset_cap": class_preset_cap()}
    if options.baselines:  # multi-step baselines: attacked through a short DDIM, judged with theirs
        from sfd.eval.evaluate import ddim_sampler
        from sfd.teachers.unet import PretrainedVPTeacher

        for key in BASELINES:
            teacher = PretrainedVPTeacher(str(Path(options.baselines) / key))
            start = time.perf_counter()
            suite = class_embedding_suite(
                ddim_sampler(teacher, options.attack_ddim_steps), classifier, forget, budget,
                options.attack_ddim_steps, attacker=attacker,
                objectives=attack_objectives(options.attack_objective),
            )  # fmt: skip
            seconds = round(time.perf_counter() - start, 1)
            for name, result in suite.items():
                print(f"{key} {name}: {100 * result['success_rate']:.1f} %")
            sampler = ddim_sampler(teacher, options.ddim_steps)
            outcome = revive_class_sampler(sampler, classifier, forget, images, revival,
                                           options.ua_images)  # fmt: skip
            print(f"{key} revival UA: {outcome.ua}")
            models[key] = {"attack": suite["class_embedding"], "attacks": suite,
                           "seconds": seconds, "revival": outcome.to_dict(),
                           "sampler": sampler.name}  # fmt: skip
        summary.update(baseline_summary(Path(options.baselines)))
    return {"run_folder": shown_path(run), "adversarial_run_folder": shown(options.adversarial_run),
            "forget": forget, "models": reused(options, models), "budget": vars(budget),
            "revival_budget": vars(revival), "ua_images": options.ua_images,
            "baselines": shown(options.baselines), "summary": summary,
            "ddim_steps": options.ddim_steps if options.baselines else None,
            "baselines_sampler": baselines_sampler(Path(options.baselines))
            if options.baselines else None,
            "attack_ddim_steps": options.attack_ddim_steps if options.baselines else None,
            "attack_objective": options.attack_objective,
            "attacker_classifier": attacker_entry}  # fmt: skip


VARIANT = "adversarial_sfd@"  # model keys of adversarial runs folded in by `--include`


def model_title(key: str, record: dict[str, Any] | None = None) -> str:
    """The table title of a model key; an included adversarial run's names its settings where
    they differ from those of the record's own adversarial run."""
    if not key.startswith(VARIANT):
        return TITLES[key]
    summary = (record or {}).get("summary") or {}
    base = summary.get("adversarial_settings") or {}
    settings = summary.get("variant_settings", {}).get(key) or {}
    changed = ", ".join(f"{k} {v}" for k, v in settings.items() if base.get(k) != v)
    return f"{TITLES['adversarial_sfd']} ({changed or key[len(VARIANT) :]})"


def with_included(record: dict[str, Any], files: list[str]) -> dict[str, Any]:
    """`record` (a `--class-run` record) with the adversarial SFD of each record in `files` as
    one more model (`VARIANT` + its report folder): each must come from the same plain report
    folder and budgets; its command is named on the page (`included`)."""
    if not files:
        return record
    if record.get("summary") is None or "budget" not in record:
        raise Refusal(
            "--include: the page's own record must be a --class-run record with a summary"
        )
    record = json.loads(json.dumps(record))
    summary = record["summary"]
    for file in files:
        other = read_record(file, "--include")
        for name in ("run_folder", "budget", "revival_budget", "ua_images"):
            if other.get(name) != record.get(name):
                raise Refusal(
                    f"--include {file}: its {name} is {other.get(name)!r}, not {record.get(name)!r}"
                )
        if "adversarial_sfd" not in other["models"]:
            raise Refusal(f"--include {file}: it measured no adversarial SFD")
        key = VARIANT + str(other["adversarial_run_folder"])
        record["models"][key] = other["models"]["adversarial_sfd"]
        summary[key] = other["summary"]["adversarial_sfd"]
        summary.setdefault("variant_settings", {})[key] = other["summary"]["adversarial_settings"]
        record.setdefault("included", []).append(
            {"record": file, "command": other["run"]["command"], "date": other["run"]["date"],
             "commit": other["run"]["commit"], "model": key}
        )  # fmt: skip
    return record


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def benchmark_sections(record: dict[str, Any], attacks: dict[str, str]) -> dict[str, str]:
    """The side-by-side table (the report folders' evaluation beside the attacks and revival)
    and, with adversarial SFD, the issue's targets; empty for records without a summary.

    Args:
        record: a record of `measure` or `measure_class`.
        attacks: column title -> attack name in a text model's "attacks" ("" for the class
            attack of a class record).
    """
    from sfd.apps.harness.targets import adversarial_targets
    from sfd.eval.revival import revival_column, revived_at

    summary, models = record.get("summary"), record["models"]
    if summary is None:
        return {}

    def rate(key: str, name: str) -> float | None:
        entry = models.get(key)
        if entry is None:  # not measured by this command (`--only`)
            return None
        if not name:
            return entry["attack"]["success_rate"]
        return entry["attacks"].get(name, {}).get("success_rate")  # None: not run (`--attacks`)

    def fid(value: float | None) -> str:
        return "–" if value is None else f"{value:.3f}"

    rows = [["teacher", *(percent(summary["teacher"][n]) for n in ("ua", "ua_paraphrases",
             "remain_accuracy", "neighbour_accuracy")), fid(summary["teacher"]["fid_remain"]),
             *("–" for _ in attacks), "–", "–"]]  # fmt: skip
    variants = [k for k in summary if k.startswith(VARIANT)]
    # stage 2's iterations and stop: a column only for records that kept them
    stopped = any(isinstance(v, dict) and v.get("stage2_iterations") for v in summary.values())
    for key in [*(k for k in (*MODELS, *BASELINES) if k in summary), *variants]:
        scores, seconds = summary[key], summary[key]["training_seconds"]
        rows.append(
            [model_title(key, record)]
            + [
                percent(scores[n])
                for n in ("ua", "ua_paraphrases", "remain_accuracy", "neighbour_accuracy")
            ]  # fmt: skip
            + [fid(scores["fid_remain"])]
            + [percent(rate(key, name)) for name in attacks.values()]
            + [
                revived_at(models[key]["revival"]) if key in models else "–",
                "–" if seconds is None else f"{seconds:.0f}",
            ]
            + ([stage2_stop(scores)] if stopped else [])
        )
    header = ["model", "UA", "UA paraphrases", "remain acc.", "neighbour acc.", "FID",
              *attacks, f"revival: {revival_column()}", "training s"]  # fmt: skip
    if stopped:
        header.append("stage-2 iterations (stop)")
        rows[0].append("–")
    folders = f"`{record['run_folder']}`" + (
        f" and `{record['adversarial_run_folder']}`" if record.get("adversarial_run_folder") else ""
    )
    compared = (
        f" ESD and SalUn: the evaluation of the `sfd compare` report of `{record['baselines']}` "
        f"(the same {compared_protocol(record)}; multi-step, {compared_sampler(record)}); their "
        "training s is the wall time of their fine-tuning (no completion rule, no probes)."
        if any(key in summary for key in BASELINES)
        else ""
    )
    sections = {
        f"Benchmark ({', '.join(benchmark_models(summary))})": (
            "UA, paraphrase UA, remain and neighbour accuracy and FID are the report folders' own "
            f"evaluation ({folders}; the same teacher, classifier and stage 1); attacks and "
            "revival as below. Training s: wall seconds of the SFD phase (stage 2), including the "
            "completion rule's probes where it ran (docs/method.md §8), on the shared machine "
            "(see the load above); [adversarial_overhead](adversarial_overhead.md) times "
            f"it in isolation.{compared}{STOP_NOTE if stopped else ''}{cap_note(summary, record)} "
            f"Adversarial SFD settings: {settings_text(summary.get('adversarial_settings'))}.\n\n"
            + markdown_table(header, rows)
        )
    }
    if "adversarial_sfd" not in summary:
        return sections
    adv, plain, teacher = summary["adversarial_sfd"], summary["sfd"], summary["teacher"]
    found = adversarial_targets(
        adv, teacher, plain.get("fid_remain"),
        {title.removesuffix(" success"): rate("adversarial_sfd", n) for title, n in attacks.items()},
    )  # fmt: skip
    shown = {"share": percent, "points": lambda v: f"{100 * v:+.1f} points",
             "ratio": lambda v: f"{v:.2f}×"}  # fmt: skip
    targets = [
        (entry["title"], "not measured" if entry["value"] is None
         else shown[entry["unit"]](entry["value"]), entry["met"])
        for entry in found.values()
    ]  # fmt: skip
    sections["Targets (adversarial SFD)"] = (
        "The training-time overhead (target ≤ 2×) is timed apart by "
        "[adversarial_overhead](adversarial_overhead.md), in one process with its CPU time beside "
        "the wall time (that page records the machine's load): the training seconds above "
        "ran on a shared machine under different loads.\n\n"
        + markdown_table(
            ["target", "value", "met"],
            [[t, v, "–" if met is None else "yes" if met else "no"] for t, v, met in targets],
        )
    )
    return sections


STOP_NOTE = (
    " Stage-2 iterations (stop): the SFD phase's iterations and why it stopped: a reason of the "
    "completion rule (docs/method.md §8: forgotten, stalled, drift, budget) or max_steps, its cap "
    "(`trainer.max_steps`)."
)


def stage2_stop(scores: dict[str, Any]) -> str:
    """A model's stage-2 cell: its iterations and why it stopped ("–" for the models without a
    stage 2 and for records written before it was kept)."""
    if scores.get("stage2_iterations") is None:
        return "–"
    return f"{scores['stage2_iterations']} ({scores.get('stage2_stop') or 'not recorded'})"


def cap_note(summary: dict[str, Any], record: dict[str, Any]) -> str:
    """The sentence naming the SFD models whose stage 2 stopped at a cap below the packaged
    preset's (set in its configuration to shorten the run): they ended before the
    completion rule judged the concept gone, so trained less than the preset would; "" when
    none did."""
    preset = summary.get("stage2_preset_cap")
    capped = [
        key for key in summary
        if isinstance(summary[key], dict) and summary[key].get("stage2_stop") == "max_steps"
        and preset is not None and (summary[key].get("stage2_cap") or preset) < preset
    ]  # fmt: skip
    if not capped:
        return ""
    caps = sorted({summary[key]["stage2_cap"] for key in capped})
    return (
        f" {', '.join(model_title(key, record) for key in capped)}: stage 2 capped at "
        f"{' / '.join(map(str, caps))} iterations by its configuration to shorten the run (the "
        f"packaged preset's cap is {preset}, within which the "
        "completion rule stops it); stopped there, before the rule judged the concept gone, so "
        "trained less than the preset would."
    )


def compared_sampler(record: dict[str, Any]) -> str:
    """The sampler the compare evaluated the baselines with: as recorded, else (records written
    before it was kept) named as not recorded beside this command's own revival sampler."""
    if record.get("baselines_sampler"):
        return str(record["baselines_sampler"])
    return (
        f"the compare's sampler not recorded; this command's revival sampler DDIM "
        f"{record.get('ddim_steps', 50)}"
    )


def compared_protocol(record: dict[str, Any]) -> str:
    """What `check_baselines` checked the compare against: since the sampler was recorded, also
    the seed, samples per class and split (where the compare records them)."""
    if record.get("baselines_sampler"):
        return "teacher, classifier, concept pair, seed, samples per class and split"
    return "teacher, classifier and concept pair"


def benchmark_models(summary: dict[str, Any]) -> list[str]:
    """The short names of the models a benchmark table holds, in its order."""
    names = {"sfd": "plain SFD", "adversarial_sfd": "adversarial SFD",
             "distilled_without_forgetting": "no forgetting", "esd": "ESD", "salun": "SalUn"}  # fmt: skip
    return [names[key] for key in names if key in summary]


def settings_text(settings: dict[str, Any] | None) -> str:
    """The adversarial run's `model.adversarial` overrides as the page names them: none given are
    the defaults of configs/adversarial.yaml; a record without them says so."""
    if settings is None:
        return "not recorded"
    return str(settings) if settings else "the defaults of `configs/adversarial.yaml`"


def measurers(record: dict[str, Any], file: str | None = None) -> dict[str, dict[str, Any]]:
    """Model key -> the command that measured it in `record` ({command, date, record}): the
    record's own `measured_by`, kept per model since it was written; for a record written before
    that, rebuilt from its chain of `reused` entries (a model taken through a chained `--reuse`
    under the command of the record that measured it). An entry that says what it reused, even
    nothing, is taken as it says; only an entry written before it said so reads the earlier record
    file, and that file's own `measured_by` where it has one.

    Args:
        record: a record of this script.
        file: where it was read from (the models it measured itself name it).
    """
    if record.get("measured_by") is not None:
        return record["measured_by"]
    run = record.get("run") or {}
    own = {"command": run.get("command"), "date": run.get("date"), "record": file}
    found = {key: own for key in record.get("models", {})}
    reuse = record.get("reused")
    while reuse:
        entry = {key: reuse[key] for key in ("command", "date", "record")}
        found.update(dict.fromkeys(reuse["models"], entry))
        if "reused" in reuse:
            reuse = reuse["reused"]
            continue
        earlier = read_record(reuse["record"]) if Path(reuse["record"]).is_file() else {}
        if earlier.get("measured_by") is not None:
            taken = earlier["measured_by"]
            found.update({key: taken[key] for key in reuse["models"] if key in taken})
            break
        reuse = earlier.get("reused")
    return found


def reuse_note(record: dict[str, Any]) -> str:
    """The sentences naming the models a record took from earlier ones ("" when none), each
    under the command that measured it (`measurers`)."""
    run = record.get("run") or {}
    groups: dict[tuple[Any, Any, Any], list[str]] = {}
    for key, entry in measurers(record).items():
        if (entry["command"], entry["date"]) != (run.get("command"), run.get("date")):
            groups.setdefault((entry["command"], entry["date"], entry["record"]), []).append(key)
    return "".join(
        f" {', '.join(TITLES.get(key, key) for key in keys)}: measured by `{command}` ({date}, "
        f"record `{file}`, the same report folders and budgets) and reused here."
        for (command, date, file), keys in groups.items()
    )


def page_name(name: str, record: dict[str, Any]) -> str:
    """`name`, or `name`_adversarial for a text record with adversarial SFD (its own page, beside
    the plain-SFD page of the same report folder); a class record's page is `name` with or without
    adversarial SFD (all its models share one page)."""
    if name == "attacks_class":
        return name
    return f"{name}_adversarial" if record.get("adversarial_run_folder") else name


def recorded_page(record: dict[str, Any]) -> str | None:
    """The page the record's measuring command named: its `page` field, else (records written
    before that field) the `--page` of its recorded command line; None when it named none."""
    if record.get("page") is not None:
        return record["page"]
    import shlex

    words = shlex.split((record.get("run") or {}).get("command") or "")
    for i, word in enumerate(words):
        if word == "--page" and i + 1 < len(words):
            return words[i + 1]
        if word.startswith("--page="):
            return word.split("=", 1)[1]
    return None


def revival_table(models: dict[str, Any], record: dict[str, Any] | None = None) -> str:
    """UA after each checkpoint and the first checkpoint with UA < 50 %, per model (titles:
    `model_title`), and what that column can and cannot say."""
    from sfd.eval.revival import REVIVAL_RESOLUTION, REVIVAL_THRESHOLD, revival_column, revived_at

    first = next(iter(models.values()))["revival"]
    rows = [
        [model_title(key, record)]
        + [f"{100 * u:.1f} %" for u in entry["revival"]["ua"]]
        + [revived_at(entry["revival"])]
        for key, entry in models.items()
    ]
    header = ["model", *(f"UA after {s} steps" for s in first["steps"])]
    header.append(revival_column(first.get("threshold", REVIVAL_THRESHOLD)))
    return markdown_table(header, rows) + f"\n\n{REVIVAL_RESOLUTION}."


def write_class_page(record: dict[str, Any], json_file: str, page: str | None = None) -> Path:
    """docs/results/attacks_class.md (or `page`) from a record of `--class-run`."""
    models = record["models"]
    first = next(iter(models.values()))
    attacked = {key: m for key, m in models.items() if "attack" in m}
    rows = [
        [model_title(key, record), f"{100 * m['attack']['success_rate']:.1f} %",
         f"{100 * m['attack']['success_rate_without_attack']:.1f} %", f"{m['seconds']:.0f}"]
        + ([m["attack"].get("sampler", "–")] if any(k in BASELINES for k in attacked) else [])
        for key, m in attacked.items()
    ]  # fmt: skip
    header = ["model", "success", "without attack", "seconds"]
    if any(key in BASELINES for key in attacked):
        header.append("sampler attacked and judged")
    baselines = [m["sampler"] for m in models.values() if "sampler" in m]
    judged = (
        f" Baselines (ESD, SalUn of `{record.get('baselines')}`, teacher folders): the denoising "
        f"loss over their DDPM schedule, judged with their sampler ({baselines[0]})."
        if baselines
        else ""
    )
    through = (
        " ESD and SalUn are multi-step models: the attack's gradient runs through their DDIM "
        "sampler of the steps in the last column (as `sfd eval --attack` attacks a teacher), and "
        "its success is judged on that sampler's images."
        if any(key in BASELINES for key in attacked)
        else ""
    )
    sections = {
        **benchmark_sections(record, {"class-embedding success": ""}),
        "Class-embedding attack": (
            f"Forget class {record['forget']} (report folder `{record['run_folder']}`). Budget: "
            f"{record['budget']}. Objective: {first['attack']['objective']}. Success (ASR): "
            f"{first['attack']['asr_definition']}.{through}{reuse_note(record)}\n\n"
            + markdown_table(header, rows)
        ),
        "Revival (UA after fine-tuning a copy on real images of the class)": (
            f"Budget: {record['revival_budget']}; loss: {first['revival']['objective']}; images "
            f"paired with {first['revival']['condition']}; UA on {record['ua_images']} samples of "
            f"the forget class.{judged}\n\n" + revival_table(models, record)
        ),
    }
    if record.get("included"):
        sections["Included runs"] = "\n".join(
            f"- {model_title(entry['model'], record)}: `{entry['command']}` ({entry['date']}, commit "
            f"{entry['commit']['hash']}, record `{entry['record']}`)"
            for entry in record["included"]
        )
    heading = "Class-embedding attack and revival test (digits)"
    if record.get("adversarial_run_folder"):
        heading = f"Adversarial SFD: {heading[0].lower()}{heading[1:]}"
    return write_page(page or page_name("attacks_class", record), heading,
                      record["run"]["command"], json_file, record, sections)  # fmt: skip


# What the pages with adversarial SFD say about its misses (what was tried is measured on the
# linked pages, each written by its own script).
LIMITS = (
    "Where adversarial SFD misses the soft-prompt target, this is what limits it. The inner "
    "attack is data-free: it raises the teacher's own evidence for the forget concept (its "
    "denoising error under the override against the forget prompt and rival concepts), while "
    "the attacks here are judged by the evaluation classifier, which training never sees. "
    "[adversarial_diagnosis](adversarial_diagnosis.md) shows the two disagree: tokens that make "
    "the teacher read the forget concept mostly do not make the classifier read it, so the "
    "generator learns to defeat the teacher's reading, not the classifier's. More inner steps and "
    "a larger inner learning rate ([adversarial_budget](adversarial_budget.md)), a fresh pool "
    "every 1 or 5 iterations, or a share of rows restarted afresh "
    "([adversarial_refresh](adversarial_refresh.md)) did not bring the attack down further: "
    "rows lose the concept within a few iterations whether warm or fresh, and with the posterior "
    "weight those rows weigh almost nothing, so the term is nearly off. Without the posterior "
    "weight, the preset's weight costs remain accuracy and FID instead "
    "([adversarial_settings](adversarial_settings.md)). Revival is not what adversarial SFD "
    "trains against: it fine-tunes the weights, which no inner attack on the condition touches. "
    "The no-forgetting generator's row shows what each attack finds when the concept is there."
)


def pair_label(record: dict[str, Any]) -> str:
    """The name "<data> <forget> → <override>" of a text record, by class name where it names them
    (records written before the data set was recorded are the digits demo's)."""
    names = record.get("class_names")

    def name(index: int) -> str:
        return str(index) if names is None else names[index]

    return f"{record.get('data', 'digits')} {name(record['forget'])} → {name(record['override'])}"


NOT_RUN = "not run by this command (`--attacks`)"


def seconds(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def text_sections(record: dict[str, Any]) -> dict[str, str]:
    """The sections of one concept pair's text record: the benchmark and targets (with
    adversarial SFD), the attacks' success and the revival test."""
    models = record["models"]
    attacks = ["soft", "discrete", "paraphrases"]
    attack_rows = [
        [model_title(key, record)]
        + [percent(models[key]["attacks"].get(name, {}).get("success_rate")) for name in attacks]
        + [" / ".join(seconds(models[key]["seconds"].get(name)) for name in ("soft", "discrete"))]
        for key in models
    ]
    first = next(iter(models.values()))["revival"]
    budgets = record["budgets"]
    return {
        **benchmark_sections(record, {"soft success": "soft", "discrete success": "discrete"}),
        "Attack success (share of held-out-noise samples labelled as the forgotten class)": (
            f"Concept pair: {pair_label(record)} (forget {record['forget']}, override "
            f"{record['override']}; report folder `{record['run_folder']}`). Soft prompt: {budgets.get('soft', NOT_RUN)}. Discrete "
            f"prompt (whole vocabulary words): {budgets.get('discrete', NOT_RUN)}. Both attack the first training "
            "forget prompt with the evaluation classifier as objective; success is measured on "
            "held-out noise for the restart with the lowest loss on separate selection noise. "
            f"Paraphrases: {record['ua_images']} samples over the held-out paraphrases."
            f"{reuse_note(record)}\n\n"
            + markdown_table(
                ["model", *(f"{a} success" for a in attacks), "seconds soft / discrete"],
                attack_rows,
            )
        ),
        "Revival (UA after fine-tuning a copy on real images of the concept)": (
            f"Budget: {record['revival_budget']}; loss: {first['objective']}; images paired "
            f"with {first['condition']}; UA on {record['ua_images']} samples of the training "
            "forget prompts.\n\n" + revival_table(models, record)
        ),
    }


def write_results_page(
    record: dict[str, Any],
    json_file: str,
    included: list[tuple[dict[str, Any], str]] = (),  # type: ignore[assignment]
    page: str | None = None,
    page_command: str | None = None,
) -> Path:
    """docs/results/attacks.md (or attacks_class.md, or `page`) from a record of `main`.

    Args:
        record: the record of this command (or of `--page-from`).
        json_file: its path as the command line named it.
        included: (record, path) of earlier text records of this script, each another concept
            pair (`--include`): the page shows every pair's sections under its name, each with
            the command that measured it.
        page: the page's name (default: attacks, attacks_adversarial with adversarial SFD).
        page_command: the `--page-from` command that combined the pairs (shown with them).
    """
    page = page or recorded_page(record)  # the page its measuring command named
    if "budget" in record:  # a --class-run record
        return write_class_page(record, json_file, page)
    pairs = [(record, json_file), *included]
    data = sorted({r.get("data", "digits") for r, _ in pairs})
    title = f"Attack suite and revival test (text {' and '.join(data)})"
    if any(r.get("adversarial_run_folder") for r, _ in pairs):
        title = f"Adversarial SFD: {title[0].lower()}{title[1:]}"
    if not included:
        sections = text_sections(record)
    else:
        sections = {"Concept pairs": "\n".join(
            f"- {pair_label(r)}: `{r['run']['command']}` ({r['run']['date']}, commit "
            f"{r['run']['commit']['hash']}, load {r['run']['machine']['load_average_start']} at "
            f"the start; record `{file}`)" for r, file in pairs
        )}  # fmt: skip
        if page_command:
            sections["Concept pairs"] += f"\n\nThis page: `{page_command}`."
        for pair, _ in pairs:
            label = pair_label(pair)
            sections.update({f"{label}: {h}": body for h, body in text_sections(pair).items()})
    if any("adversarial_sfd" in (r.get("summary") or {}) for r, _ in pairs):
        sections["What limits adversarial SFD"] = LIMITS
    return write_page(page or page_name("attacks", record), title,
                      record["run"]["command"], json_file, record, sections)  # fmt: skip


# The options that measure: `--page-from` (measure nothing) reads none of them.
MEASURING = ("run", "class_run", "adversarial_run", "baselines", "reuse", "only", "ddim_steps",
             "attack_ddim_steps")  # fmt: skip


def unread_option(options: argparse.Namespace) -> str | None:
    """Why an option given would be read by nothing in this command (None when every one is):
    a measuring option with `--page-from`, the baselines' samplers without `--baselines`, `--only`
    naming the baselines without `--baselines` or, with it, not naming both."""
    flag = {name: f"--{name.replace('_', '-')}" for name in MEASURING}
    given = [name for name in MEASURING if getattr(options, name) is not None]
    if options.page_from and given:
        return f"{flag[given[0]]}: a measuring option; --page-from measures nothing"
    for name in ("ddim_steps", "attack_ddim_steps"):
        if name in given and not options.baselines:
            return f"{flag[name]}: the baselines' sampler, read only with --baselines"
    only = set(options.only or ())
    if not options.baselines and only & set(BASELINES):
        return f"--only {' '.join(options.only)}: {' and '.join(BASELINES)} need --baselines"
    if options.baselines and options.only and not set(BASELINES) <= only:
        return (
            f"--only {' '.join(options.only)} with --baselines: name both "
            f"{' and '.join(BASELINES)} (measured together), or leave --baselines out"
        )
    return None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="an sfd demo-text output folder")
    parser.add_argument("--class-run", help="an sfd demo output folder (class path instead)")
    parser.add_argument(
        "--adversarial-run",
        help="the same demo's output folder with --adversarial (same teacher and stage 1)",
    )
    parser.add_argument("--baselines", help="with --class-run: an sfd compare output's models/")
    parser.add_argument(
        "--ddim-steps",
        type=int,
        help="with --baselines: their sampler in the revival test, the steps sfd compare "
        "evaluated them with (default 50)",
    )
    parser.add_argument(
        "--attack-ddim-steps",
        type=int,
        help="with --baselines: their DDIM sampler in the class-embedding attack (gradient and "
        "judging; default 4)",
    )
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="soft-prompt steps")
    parser.add_argument("--discrete-steps", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--revival", type=int, default=40, help="revival steps")
    parser.add_argument("--ua-images", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="runs/attacks/attacks.json", help="the record")
    parser.add_argument(
        "--attack-objective",
        default="white-box",
        choices=("white-box", "both"),
        help="both: also the transfer attacks (the attacker classifier's objective) and the "
        "white-box attacks' agreement",
    )
    parser.add_argument("--cache", help="where a trained attacker classifier is cached")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=[*MODELS, *BASELINES],
        help="measure only these models (default: all); with --baselines it names both "
        f"{' and '.join(BASELINES)} (measured together)",
    )
    parser.add_argument(
        "--reuse",
        metavar="FILE.json",
        help="take the models measured in this earlier record (same folders and budgets)",
    )
    parser.add_argument(
        "--include",
        nargs="+",
        default=[],
        metavar="FILE.json",
        help="with --class-run or --page-from: add the adversarial SFD of these records (the same "
        "plain report folder and budgets, e.g. `--only adversarial_sfd` runs of other settings) "
        "to the page",
    )
    parser.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="FILE.json",
        help="an earlier text record of this script (another concept pair or teacher) whose "
        "tables the page shows too, under the command that measured them",
    )
    parser.add_argument(
        "--page",
        help="the page's name under docs/results/ (default: attacks, or attacks_class with "
        "--class-run; attacks_adversarial with --run and --adversarial-run); --page-from writes "
        "the page the record's command named",
    )
    parser.add_argument(
        "--attacks",
        nargs="+",
        default=list(PROMPT_ATTACKS),
        choices=PROMPT_ATTACKS,
        help="the prompt attacks run on text models (default: both); the page shows – for the "
        "others",
    )
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    pairs = [(read_record(path, "--pair"), path) for path in options.pair]
    for earlier, path in pairs:
        if "budget" in earlier:
            parser.error(f"--pair {path}: a --class-run record; only text records combine")
    refusal = unread_option(options)
    if refusal:
        parser.error(refusal)
    options.ddim_steps = 50 if options.ddim_steps is None else options.ddim_steps
    options.attack_ddim_steps = (
        4 if options.attack_ddim_steps is None else options.attack_ddim_steps
    )
    if options.page_from:
        record = with_included(read_record(options.page_from), options.include)
        combined = command_line(__file__, argv) if pairs else None
        print(write_results_page(record, options.page_from, pairs, options.page, combined))
        return
    if options.include and not options.class_run:
        parser.error("--include needs --class-run (or --page-from)")
    if bool(options.run) == bool(options.class_run):
        parser.error("give one of --run and --class-run (or --page-from)")
    if options.baselines and not options.class_run:
        parser.error("--baselines needs --class-run")
    if options.baselines:
        reason = check_baselines(
            Path(options.class_run), Path(options.baselines), options.ddim_steps
        )
        if reason:
            parser.error(f"--baselines {options.baselines}: {reason}")
    for name in ("ddim_steps", "attack_ddim_steps"):
        if getattr(options, name) < 1:
            parser.error(f"--{name.replace('_', '-')}={getattr(options, name)} must be at least 1")
    if options.adversarial_run:
        reason = check_same_base(
            Path(options.run or options.class_run), Path(options.adversarial_run)
        )
        if reason:
            parser.error(f"--adversarial-run {options.adversarial_run}: {reason}")
    if options.only and "adversarial_sfd" in options.only and not options.adversarial_run:
        parser.error("--only adversarial_sfd needs --adversarial-run")
    options.reused_models, reuse, taken = {}, None, {}
    if options.reuse:
        reason = check_reuse(options)
        if reason:
            parser.error(f"--reuse {options.reuse}: {reason}")
        old = read_record(options.reuse)
        options.reused_models = {key: old["models"][key] for key in MODELS if key in old["models"]}
        reuse = {"record": options.reuse, "command": old["run"]["command"],
                 "date": old["run"]["date"], "models": list(options.reused_models),
                 "reused": old.get("reused")}  # fmt: skip
        taken = measurers(old, options.reuse)
    load_start = os.getloadavg()
    record = measure(options) if options.run else measure_class(options)
    record["settings"] = {name: getattr(options, name) for name in SAME_SETTINGS}
    record["reused"] = reuse
    record["page"] = options.page
    record["run"] = run_context(command_line(__file__, argv), load_start)
    own = {"command": record["run"]["command"], "date": record["run"]["date"],
           "record": options.json}  # fmt: skip
    record["measured_by"] = {  # per model: kept in the record, as the page names it
        key: taken[key] if key in options.reused_models and key in taken else own
        for key in record["models"]
    }
    save_record(record, options.json)
    if not options.no_page:
        record = with_included(record, options.include)
        print(write_results_page(record, options.json, pairs, options.page))


if __name__ == "__main__":
    main()
