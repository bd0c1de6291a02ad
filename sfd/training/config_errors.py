"""jsonargparse's multi-line configuration errors as one line naming the key, the value and what is
allowed (`sfd fit`, the demos' SFD options, `sfd compare`'s baseline settings)."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
from collections.abc import Mapping
from typing import Any

from lightning.pytorch.callbacks import Callback

from sfd.errors import SFDConfigError

_KEY = re.compile(r'Parser key "([^"]+)":')
_GIVEN = re.compile(r"(?:Given|Got) value: (.*?)(?:\. Got value: .*)?$")
_CLASS = re.compile(r"<class '([^']+)'>")
_UNKNOWN = re.compile(r"Option '([^']+)' is not accepted")
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")
_EXPECTED = re.compile(r"Expected a <class '(?:int|float)'>\. Got value: (.*)$")
# the last line of a class argument's error: the argument and the whole value given, e.g.
# "Given value: NestedArg(key='betas', val=[0.9, 'nan'])"
_NESTED = re.compile(r"Given value: NestedArg\(key='([^']+)', val=(.*)\)$")


def one_line(error: Exception, model_class: type | None = None) -> str:
    """jsonargparse's multi-line error as one line naming the key, the value and what is allowed.

    Nested keys of a class's arguments are joined the way they are typed on the command line
    (`model.conditions.init_args.forget`).

    Args:
        error: jsonargparse's error.
        model_class: the class of the `model` group; where it has a `check_setting(name, value)`
            (`SFDModule`), a `model.<name>` value the parser rejects as no number ("nan", "inf",
            a word) is refused by that check, which names the allowed range.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    keys = [match.group(1) for line in lines for match in _KEY.finditer(line)]
    if not keys:
        return _tidy(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[1]}")
    refusal = _model_refusal(keys, lines, model_class)
    if refusal is not None:
        return refusal
    refusal = _class_refusal(lines)
    if refusal is not None:
        return refusal
    lines = _first_class_path_only(lines)
    keys = [match.group(1) for line in lines for match in _KEY.finditer(line)]
    key = keys[0] + "".join(f".init_args.{k}" for k in keys[1:])
    deepest = max(i for i, line in enumerate(lines) if _KEY.search(line))
    rest = lines[deepest:]
    rest[0] = _KEY.split(rest[0])[-1].strip()
    if not rest[0]:
        rest = rest[1:] or [""]
    unknown = next((m.group(1) for line in rest if (m := _UNKNOWN.search(line))), None)
    if unknown is not None:  # an unknown key inside a class's init_args, not a class_path problem
        owner = next((m.group(1) for line in rest if (m := _CLASS_PATH.search(line))), None)
        takes = f" ({owner} takes no argument of that name)" if owner else ""
        return _tidy(f"{key}.init_args.{unknown}: unknown key{takes}")
    value = next((m.group(1) for line in rest if (m := _GIVEN.search(line))), None)
    reason = _reason(rest)
    shown = f"{key}={value}" if value is not None else key
    return _tidy(f"{shown}: {reason}" if reason else shown)


def _model_refusal(keys: list[str], lines: list[str], model_class: type | None) -> str | None:
    """The model class's own refusal of a `model.<name>` value the parser rejected as no number
    (`check_setting`), the key named as typed ("model.alpha=nan must be a finite number in
    [0, inf)"; an argument of a class setting as "model.fake_optimizer.init_args.lr=nan ...");
    None when the class has no such check or lets the value pass."""
    check = getattr(model_class, "check_setting", None)
    given = next((m.group(1).strip() for line in lines if (m := _GIVEN.search(line))), None)
    if check is None or given is None or not keys[0].startswith("model."):
        return None
    name = keys[0].removeprefix("model.")
    value: object = _as_number(given)
    if len(set(keys)) == 2:  # an argument of a class setting: model.fake_optimizer, then lr
        name = f"{name}.init_args.{keys[1]}"
        value = _argument_value(lines, keys[1], value)
    elif len(set(keys)) != 1:
        return None
    try:
        check(name, value)
    except SFDConfigError as refusal:
        text = str(refusal)
        if "\n" in text:
            return None
        if text.startswith((f"{name}=", f"{name}[")):
            return f"model.{text}"
        if text.startswith((f"model.{name}=", f"model.{name}[")):
            return text
    return None


