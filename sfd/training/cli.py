"""LightningCLI wiring shared by the training commands."""

from __future__ import annotations

import re
import warnings
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import Strategy

from sfd.core.module import SFDModule
from sfd.errors import SFDConfigError
from sfd.training.callbacks import LoggedSaveConfigCallback
from sfd.training.checkpoint_io import AtomicCheckpointIO
from sfd.training.loggers import ResumableWandbLogger
from sfd.training.resume import find_resume_checkpoint
from sfd.training.strategies import AlternatingDDPStrategy

__all__ = ["AlternatingDDPStrategy", "SFDLightningCLI", "sfd_lightning_cli"]  # "sfd_ddp" registered


def sfd_lightning_cli(args: list[str], run: bool = True) -> LightningCLI:
    """Run (or only build, with run=False) the LightningCLI of `SFDModule`.

    Args:
        args: command line after `sfd`, e.g. ["fit", "-c", "configs/tiny.yaml"].
        run: run the subcommand; with False, `args` must not name one.

    Returns:
        the LightningCLI (its `.model`, `.trainer` and `.config`).
    """
    trainer_defaults: dict[str, Any] = {"default_root_dir": "runs"}
    with warnings.catch_warnings():
        # `args` is how the `sfd` console script hands over its command line, on purpose.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return _build(args, run, trainer_defaults)


def _build(args: list[str], run: bool, trainer_defaults: dict[str, Any]) -> LightningCLI:
    return SFDLightningCLI(
        SFDModule,
        args=args,
        run=run,
        trainer_defaults=trainer_defaults,
        save_config_callback=LoggedSaveConfigCallback,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        auto_configure_optimizers=False,
    )


class SFDLightningCLI(LightningCLI):
    """LightningCLI with atomic checkpoint writes by default and `--ckpt_path last` that also
    finds SLURM requeue (hpc) checkpoints and the checkpoints of earlier logger versions."""

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins")
        if not isinstance(plugins, list):
            plugins = [] if plugins is None else [plugins]
        strategy = config.get("strategy")
        has_io = any(isinstance(p, CheckpointIO) for p in plugins) or (
            isinstance(strategy, Strategy) and strategy._checkpoint_io is not None
        )
        if not has_io:
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        logger = config.get("logger")
        if isinstance(logger, ResumableWandbLogger) and logger.save_dir is None:
            # wandb files, its run id and the checkpoints live in the run folder by default.
            kwargs.setdefault("logger", logger.in_folder(config["default_root_dir"]))
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        fit_config = self.config_init["fit"]
        if fit_config.get("ckpt_path") == "last":
            fit_config["ckpt_path"] = find_resume_checkpoint(self.trainer)


class _ParseOnlyCLI(LightningCLI):
    def instantiate_classes(self) -> None:  # parse and type-check, load nothing
        return None


def parse_fit_config(args: list[str], one_line_errors: bool = False) -> Any:
    """Parse and type-check an `sfd fit` command line without instantiating anything.

    Args:
        args: e.g. ["-c", "configs/tiny.yaml", "--model.batch_size", "4"] (no subcommand).
        one_line_errors: raise a bad value as one `SFDConfigError` line naming the key, instead
            of jsonargparse's usage block and exit.

    Returns:
        the parsed jsonargparse namespace.
    """
    return _parse_only(args, one_line_errors).config


def build_from_fit_config(args: list[str]) -> tuple[SFDModule, dict[str, Any]]:
    """Parse an `sfd fit` command line and build its module, but not its `Trainer`.

    For programs that run `SFDModule` under a Trainer of their own (the digits demo): every
    model setting comes from the same parser and presets as `sfd fit`.

    Args:
        args: e.g. ["-c", preset, "--model.alpha", "1.0"] (no subcommand).

    Returns:
        (the module, the Trainer keyword arguments of the config, with its classes instantiated).
    """
    cli = _parse_only(args, one_line_errors=True)
    init = cli.parser.instantiate_classes(cli.config)
    return init["model"], dict(init["trainer"])


def _parse_only(args: list[str], one_line_errors: bool) -> _ParseOnlyCLI:
    kwargs: dict[str, Any] = {"parser_kwargs": {"exit_on_error": False}} if one_line_errors else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        try:
            return _ParseOnlyCLI(
                SFDModule, args=args, run=False, auto_configure_optimizers=False, **kwargs
            )
        except ArgumentError as error:
            raise SFDConfigError(one_line(error)) from error


def one_line(error: Exception) -> str:
    """jsonargparse's multi-line error as one line: 'key: what is wrong'."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    match = re.fullmatch(r'Parser key "([^"]+)":', lines[0])
    if match and len(lines) > 1:
        return f"{match.group(1)}: {lines[1]}"
    return lines[0]
