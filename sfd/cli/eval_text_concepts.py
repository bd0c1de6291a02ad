"""`sfd eval-text MODEL --classifier DIR ...`: the concept-forgetting mode of `sfd eval-text`.

Not a verb of its own: `sfd eval-text` hands its command line here when it names a classifier.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ATTACK = "soft_prompt"  # the `sfd.eval.attacks.ATTACKS` entry `--attack` runs


def concepts_parser() -> argparse.ArgumentParser:
    """Options of the concept mode (a classifier, prompt files, classes, real images, attack)."""
    from sfd.eval.attacks import ATTACKS

    attack = ATTACKS[ATTACK].budget()
    parser = argparse.ArgumentParser(
        prog="sfd eval-text MODEL --classifier DIR",
        description="Concept forgetting of an exported one-step text-to-image generator or a "
        "teacher folder (guided DDIM): UA on training forget prompts and held-out paraphrases, "
        "where forget samples went, remain and neighbour accuracy, remain FID / KID on the "
        "classifier's features, and optionally the soft-prompt attack.",
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
    add("--attack", action="store_true", help="run the soft-prompt attack")
    add("--attack-tokens", type=int, default=attack.num_tokens)
    add("--attack-steps", type=int, default=attack.steps)
    add("--attack-lr", type=float, default=attack.lr)
    add("--attack-batch", type=int, default=attack.batch_size)
    add("--attack-eval-samples", type=int, default=attack.eval_samples)
    add("--attack-prompts", type=int, default=1, help="forget prompts attacked")
    add("--attack-ddim-steps", type=int, default=4, help="a teacher's sampler in the attack")
    add("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run(args: list[str]) -> None:
    """Parse, evaluate, print the metrics."""
    from sfd.apps.harness.text_evaluation import ConceptEvalSettings, run_concept_evaluation
    from sfd.eval.attacks import ATTACKS

    o = concepts_parser().parse_args(args)
    attack = None
    if o.attack:
        attack = ATTACKS[ATTACK].budget(
            o.attack_tokens,
            o.attack_steps,
            o.attack_lr,
            o.attack_batch,
            o.attack_eval_samples,
            o.seed,
        )
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
        attack=attack,
        attack_prompts=o.attack_prompts,
        attack_ddim_steps=o.attack_ddim_steps,
        progress=not o.no_progress,
    )
    results = run_concept_evaluation(settings)
    print(json.dumps({k: v for k, v in results.items() if k != "protocol"}, indent=2))
    print(f"wrote {settings.output_dir / 'metrics.json'}")