def _argument_value(lines: list[str], argument: str, inner: object) -> object:
    """The whole value of a class setting's `argument` as given (a list such as betas whole, not
    the element jsonargparse rejected), read from the error's last "Given value:" line: a
    `NestedArg` (`--model.fake_optimizer.init_args.lr nan`) or the class setting's mapping (a
    config file, `--model.fake_optimizer '{...}'`); `inner`, the rejected value, otherwise."""
    shown = next((line for line in reversed(lines) if line.startswith("Given value: ")), "")
    shown = shown.removeprefix("Given value: ")
    nested = _NESTED.search(f"Given value: {shown}")
    if nested is not None:
        return _literal(nested.group(2)) if nested.group(1) == argument else inner
    try:
        setting = ast.literal_eval(shown)
    except (ValueError, SyntaxError):
        return inner
    init_args = setting.get("init_args") if isinstance(setting, dict) else None
    if isinstance(init_args, dict) and argument in init_args:
        return _literal(repr(init_args[argument]))
    return inner


def _as_number(given: str) -> object:
    """`given` as a float where it is one ("nan", "inf", "1e-3"), else itself."""
    try:
        return float(given)
    except ValueError:
        return given


def _literal(shown: str) -> object:
    """A value as jsonargparse shows it (a Python literal: 'nan', [0.9, 'nan']) with its strings
    read as numbers where they are ones; the text itself when it is no literal."""
    try:
        value = ast.literal_eval(shown)
    except (ValueError, SyntaxError):
        return _as_number(shown)
    if isinstance(value, list | tuple):
        return [_as_number(v) if isinstance(v, str) else v for v in value]
    return _as_number(value) if isinstance(value, str) else value


def _first_class_path_only(lines: list[str]) -> list[str]:
    """The lines of a Union error up to the second class_path it tried: the first is the class the
    configuration names; the others (e.g. lightning.Callback) only reject its keys as unknown."""
    starts = [i for i, line in enumerate(lines) if _CLASS_PATH.search(line)]
    if len(starts) < 2:
        return lines
    return [line for line in lines[: starts[1]] if not line.startswith("Subtypes:")]


def _class_refusal(lines: list[str]) -> str | None:
    """The refusal of sfd's own settings class (a callback or a settings dataclass) when given the
    value jsonargparse rejected as no int / float ("nan", "high"): its check names the allowed
    range. None when the error is another kind, or the class does not refuse it in one line."""
    path = next((m.group(1) for line in lines if (m := _CLASS_PATH.search(line))), None)
    found = [m.group(1) for line in lines if (m := _KEY.search(line))]
    given = next((m.group(1).strip() for line in lines if (m := _EXPECTED.search(line))), None)
    if path is None or len(found) < 2 or given is None:
        return None
    cls = checking_class(path)
    if cls is None:
        return None
    try:
        value: object = float(given)
    except ValueError:
        value = given
    try:
        cls(**{found[-1]: value})
    except SFDConfigError as refusal:
        if found[-1] in str(refusal) and "\n" not in str(refusal):
            return str(refusal)
    except Exception:  # noqa: BLE001 - the class cannot be built from this one value
        return None
    return None


def checking_class(path: str) -> type | None:
    """sfd's own class at a configuration's class_path if building it does nothing but check and
    store its settings (a callback, a settings dataclass), else None.

    Args:
        path: the class_path, e.g. "sfd.training.completion.UntilForgotten".
    """
    cls = class_at(path) if path.startswith("sfd.") else None
    if cls is not None and (issubclass(cls, Callback) or dataclasses.is_dataclass(cls)):
        return cls
    return None


def callback_entries(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The {class_path, init_args} entries of a parsed configuration's trainer.callbacks."""
    callbacks = (config.get("trainer") or {}).get("callbacks") or []
    entries = callbacks if isinstance(callbacks, list) else [callbacks]
    return [entry for entry in entries if isinstance(entry, Mapping)]


def class_at(path: str) -> type | None:
    """The class a configuration's class_path names ("module.Class"), or None if there is none."""
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name) if module else None
    except (ImportError, AttributeError):
        return None
    return cls if isinstance(cls, type) else None


def _reason(lines: list[str]) -> str:
    for index, line in enumerate(lines):
        if line.startswith("Subtypes:"):
            return f"expected one of {line.removeprefix('Subtypes:').strip()}"
        if "Problem with given class_path" in line and index + 1 < len(lines):
            return f"{line.lstrip('- ').rstrip(':')}: {lines[index + 1].lstrip('- ')}"
    for line in lines:
        text = line.lstrip("- ")
        if text.startswith("Expected a") and "Expected a path" not in text:
            expected = text.split(". Got value:")[0].removeprefix("Expected a").strip()
            return f"expected {expected}"
    for line in lines:
        text = line.lstrip("- ")
        if text and not text.startswith(("Given value", "Expected a path")):
            return text.split(". Got value:")[0]
    return ""


def _tidy(text: str) -> str:
    return _CLASS.sub(r"\1", text)
