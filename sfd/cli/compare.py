"""`sfd compare`: SFD, two-stage SFD, distillation, ESD, SalUn and Retrain on one teacher, one report."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

from sfd.cli.common import (
    FIT_PREFIXES,
    OneLineParser,
    add_class_run_options,
    is_option,
    run_quietly,
)
from sfd.errors import SFDConfigError


def compare_parser() -> argparse.ArgumentParser:
    """The harness's own options; `--model.*` / `--trainer.*` go to SFD, `--esd.*` / `--salun.*`
    to the baselines."""
    from sfd.apps.compare.choices import METHOD_KEYS, CompareSettings

    defaults = CompareSettings()
    parser = OneLineParser(
        prog="sfd compare",
        description="Run forgetting methods on one class-conditional teacher (trained or reused "
        "from the cache) and compare them with one classifier and protocol: UA, where forget "
        "samples went, remain accuracy per class, remain FID/KID, NFE, images/s, training time "
        "and time to UA >= 95 %. SFD settings: the preset sfd/apps/harness/sfd_digits.yaml, "
        "overridden by `sfd fit` options (--model.*, --trainer.*); baseline settings: the preset "
        "sfd/apps/compare/baselines_digits.yaml, overridden by --esd.KEY VALUE / --salun.KEY VALUE.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--output-dir", type=Path, default=defaults.output_dir, help="report folder")
    add(
        "--methods",
        default=",".join(METHOD_KEYS),
        help=f"comma-separated methods to run, from {','.join(METHOD_KEYS)} (default: all)",
    )
    add("--baselines-config", type=Path, help="ESD / SalUn settings YAML (default: the preset)")
    add_class_run_options(parser, defaults)
    return parser


def run(args: list[str]) -> None:
    """`sfd compare`: parse, run, print the table and where the report is."""
    from sfd.apps.compare.choices import BASELINE_PREFIXES, CompareSettings, parse_methods

    options, rest = compare_parser().parse_known_args(args)  # --help answers before torch loads
    sfd_args, baseline_args = split_forwarded(rest, BASELINE_PREFIXES)
    given = vars(options)
    settings = CompareSettings(
        **{
            f.name: given[f.name]
            for f in fields(CompareSettings)
            if f.name in given and f.name != "methods"
        },
        methods=parse_methods(options.methods),
        sfd_args=sfd_args,
        baseline_args=baseline_args,
        progress=not options.no_progress,
    )
    from sfd.apps.compare.report import summary_table
    from sfd.apps.compare.run import run_compare

    with run_quietly(not options.no_progress):
        paths = run_compare(settings)
    metrics = json.loads(paths["metrics"].read_text())
    print(summary_table(metrics))
    print(f"report: {paths['report']}")


def split_forwarded(
    rest: list[str], baseline_prefixes: tuple[str, ...]
) -> tuple[list[str], list[str]]:
    """Split unparsed tokens into SFD (`--model.*`, `--trainer.*`) and baseline options.

    Each option takes the tokens up to the next option as its value(s); an option of neither
    kind, or a value with no option, is a mistake.
    """
    sfd_args: list[str] = []
    baseline_args: list[str] = []
    target: list[str] | None = None
    for token in rest:
        if is_option(token):
            name = token.split("=", 1)[0]
            if name.startswith(FIT_PREFIXES):
                target = sfd_args
            elif name.startswith(baseline_prefixes):
                target = baseline_args
            else:
                raise SFDConfigError(
                    f"unknown option {token!r}; sfd compare takes its own options (sfd compare "
                    "--help), SFD settings as --model.* / --trainer.* and baseline settings as "
                    "--esd.* / --salun.*"
                )
        elif target is None:
            raise SFDConfigError(f"unexpected argument {token!r} (sfd compare --help)")
        target.append(token)
    return sfd_args, baseline_args
