"""LightningCLI wiring shared by the training commands."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI

from sfd.module import SFDModule


def sfd_lightning_cli(args: list[str], run: bool = True) -> LightningCLI:
    """Run (or only build, with run=False) the LightningCLI of `SFDModule`.

    Args:
        args: command line after `sfd`, e.g. ["fit", "-c", "configs/tiny.yaml"].
        run: run the subcommand; with False, `args` must not name one.

    Returns:
        the LightningCLI (its `.model`, `.trainer` and `.config`).
    """
    trainer_defaults: dict[str, Any] = {"default_root_dir": "runs"}
    return LightningCLI(
        SFDModule,
        args=args,
        run=run,
        trainer_defaults=trainer_defaults,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        auto_configure_optimizers=False,
    )
