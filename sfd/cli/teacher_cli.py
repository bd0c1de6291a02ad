"""`sfd teacher`: LightningCLI over `DDPMTeacherModule` and `TeacherDataModule`.

The data decides the network's input shape and class count (linked at instantiation); after
training, rank zero writes the diffusers folder to `--output_dir`.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sfd.apps.teacher_training import (
    DDPMTeacherModule,
    TeacherDataModule,
    check_output_dir,
    save_teacher,
)

DEFAULT_OUTPUT_DIR = "runs/teachers/digits"


class TeacherCLI(LightningCLI):
    """LightningCLI with the data → model links and the final export of the teacher folder."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--output_dir",
            type=str,
            default=DEFAULT_OUTPUT_DIR,
            help="folder to write the trained teacher to (diffusers DDPMPipeline layout + sfd.json)",
        )
        parser.link_arguments("data.num_classes", "model.num_classes", apply_on="instantiate")
        parser.link_arguments("data.image_shape", "model.image_shape", apply_on="instantiate")

    def _output_dir(self) -> str:
        return self.config[self.subcommand]["output_dir"]

    def before_fit(self) -> None:
        check_output_dir(self._output_dir())  # fail before training, not after

    def after_fit(self) -> None:
        if not self.trainer.is_global_zero:
            return
        data = self.datamodule
        extra: dict[str, Any] = {
            "source": str(data.source),
            "batch_size": data.batch_size,
            "lr": self.model.hparams.lr,
            "train_size": len(data.train_images),
        }
        if data.train_images.class_names is not None:
            extra["class_names"] = list(data.train_images.class_names)
        path = save_teacher(self.model, self._output_dir(), extra)
        print(f"wrote teacher to {path}")


def run(args: list[str]) -> None:
    """Train a class-conditional DDPM teacher and write its diffusers folder."""
    teacher_lightning_cli(["fit", *args])


def teacher_lightning_cli(args: list[str], run: bool = True) -> TeacherCLI:
    """Run (or only build, with run=False) the LightningCLI of `sfd teacher`.

    Args:
        args: command line after `sfd teacher`, prefixed with the subcommand, e.g.
            ["fit", "-c", "configs/teacher_digits.yaml"].
        run: run the subcommand; with False, `args` must not name one.

    Returns:
        the LightningCLI (its `.model`, `.datamodule`, `.trainer` and `.config`).
    """
    with warnings.catch_warnings():
        # `args` is how the `sfd` console script hands over its command line, on purpose.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return TeacherCLI(
            DDPMTeacherModule,
            TeacherDataModule,
            args=args,
            run=run,
            trainer_defaults={"default_root_dir": "runs/teacher_training", "max_steps": 3000},
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
        )


class _ParseOnlyTeacherCLI(TeacherCLI):
    def instantiate_classes(self) -> None:  # parse and type-check, load nothing
        return None


def parse_teacher_config(args: list[str]) -> Any:
    """Parse and type-check an `sfd teacher` command line without loading data or models.

    Args:
        args: e.g. ["-c", "configs/teacher_digits.yaml"] (no subcommand).

    Returns:
        the parsed jsonargparse namespace.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        cli = _ParseOnlyTeacherCLI(
            DDPMTeacherModule, TeacherDataModule, args=args, run=False, seed_everything_default=0
        )
    return cli.config
