"""`sfd demo`: digits end to end (teacher, classifier, SFD, baseline, evaluation, report)."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from sfd.cli.common import design_warnings_hidden
from sfd.errors import SFDConfigError

FIT_PREFIXES = ("--model.", "--trainer.")  # forwarded to the SFD configuration


def demo_parser() -> argparse.ArgumentParser:
    """The demo's own options; `--model.*` / `--trainer.*` go to the SFD configuration."""
    from sfd.apps.demo.run import DemoSettings

    defaults = DemoSettings()
    parser = argparse.ArgumentParser(
        prog="sfd demo",
        description="Train a digits teacher (or reuse the cached one), forget one class with SFD, "
        "compare with the teacher and a distilled-without-forgetting generator, write a report. "
        "SFD settings: the packaged preset sfd/apps/demo/sfd_digits.yaml (or --sfd-config), "
        "overridden by `sfd fit` options, e.g. --trainer.max_steps 600 --model.ema_decay 0.99 "
        "--model.fake_optimizer.init_args.lr 1e-4.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--output-dir", type=Path, default=defaults.output_dir, help="report folder")
    add("--data", default=defaults.data, help="'digits' (default) or a labelled .npz / CIFAR-10")
    add("--forget", type=int, default=defaults.forget, help="class to forget")
    add("--override", type=int, default=defaults.override, help="class it is mapped to")
    add("--seed", type=int, default=defaults.seed, help="seed of every phase")
    add("--sfd-config", type=Path, help="SFD settings in `sfd fit` YAML (default: the preset)")
    add("--teacher-cache", type=Path, help="teacher cache folder (default ~/.cache/sfd)")
    add("--teacher-steps", type=int, help="teacher training steps (default: the trainer's)")
    add("--teacher-channels", type=int, nargs="+", help="teacher UNet block_out_channels")
    add("--classifier-steps", type=int, help="classifier training steps")
    add(
        "--baseline-iterations",
        type=int,
        help="stage-1 (distillation without forgetting) iterations; default: the stage-1 preset's (600), or --trainer.max_steps, which sets both stages",
    )
    add("--curve-every", type=int, help="forgetting-curve interval (default: iterations/20)")
    add("--curve-per-class", type=int, default=defaults.curve_per_class)
    add("--eval-per-class", type=int, default=defaults.eval_per_class, help="generated per class")
    add("--ddim-steps", type=int, default=defaults.ddim_steps, help="teacher DDIM steps")
    add("--throughput-batch", type=int, default=defaults.throughput_batch)
    add("--throughput-repeats", type=int, default=defaults.throughput_repeats)
    add("--grid-per-class", type=int, default=defaults.grid_per_class)
    add(
        "--skip-full-schedule-timing",
        action="store_true",
        help="do not time the teacher's full-schedule (1000-step) sampler",
    )
    add(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy shared machine)",
    )
    add("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run(args: list[str]) -> None:
    """`sfd demo`: parse, run, print the table and where the report is."""
    from sfd.apps.demo.report import summary_table
    from sfd.apps.demo.run import DemoSettings, run_demo

    options, sfd_args = demo_parser().parse_known_args(args)
    stray = [a for a in sfd_args if _is_option(a) and not a.startswith(FIT_PREFIXES)]
    if stray:
        raise SFDConfigError(
            f"unknown option {stray[0]!r}; sfd demo takes its own options (sfd demo --help) "
            "and SFD settings as --model.* / --trainer.*"
        )
    given = vars(options)
    settings = DemoSettings(
        **{f.name: given[f.name] for f in fields(DemoSettings) if f.name in given},
        sfd_args=sfd_args,
        time_full_schedule=not options.skip_full_schedule_timing,
        progress=not options.no_progress,
    )
    with design_warnings_hidden():
        paths = run_demo(settings)
    metrics = json.loads(paths["metrics"].read_text())
    print(summary_table(metrics))
    print(f"report: {paths['report']}")


def _is_option(token: str) -> bool:
    """An option name, not a value such as -1 or -.5."""
    if not token.startswith("-"):
        return False
    try:
        float(token)
    except ValueError:
        return True
    return False
