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


ADVERSARIAL_KEY = "--model.adversarial"


def check_adversarial_switch(args: list[str]) -> None:
    """Refuse a `--model.adversarial.<setting>` option that no earlier part of the command line
    turns adversarial SFD on for: a config file with a `model.adversarial` block (such as
    configs/adversarial.yaml) or `--model.adversarial` with a value. On its own, jsonargparse
    would build the block from that one setting and the defaults, and a run meant as plain SFD
    (or one whose later `-c configs/adversarial.yaml` resets the setting) would train otherwise.

    Args:
        args: a training command line (after the verb); the config files are checked already.
    """
    on = False
    for index, token in enumerate(args):
        key, given, value = token.partition("=")
        following = args[index + 1] if index + 1 < len(args) else ""
        if key in CONFIG_FLAGS:
            model = yaml.safe_load(Path(value if given else following).read_text("utf-8")) or {}
            model = model.get("model") if isinstance(model.get("model"), dict) else {}
            if "adversarial" in model:
                on = model["adversarial"] is not None
        elif key == ADVERSARIAL_KEY:
            on = (value if given else following).strip().lower() not in ("", "null", "none")
        elif key.startswith(ADVERSARIAL_KEY + ".") and not on:
            raise SFDConfigError(
                f"{key} {value if given else following}: a setting of adversarial SFD, which "
                "nothing before it turns on; give it "
                "after -c configs/adversarial.yaml (or --model.adversarial '{}'), which turns "
                "adversarial SFD on with its defaults"
            )
