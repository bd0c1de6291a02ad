"""The `sfd` command line: `sfd fit | teacher | export | sample | demo | eval | eval-text`.

One module per verb (`sfd.cli.<verb>`), each with `run(args)`; this is the only package that
parses command lines. Training verbs are LightningCLI (`sfd fit -c a.yaml -c b.yaml
--trainer.max_steps 100`); the others are small argparse programs. A verb module is imported only
when its verb runs, so `sfd --help` stays fast. A user's mistake ends with one `sfd: error: ...`
line and exit status 2; a run that went non-finite with one such line and status 1; any other
failure propagates with its traceback and a non-zero status.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from sfd.errors import NonFiniteError, SFDConfigError

USAGE = """usage: sfd <command> [options]

commands:
  fit       train a one-step unlearned generator (LightningCLI: -c config.yaml, --trainer.*, --model.*)
  teacher   train a class-conditional DDPM teacher on labelled images (LightningCLI, --output_dir)
  export    write a checkpoint's (EMA) generator as a diffusers folder
  sample    generate images with an exported generator
  demo      digits end to end: teacher, classifier, SFD vs baselines, evaluation, report
  compare   forgetting methods side by side (SFD, two-stage, distill, ESD, SalUn, Retrain), one report
  eval      evaluate a generator or teacher for class forgetting (UA, accuracy, FID/KID)
  eval-text generate a text-to-image evaluation set (per-prompt seeds); CLIP score, NudeNet

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
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sfd` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(
            f"sfd: error: unknown command {command!r}; choose from {sorted(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        importlib.import_module(f"sfd.cli.{COMMANDS[command]}").run(rest)
    except SFDConfigError as error:
        print(f"sfd: error: {error}", file=sys.stderr)
        return 2
    except NonFiniteError as error:  # a fault, not a mistake: exit 1, the message says where
        print(f"sfd: error: {error}", file=sys.stderr)
        return 1
    return 0
