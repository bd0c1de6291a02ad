"""`sfd teacher`: train a class-conditional DDPM teacher (LightningCLI, see `teacher_cli`).

Config files are checked before Lightning is imported.
"""

from __future__ import annotations

from typing import Any


def run(args: list[str]) -> None:
    """Train a class-conditional DDPM teacher and write its diffusers folder."""
    from sfd.training.config_files import check_config_files

    check_config_files(args)
    from sfd.cli.teacher_cli import teacher_lightning_cli

    teacher_lightning_cli(["fit", *args])


def __getattr__(name: str) -> Any:
    # teacher_lightning_cli, parse_teacher_config, TeacherCLI, ...: imported on first use.
    from sfd.cli import teacher_cli

    return getattr(teacher_cli, name)
