"""jsonargparse's multi-line configuration errors as one line naming the key, the value and what is
allowed (`sfd fit`, the demos' SFD options, `sfd compare`'s baseline settings)."""

from __future__ import annotations

import re

_KEY = re.compile(r'Parser key "([^"]+)":')
_GIVEN = re.compile(r"(?:Given|Got) value: (.*?)(?:\. Got value: .*)?$")
_CLASS = re.compile(r"<class '([^']+)'>")
_UNKNOWN = re.compile(r"Option '([^']+)' is not accepted")
_CLASS_PATH = re.compile(r"Problem with given class_path '([^']+)'")


def one_line(error: Exception) -> str:
    """jsonargparse's multi-line error as one line naming the key, the value and what is allowed.

    Nested keys of a class's arguments are joined the way they are typed on the command line
    (`model.conditions.init_args.forget`).
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    keys = [match.group(1) for line in lines for match in _KEY.finditer(line)]
    if not keys:
        return _tidy(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[1]}")
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
