"""`sfd fit`: LightningCLI over `SFDModule`; the resolved config is saved beside the run."""

from __future__ import annotations


def run(args: list[str]) -> None:
    """Train a one-step unlearned generator (`sfd fit -c config.yaml --trainer.* --model.*`)."""
    from sfd.training.config_files import check_config_files

    check_config_files(args)  # before Lightning is imported
    from sfd.training.cli import sfd_lightning_cli

    sfd_lightning_cli(["fit", *args])
