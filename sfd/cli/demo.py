"""`sfd demo`: digits end to end (teacher, classifier, SFD, baseline, evaluation, report)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from sfd.cli.common import (
    FIT_PREFIXES,
    OneLineParser,
    add_class_attack_options,
    add_class_run_options,
    add_revival_options,
    check_attack_suite_options,
    class_embedding_budget,
    is_option,
    revival_budget,
    run_quietly,
)
from sfd.errors import SFDConfigError


def demo_parser() -> argparse.ArgumentParser:
    """The demo's own options; `--model.*` / `--trainer.*` go to the SFD configuration."""
    from sfd.apps.harness.class_run import ClassRunSettings

    defaults = ClassRunSettings()
    parser = OneLineParser(
        prog="sfd demo",
        description="Train a digits teacher (or reuse the cached one), forget one class with SFD, "
        "compare with the teacher and a distilled-without-forgetting generator, attack all three "
        "with a learned class embedding, optionally test revival, write a report. "
        "SFD settings: the packaged preset sfd/apps/harness/sfd_digits.yaml (or --sfd-config), "
        "overridden by `sfd fit` options, e.g. --trainer.max_steps 600 --model.ema_decay 0.99 "
        "--model.fake_optimizer.init_args.lr 1e-4.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--output-dir", type=Path, default=defaults.output_dir, help="report folder")
    add_class_run_options(parser, defaults)
    add(
        "--adversarial",
        action="store_true",
        help="adversarial SFD (docs/method.md §9): train against an inner attack with the "
        "defaults of configs/adversarial.yaml; refine with --model.adversarial.steps etc.",
    )
    add(
        "--skip-full-schedule-timing",
        action="store_true",
        help="do not time the teacher's full-schedule (1000-step) sampler",
    )
    add("--no-attack", action="store_true", help="skip the class-embedding attack")
    add_class_attack_options(parser)
    add_revival_options(parser)
    return parser


def run(args: list[str]) -> None:
    """`sfd demo`: parse, run, print the table and where the report is."""
    from sfd.apps.harness.class_run import ClassRunSettings

    parser = demo_parser()
    options, sfd_args = parser.parse_known_args(args)  # --help answers before torch loads
    stray = [a for a in sfd_args if is_option(a) and not a.startswith(FIT_PREFIXES)]
    if stray:
        raise SFDConfigError(
            f"unknown option {stray[0]!r}; sfd demo takes its own options (sfd demo --help) "
            "and SFD settings as --model.* / --trainer.*"
        )
    check_attack_suite_options(parser, args, options, not options.no_attack,
                               "by the attack, which --no-attack skips", "drop --no-attack")  # fmt: skip
    given = vars(options)
    attack = None if options.no_attack else class_embedding_budget(options, options.seed)
    built = {"attack", "revival"}  # from the options below
    settings = ClassRunSettings(
        **{
            f.name: given[f.name]
            for f in fields(ClassRunSettings)
            if f.name in given and f.name not in built
        },
        sfd_args=sfd_args,
        attack=attack,
        revival=revival_budget(options, options.seed),
        time_full_schedule=not options.skip_full_schedule_timing,
        progress=not options.no_progress,
    )
    from sfd.apps.demo.report import summary_table
    from sfd.apps.demo.run import run_demo

    with run_quietly(not options.no_progress):
        paths = run_demo(settings)
    metrics = json.loads(paths["metrics"].read_text())
    print(summary_table(metrics))
    print(f"report: {paths['report']}")
