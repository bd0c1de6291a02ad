"""`sfd demo-text`: concept forgetting end to end (teacher, classifier, two-stage SFD, attack)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from sfd.cli.common import (
    FIT_PREFIXES,
    OneLineParser,
    add_average_after_option,
    check_attack_suite_options,
    is_option,
    revival_budget,
    run_quietly,
)
from sfd.errors import SFDConfigError


def demo_text_parser() -> argparse.ArgumentParser:
    """The text demo's own options; `--model.*` / `--trainer.*` go to the SFD configuration."""
    from sfd.apps.demo_text.settings import TextDemoSettings
    from sfd.cli.eval_text_concepts import ATTACK_NAMES, add_attack_options

    defaults = TextDemoSettings()
    parser = OneLineParser(
        prog="sfd demo-text",
        description="Train a text-to-image teacher on captioned digits or Fashion-MNIST (or reuse "
        "the cached one), distil it into a one-step generator without forgetting (stage 1, "
        "cached), forget one concept with SFD started from it (stage 2), compare with the "
        "teacher and the stage-1 generator, attack them (soft-prompt and discrete prompt "
        "attacks; the teacher with the soft prompt only), optionally test revival, write a "
        "report. SFD settings: the packaged preset sfd/apps/demo_text/sfd_text_<data>.yaml "
        "(stage 2; stage 1 adds sfd_text_<data>_stage1.yaml) or --sfd-config, overridden by "
        "`sfd fit` options, e.g. --trainer.max_steps 400.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--output-dir", type=Path, default=defaults.output_dir, help="report folder")
    add(
        "--data",
        default=defaults.data,
        help="'digits' (default), 'fashion-mnist' (Debian's dataset-fashion-mnist) or a folder "
        "of Fashion-MNIST idx files",
    )
    add(
        "--family",
        default=defaults.family,
        help="the teacher: 'unet' (UNet2DConditionModel, DDPM; default) or 'sd3' (an "
        "SD3Transformer2DModel trained with rectified flow, saved as a StableDiffusion3Pipeline "
        "folder and loaded by sfd.teachers.SD3Teacher; SFD preset sfd_text_<data>_sd3.yaml)",
    )
    add("--forget", help="class to forget, by index or name (default: seven / sneaker)")
    add("--override", help="class its prompts are mapped to (default: one / sandal)")
    add("--neighbours", type=int, nargs="+", help="classes reported apart (default: 2 nearest)")
    add("--paraphrases", type=Path, help="evaluation-only '{name}' templates (default: shipped)")
    add("--seed", type=int, default=defaults.seed, help="seed of every phase")
    add("--sfd-config", type=Path, help="SFD settings in `sfd fit` YAML (default: the preset)")
    add("--teacher-cache", type=Path, help="cache of teachers, classifiers, stage 1 (~/.cache/sfd)")
    add("--teacher-steps", type=int, help="teacher training steps (default per data set)")
    add("--teacher-channels", type=int, nargs="+", help="teacher UNet block_out_channels (unet)")
    add("--vae-steps", type=int, help="VAE training steps (Fashion-MNIST)")
    add("--text-encoder", help="transformers encoder folder (default: all-MiniLM-L6-v2)")
    add(
        "--classifier-steps",
        type=int,
        help="classifier training steps (default: 40 passes over the training images within a compute cap, at least 800)",
    )
    add(
        "--stage1-steps",
        "--baseline-iterations",
        dest="baseline_iterations",
        type=int,
        help="stage-1 (distillation without forgetting, cached) iterations; default: the stage-1 "
        "preset's, or --trainer.max_steps, which sets both stages",
    )
    add(
        "--curve-every",
        type=int,
        help="forgetting-curve interval (default: iterations/10; SFD under --until-forgotten: "
        "the rule's 10, which must not exceed --trainer.max_steps)",
    )
    add(
        "--until-forgotten",
        action=argparse.BooleanOptionalAction,
        default=defaults.until_forgotten,
        help="stage 2 stops once the data-free judge finds the forget prompts' concept gone "
        "(sfd.training.completion.UntilForgotten at the curve interval), within "
        "--trainer.max_steps (a cap, 600 in the presets); the classifier's UA is logged beside "
        "the judge's (default: on; --no-until-forgotten runs the whole cap)",
    )
    add_average_after_option(parser, defaults.average_after, "prompts' concept")
    add("--curve-per-class", type=int, default=defaults.curve_per_class)
    add("--forget-images", type=int, default=defaults.forget_images, help="per forget set")
    add("--remain-per-class", type=int, default=defaults.remain_per_class)
    add(
        "--ddim-steps",
        type=int,
        help="the teacher's sampler steps: DDIM (unet, default 25) or flow Euler (sd3, default 28)",
    )
    add(
        "--attack",
        nargs="+",
        choices=ATTACK_NAMES,
        default=list(defaults.attacks),
        help="attacks of the suite (default: soft discrete)",
    )
    add_attack_options(parser)
    add("--attack-prompts", type=int, default=defaults.attack_prompts, help="prompts attacked")
    add("--attack-ddim-steps", type=int, default=defaults.attack_ddim_steps, help="teacher")
    add("--grid-per-prompt", type=int, default=defaults.grid_per_prompt)
    add(
        "--adversarial",
        action="store_true",
        help="adversarial SFD (docs/method.md §9): train against an inner attack with the "
        "defaults of configs/adversarial.yaml; refine with --model.adversarial.steps etc.",
    )
    add("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    add("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run(args: list[str]) -> None:
    """`sfd demo-text`: parse, run, print the table and where the report is."""
    from sfd.apps.demo_text.settings import TextDemoSettings
    from sfd.cli.eval_text_concepts import attack_budgets

    parser = demo_text_parser()
    options, sfd_args = parser.parse_known_args(args)  # --help answers before torch
    stray = [a for a in sfd_args if is_option(a) and not a.startswith(FIT_PREFIXES)]
    if stray:
        raise SFDConfigError(
            f"unknown option {stray[0]!r}; sfd demo-text takes its own options "
            "(sfd demo-text --help) and SFD settings as --model.* / --trainer.*"
        )
    check_attack_suite_options(parser, args, options, attacking=True)  # the --revival-* options
    given = vars(options)
    skip = {"attacks", "revival"}  # built from the options below
    settings = TextDemoSettings(
        **{f.name: given[f.name] for f in fields(TextDemoSettings) if f.name in given and
           f.name not in skip},
        sfd_args=sfd_args,
        attacks=attack_budgets(options, list(dict.fromkeys(options.attack)), options.seed),
        revival=revival_budget(options, options.seed),
        progress=not options.no_progress,
    )  # fmt: skip
    from sfd.apps.demo_text.report import summary_table
    from sfd.apps.demo_text.run import run_text_demo

    with run_quietly(not options.no_progress):
        paths = run_text_demo(settings)
    metrics = json.loads(paths["metrics"].read_text())
    print(summary_table(metrics))
    print(f"report: {paths['report']}")
