"""`sfd eval-text MODEL --classifier DIR ...`: the concept-forgetting mode of `sfd eval-text`.

Not a verb of its own: `sfd eval-text` hands its command line here when it names a classifier.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sfd.cli.common import (
    OneLineParser,
    add_objective_option,
    add_revival_options,
    check_attack_suite_options,
    revival_budget,
    run_quietly,
)
from sfd.errors import SFDConfigError

ATTACK_NAMES = ("soft", "discrete")  # the `sfd.eval.attacks.ATTACKS` entries `--attack` runs
BUDGET_FLAGS = {  # --attack-X -> budget field (None: each attack's own default)
    "tokens": "num_tokens",
    "steps": "steps",
    "restarts": "restarts",
    "batch": "batch_size",
    "eval_samples": "eval_samples",
    "lr": "lr",
    "top_k": "top_k",
    "candidates": "candidates",
}


def add_attack_options(parser: argparse.ArgumentParser) -> None:
    """The attack-suite and revival options shared by `sfd eval-text` and `sfd demo-text`."""
    from sfd.eval.attack_budget import AttackBudget, DiscreteAttackBudget

    soft, discrete = AttackBudget(), DiscreteAttackBudget()
    add = parser.add_argument
    add_objective_option(parser)
    add("--attack-tokens", type=int, help=f"tokens appended (default {soft.num_tokens})")
    add("--attack-steps", type=int, help=f"steps per restart (default soft {soft.steps}, "
        f"discrete {discrete.steps})")  # fmt: skip
    add("--attack-restarts", type=int, help=f"restarts (default {soft.restarts})")
    add("--attack-batch", type=int, help=f"noise per step (default soft {soft.batch_size}, "
        f"discrete {discrete.batch_size})")  # fmt: skip
    add("--attack-eval-samples", type=int, help=f"held-out samples (default {soft.eval_samples})")
    add("--attack-lr", type=float, help=f"soft-prompt Adam learning rate (default {soft.lr})")
    add(
        "--attack-top-k", type=int, help=f"discrete: tokens per position (default {discrete.top_k})"
    )
    add("--attack-candidates", type=int,
        help=f"discrete: substitutions tried per step (default {discrete.candidates})")  # fmt: skip
    add_revival_options(parser)


def attack_budgets(options: argparse.Namespace, names: list[str], seed: int) -> dict[str, Any]:
    """name -> budget of every attack asked for, from the --attack-* options (checked here)."""
    from dataclasses import fields

    from sfd.eval.attacks import ATTACKS, attack_budget

    given = {field: getattr(options, f"attack_{flag}") for flag, field in BUDGET_FLAGS.items()}
    readers = {name: {f.name for f in fields(ATTACKS[name].budget)} for name in ATTACK_NAMES}
    for flag, field in BUDGET_FLAGS.items():  # an option none of the chosen attacks reads
        value = given[field]
        if names and value is not None and not any(field in readers[n] for n in names):
            option = f"--attack-{flag.replace('_', '-')}"
            wanted = " or ".join(n for n in ATTACK_NAMES if field in readers[n])
            raise SFDConfigError(
                f"{option} {value} is read only by the {wanted} attack; --attack "
                f"{' '.join(names)} has none (add {wanted} to --attack or leave {option} out)"
            )
    return {name: attack_budget(name, **given, seed=seed) for name in names}


def concepts_parser() -> argparse.ArgumentParser:
    """Options of the concept mode (a classifier, prompt files, classes, real images, attack)."""
    parser = OneLineParser(
        prog="sfd eval-text MODEL --classifier DIR",
        description="Concept forgetting of an exported one-step text-to-image generator or a "
        "teacher folder (guided DDIM): UA on training forget prompts and held-out paraphrases, "
        "where forget samples went, remain and neighbour accuracy, remain FID / KID on the "
        "classifier's features; optionally the attack suite (soft-prompt and discrete prompt "
        "attacks; the paraphrases' success) and the revival test.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("model", type=Path, help="exported generator folder, or a text-to-image teacher folder")
    add("--classifier", type=Path, required=True, help="evaluation classifier folder")
    add("--forget-prompts", type=Path, required=True, help=".txt: forget prompts of training")
    add("--paraphrases", type=Path, help=".txt: held-out paraphrases (evaluation only)")
    add("--remain-prompts", type=Path, required=True, help=".csv with prompt,label columns")
    add("--forget", required=True, help="the forgotten class: index or name (7 or seven)")
    add("--override", required=True, help="the override class: index or name")
    add("--neighbours", type=int, nargs="+", help="classes reported apart (default: 2 nearest)")
    add("--real", default="digits", help="real images: 'digits', 'fashion-mnist' or a folder")
    add("--heldout-fraction", type=float, default=0.2, help="the held-out split of --real")
    add("--split-seed", type=int, default=0, help="seed of that split")
    add("--output-dir", type=Path, required=True, help="folder for metrics.json")
    add("--seed", type=int, default=0, help="seed of the evaluation noise")
    add("--forget-images", type=int, default=200, help="images per forget prompt set")
    add("--remain-per-class", type=int, default=100, help="images per remain class")
    add("--ddim-steps", type=int, default=25, help="DDIM steps of a teacher")
    add(
        "--guidance-scale",
        type=float,
        help="CFG scale (default 1 generator, 1.25 teacher as the text demo)",
    )
    add(
        "--attack",
        nargs="*",
        choices=ATTACK_NAMES,
        help="run these attacks (bare --attack: all of them: soft discrete)",
    )
    add_attack_options(parser)
    add("--attack-prompts", type=int, default=1, help="forget prompts attacked")
    add("--attack-ddim-steps", type=int, default=4, help="a teacher's sampler in the attack")
    add("--attacker-classifier", type=Path, help="transfer: the attacker classifier folder "
        "(default: trained once, cached, from --classifier's recorded recipe with another seed)")  # fmt: skip
    add("--cache", type=Path, help="where that trained attacker classifier is cached "
        "(default ~/.cache/sfd)")  # fmt: skip
    add("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run(args: list[str]) -> None:
    """Parse, evaluate, print the metrics."""
    from sfd.apps.harness.concept_run import ConceptEvalSettings, run_concept_evaluation
    from sfd.eval.attack_budget import checked_objectives

    parser = concepts_parser()
    o = parser.parse_args(args)
    check_attack_suite_options(parser, args, o, attacking=o.attack is not None)
    checked_objectives(o.attack_objective, o.attacker_classifier is not None)
    names = [] if o.attack is None else list(dict.fromkeys(o.attack or ATTACK_NAMES))
    attacks = attack_budgets(o, names, o.seed)
    revival = revival_budget(o, o.seed)
    settings = ConceptEvalSettings(
        model=o.model,
        classifier=o.classifier,
        forget_prompts=o.forget_prompts,
        remain_prompts=o.remain_prompts,
        forget=o.forget,
        override=o.override,
        output_dir=o.output_dir,
        real=o.real,
        paraphrases=o.paraphrases,
        neighbours=o.neighbours,
        heldout_fraction=o.heldout_fraction,
        split_seed=o.split_seed,
        seed=o.seed,
        forget_images=o.forget_images,
        remain_per_class=o.remain_per_class,
        ddim_steps=o.ddim_steps,
        guidance_scale=o.guidance_scale,
        attacks=attacks,
        attack_prompts=o.attack_prompts,
        revival=revival,
        attack_ddim_steps=o.attack_ddim_steps,
        attack_objective=o.attack_objective,
        attacker_classifier=o.attacker_classifier,
        cache=o.cache,
        progress=not o.no_progress,
    )
    with run_quietly(settings.progress):  # also the libraries' loading bars
        results = run_concept_evaluation(settings)
    print(json.dumps({k: v for k, v in results.items() if k != "protocol"}, indent=2))
    print(f"wrote {settings.output_dir / 'metrics.json'}")
