"""The LightningCLI of `sfd teacher` over `DDPMTeacherModule` and `TeacherDataModule`.

The data decides the network's input shape and class count (linked at instantiation); after
training, rank zero writes the diffusers folder to `--output_dir`. Logs and checkpoints go to the
run folder beside it, `<output_dir>-training`, unless `--trainer.default_root_dir` says otherwise.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.cli import LightningArgumentParser

from sfd.apps.teachers.checks import (
    check_no_teacher_yet,
    check_output_dir,
    check_teacher_settings,
    single_class_warning,
)
from sfd.apps.teachers.pixel import DDPMTeacherModule, TeacherDataModule, save_teacher
from sfd.cli.teacher_defaults import (
    DEFAULT_MAX_STEPS,
    DEFAULT_OUTPUT_DIR,
    OUTPUT_DIR_HELP,
    OVERWRITE_HELP,
)
from sfd.folders import check_writable_folder
from sfd.training.config_files import check_config_files
from sfd.training.progress import quiet_design_warnings
from sfd.training.run_cli import ONE_LINE_PARSER, RunCLI

RUN_FOLDER_SUFFIX = "-training"  # logs and checkpoints: <output_dir>-training/


def run_folder_for(output_dir: str) -> str:
    """The default run folder of a teacher written to `output_dir`: a sibling, never inside it
    (the teacher folder is replaced whole when it is written)."""
    return str(output_dir).rstrip("/\\") + RUN_FOLDER_SUFFIX


class TeacherCLI(RunCLI):
    """`RunCLI` with the data → model links and the final export of the teacher folder."""

    LINKED_MODEL_KEYS = ("num_classes", "image_shape")

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--output_dir", type=str, default=DEFAULT_OUTPUT_DIR, help=OUTPUT_DIR_HELP
        )
        parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
        for key in self.LINKED_MODEL_KEYS:
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    def _output_dir(self) -> str:
        config = self.config[self.subcommand] if self.subcommand else self.config
        return config["output_dir"]

    def before_instantiate_classes(self) -> None:
        prefix = f"{self.subcommand}." if self.subcommand else ""
        if self.config.get(f"{prefix}trainer.default_root_dir") is None:
            self.config[f"{prefix}trainer.default_root_dir"] = run_folder_for(self._output_dir())
        super().before_instantiate_classes()

    def check_config(self, config: Mapping[str, Any]) -> None:
        # Fail before loading data and training, not after.
        check_writable_folder(config["output_dir"], "--output_dir")
        check_output_dir(config["output_dir"])
        check_no_teacher_yet(config["output_dir"], bool(config.get("overwrite")), "--output_dir")
        check_teacher_settings(config["model"], config.get("trainer") or {})

    def checkpoint_kind_error(self, checkpoint: Mapping[str, Any]) -> str | None:
        if not any(key.startswith("unet.") for key in checkpoint["state_dict"]):
            return "is not a checkpoint of sfd teacher training (it holds no unet weights)"
        return None

    def after_instantiate_classes(self) -> None:
        if self.datamodule is not None and self.trainer.is_global_zero:
            message = single_class_warning(self.datamodule.train_images)
            if message:
                print(f"sfd: warning: {message}", file=sys.stderr)

    def before_fit(self) -> None:
        check_output_dir(self._output_dir())
        super().before_fit()

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


def teacher_lightning_cli(args: list[str], run: bool = True) -> TeacherCLI:
    """Run (or only build, with run=False) the LightningCLI of `sfd teacher`.

    Args:
        args: command line after `sfd teacher`, prefixed with the subcommand, e.g.
            ["fit", "-c", "configs/teacher_digits.yaml"].
        run: run the subcommand; with False, `args` must not name one.

    Returns:
        the LightningCLI (its `.model`, `.datamodule`, `.trainer` and `.config`).
    """
    check_config_files(args)
    with warnings.catch_warnings():
        # `args` is how the `sfd` console script hands over its command line, on purpose.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        quiet_design_warnings()
        return TeacherCLI(
            DDPMTeacherModule,
            TeacherDataModule,
            args=args,
            run=run,
            trainer_defaults={"max_steps": DEFAULT_MAX_STEPS},
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={**ONE_LINE_PARSER, "prog": "sfd teacher"},
        )


class _ParseOnlyTeacherCLI(TeacherCLI):
    def before_instantiate_classes(self) -> None:  # touch no folder
        self._seed_after_checks()

    def instantiate_classes(self) -> None:  # parse and type-check, load nothing
        return None

    def after_instantiate_classes(self) -> None:
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
