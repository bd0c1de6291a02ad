"""Configuration files named on a training command line, checked before anything heavy is imported.

jsonargparse reports a YAML file that does not parse, or that holds a list instead of settings,
without naming the file; this names it, in one line, before torch or Lightning are imported.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sfd.errors import SFDConfigError

CONFIG_FLAGS = ("-c", "--config")


def config_files(args: list[str]) -> list[str]:
    """The files given with `-c FILE`, `--config FILE` or `--config=FILE`, in order."""
    found = []
    for index, token in enumerate(args):
        if token in CONFIG_FLAGS and index + 1 < len(args):
            found.append(args[index + 1])
        elif token.startswith("--config="):
            found.append(token.split("=", 1)[1])
    return found


def check_config_files(args: list[str]) -> None:
    """Raise `SFDConfigError` naming the first config file that is missing, unreadable, not YAML
    or not a mapping of settings.

    Args:
        args: a training command line (after the verb).
    """
    for name in config_files(args):
        path = Path(name)
        if not path.is_file():
            what = "is a folder" if path.is_dir() else "does not exist"
            raise SFDConfigError(f"config file {name!r} {what}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise SFDConfigError(f"config file {name!r} is not UTF-8 text") from error
        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or type(error).__name__
            raise SFDConfigError(
                f"config file {name!r} is not valid YAML{where}: {problem}"
            ) from error
        if content is not None and not isinstance(content, dict):
            raise SFDConfigError(
                f"config file {name!r} holds a {type(content).__name__}, not a mapping of "
                "settings (key: value lines such as 'trainer:' and 'model:')"
            )
