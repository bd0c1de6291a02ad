"""Configuration files named on a training command line, checked before anything heavy is imported.

jsonargparse reports a YAML file that does not parse, or that holds a list instead of settings,
without naming the file; this names it, in one line, before torch or Lightning are imported. Also
here: `attach_signed_values`, which every sfd command line passes through before it is parsed.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from sfd.errors import SFDConfigError

CONFIG_FLAGS = ("-c", "--config")
# what argparse itself takes for a negative number rather than an option (Python 3.11's
# `_negative_number_matcher`): -1, -.5, -0.5, but not -inf, -nan or -1e3
ARGPARSE_NEGATIVE_NUMBER = re.compile(r"^-\d+$|^-\d*\.\d+$")


def attach_signed_values(args: list[str]) -> list[str]:
    """`args` with each `--option VALUE` whose VALUE is a number argparse would take for an
    option (-inf, -nan, -1e3) written `--option=VALUE`.

    argparse reads a token that begins with "-" as an option unless it looks like -1 or -.5, so
    `--model.alpha -inf` would end in "expected one argument", a message without the value;
    attached, the value reaches the option's own check, which names it and the allowed range.
    Tokens after a bare `--` are left as they are.

    Args:
        args: a command line (after the verb).

    Returns:
        the command line, a new list.
    """
    attached: list[str] = []
    index = 0
    while index < len(args):
        token = args[index]
        if token == "--":
            return attached + list(args[index:])
        value = args[index + 1] if index + 1 < len(args) else None
        if (
            token.startswith("--")
            and "=" not in token
            and value is not None
            and value.startswith("-")
            and not ARGPARSE_NEGATIVE_NUMBER.match(value)
            and _is_number(value)
        ):
            attached.append(f"{token}={value}")
            index += 2
        else:
            attached.append(token)
            index += 1
    return attached


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


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


ADVERSARIAL_OPTION = "--model.adversarial"
MODEL_KEY = "--model"  # `--model FILE.yaml`, `--model '{json}'`: the whole model block


def model_value(value: str) -> dict:
    """The settings `--model VALUE` gives: VALUE a YAML/JSON file or an inline YAML/JSON
    mapping ({} when it is neither; jsonargparse reports that itself)."""
    try:
        text = Path(value).read_text("utf-8") if Path(value).is_file() else value
        content = yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return content if isinstance(content, dict) else {}


def lone_adversarial_setting(args: list[str], on: bool = False) -> str | None:
    """The first `--model.adversarial.<setting> VALUE` (as "key value") that no earlier part of
    the command line turns adversarial SFD on for, None when there is none. Adversarial SFD is
    on after a config file or `--model VALUE` with a `model.adversarial` (`adversarial`) block
    that is not null, or `--model.adversarial` with a value other than null; off after such a
    null.

    Args:
        args: a training command line (after the verb); the config files are checked already.
        on: whether adversarial SFD is on before `args`.
    """
    for index, token in enumerate(args):
        key, given, value = token.partition("=")
        value = value if given else (args[index + 1] if index + 1 < len(args) else "")
        block = None
        if key in CONFIG_FLAGS:
            content = yaml.safe_load(Path(value).read_text("utf-8")) or {}
            block = content.get("model") if isinstance(content.get("model"), dict) else {}
        elif key == MODEL_KEY:
            block = model_value(value)
        elif key == ADVERSARIAL_OPTION:
            on = value.strip().lower() not in ("", "null", "none")
        elif key.startswith(ADVERSARIAL_OPTION + ".") and not on:
            return f"{key} {value}"
        if block is not None and "adversarial" in block:
            on = block["adversarial"] is not None
    return None


def check_adversarial_switch(args: list[str]) -> None:
    """Refuse a `--model.adversarial.<setting>` option that no earlier part of the command line
    turns adversarial SFD on for (`lone_adversarial_setting`): a config file with a
    `model.adversarial` block (such as configs/adversarial.yaml), `--model` with an
    `adversarial` block, or `--model.adversarial` with a value. On its own, jsonargparse would
    build the block from that one setting and the defaults, and a run meant as plain SFD (or one
    whose later `-c configs/adversarial.yaml` resets the setting) would train otherwise.

    Args:
        args: a training command line (after the verb); the config files are checked already.
    """
    lone = lone_adversarial_setting(args)
    if lone is not None:
        raise SFDConfigError(
            f"{lone}: a setting of adversarial SFD, which nothing before it turns on; give it "
            "after -c configs/adversarial.yaml (or --model.adversarial '{}'), which turns "
            "adversarial SFD on with its defaults"
        )
