"""The `sfd` command line: `sfd fit | export | sample | ...`.

Training commands are LightningCLI (`sfd fit -c a.yaml -c b.yaml --trainer.max_steps 100`); the
others are small argparse programs. A user's mistake ends with one `sfd: error: ...` line and exit
status 2; any other failure propagates with its traceback and a non-zero status.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from sfd.errors import SFDConfigError

USAGE = """usage: sfd <command> [options]

commands:
  fit       train a one-step unlearned generator (LightningCLI: -c config.yaml, --trainer.*, --model.*)
  teacher   train a class-conditional DDPM teacher on labelled images (LightningCLI, --output_dir)
  export    write a checkpoint's (EMA) generator as a diffusers folder
  sample    generate images with an exported generator
  demo      digits end to end: teacher, classifier, SFD vs baselines, evaluation, report
  eval      evaluate a generator or teacher for class forgetting (UA, accuracy, FID/KID)
  eval-text generate a text-to-image evaluation set (per-prompt seeds); CLIP score, NudeNet

Run `sfd <command> --help` for the options of a command.
"""


def run_fit(args: list[str]) -> None:
    """`sfd fit`: LightningCLI over `SFDModule`; the resolved config is saved beside the run."""
    from sfd.training_cli import sfd_lightning_cli

    sfd_lightning_cli(["fit", *args])


def run_teacher(args: list[str]) -> None:
    """`sfd teacher`: LightningCLI over `DDPMTeacherModule`; writes a diffusers teacher folder."""
    from sfd.teacher_cli import teacher_lightning_cli

    teacher_lightning_cli(["fit", *args])


def run_export(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="sfd export", description="Export the (EMA) generator of an SFD checkpoint."
    )
    parser.add_argument("checkpoint", help="Lightning checkpoint written by `sfd fit`")
    parser.add_argument("output_dir", help="folder to create (diffusers format)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty folder")
    options = parser.parse_args(args)
    from sfd.export import export_checkpoint

    path = export_checkpoint(options.checkpoint, options.output_dir, options.overwrite)
    print(f"exported generator to {path}")


def run_sample(args: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="sfd sample", description="Sample an exported one-step generator."
    )
    parser.add_argument("generator", help="exported generator folder")
    parser.add_argument("--labels", type=int, nargs="+", help="class labels (default: all)")
    parser.add_argument(
        "--prompt", action="append", help="text prompt of a text-to-image generator (repeatable)"
    )
    parser.add_argument("--negative-prompt", help="negative prompt (with --guidance-scale != 1)")
    parser.add_argument("--guidance-scale", type=float, default=1.0, help="CFG scale (text)")
    parser.add_argument(
        "--num-per-label", "--num-per-prompt", type=int, default=8, help="images per label/prompt"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise")
    parser.add_argument("--output", default="samples.png", help="PNG grid (rows = labels)")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    options = parser.parse_args(args)
    if options.num_per_label < 1:
        raise SFDConfigError(f"--num-per-label={options.num_per_label} must be at least 1")
    if options.prompt:
        from sfd.text_pipeline import sample_prompts_to_file

        path = sample_prompts_to_file(
            options.generator,
            options.prompt,
            options.num_per_label,
            options.seed,
            Path(options.output),
            options.negative_prompt,
            options.guidance_scale,
            options.device,
        )
        print(f"wrote {path}")
        return
    from sfd.sampling import sample_grid_to_file

    path = sample_grid_to_file(
        options.generator,
        options.labels,
        options.num_per_label,
        options.seed,
        Path(options.output),
        options.device,
    )
    print(f"wrote {path}")


def run_demo(args: list[str]) -> None:
    """`sfd demo`: digits teacher, classifier, SFD and baselines, evaluation and report."""
    from sfd.demo_cli import run_demo_command

    run_demo_command(args)


def run_eval(args: list[str]) -> None:
    """`sfd eval`: class-forgetting metrics of an exported generator or a DDPM teacher."""
    from sfd.demo_cli import run_eval_command

    run_eval_command(args)


def run_eval_text(args: list[str]) -> None:
    """`sfd eval-text`: evaluation image set from a prompt file, CLIP score, NudeNet counts."""
    from sfd.text_metrics import run_eval_text_command

    run_eval_text_command(args)


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "fit": run_fit,
    "teacher": run_teacher,
    "export": run_export,
    "sample": run_sample,
    "demo": run_demo,
    "eval": run_eval,
    "eval-text": run_eval_text,
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
        COMMANDS[command](rest)
    except SFDConfigError as error:
        print(f"sfd: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
