"""The `sfd` command line: `sfd fit | teacher | export | sample | demo | eval | eval-text`.

One module per verb (`sfd.cli.<verb>`), each with `run(args)`; this is the only package that
parses command lines. Training verbs are LightningCLI (`sfd fit -c a.yaml -c b.yaml
--trainer.max_steps 100`); the others are small argparse programs. A verb module is imported only
when its verb runs, and each verb checks its arguments and paths before it imports torch, so
`sfd --help`, `sfd --version` and a mistyped path answer at once. A user's mistake ends with one
`sfd: error: ...` line and exit status 2; a run that went non-finite with one such line and status
1; any other failure propagates with its traceback and a non-zero status.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Sequence

from sfd import __version__
from sfd.errors import NonFiniteError, SFDConfigError
from sfd.notices import quiet_known_warnings

USAGE = """usage: sfd <command> [options]   (sfd --version: the installed version)

commands:
  fit       train a one-step unlearned generator (LightningCLI: -c config.yaml, --trainer.*, --model.*)
  teacher   train a class-conditional DDPM teacher on labelled images (LightningCLI, --output_dir)
  export    write a checkpoint's (EMA) generator as a diffusers folder
  sample    generate images with an exported generator
  demo      digits end to end: teacher, classifier, SFD vs baselines, evaluation, report
  compare   forgetting methods side by side (SFD, two-stage, distill, ESD, SalUn, Retrain), one report
  eval      evaluate a generator or teacher for class forgetting (UA, accuracy, FID/KID)
  eval-text generate a text-to-image evaluation set (per-prompt seeds); CLIP score, NudeNet
  teacher-text  train a text-to-image teacher on captioned digits / Fashion-MNIST (diffusers folder)
  demo-text     concept forgetting end to end: text teacher, SFD, evaluation, soft-prompt attack

Run `sfd <command> --help` for the options of a command.
"""

# verb -> module of `sfd.cli` holding its `run(args)`
COMMANDS = {
    "fit": "fit",
    "teacher": "teacher",
    "export": "export",
    "sample": "sample",
    "demo": "demo",
    "compare": "compare",
    "eval": "evaluate",
    "eval-text": "eval_text",
    "teacher-text": "teacher_text",
    "demo-text": "demo_text",
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sfd` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        print(f"sfd {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"sfd: error: unknown command {command!r}; choose from {sorted(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        with warnings.catch_warnings():
            quiet_known_warnings()  # sfd.notices: the one list of hidden warnings, every verb
            importlib.import_module(f"sfd.cli.{COMMANDS[command]}").run(rest)
    except SFDConfigError as error:
        print(f"sfd: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:  # a fault, not a mistake: exit 1, the message says where
        print(f"sfd: error: {error}", file=sys.stderr)
        return 1
    return 0
