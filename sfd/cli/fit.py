"""`sfd fit`: LightningCLI over `SFDModule`; the resolved config is saved beside the run, and the
last lines say where the checkpoint is and the `sfd export` command that exports it."""

from __future__ import annotations


def run(args: list[str]) -> None:
    """Train a one-step unlearned generator (`sfd fit -c config.yaml --trainer.* --model.*`)."""
    from sfd.training.config_files import check_config_files

    check_config_files(args)  # before Lightning is imported
    from sfd.training.cli import fit_summary, sfd_lightning_cli

    cli = sfd_lightning_cli(["fit", *args])
    if cli.trainer.is_global_zero:
        for line in fit_summary(cli.trainer):
            print(line)
