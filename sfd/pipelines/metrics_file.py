"""The metrics.json that goes onto an export's model card: read it, and check it is this run's.

What the evaluation writers record of the model they measured: `sfd eval` and the demos write
`forget` / `override` (class indices) at the top level, the concept evaluation under `protocol`;
the demos also write `iterations`. A checkpoint's training record holds the run's `forget` /
`override` classes and its `global_step`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sfd.errors import SFDConfigError


def read_metrics_file(path: str | Path, what: str = "--metrics") -> dict[str, Any]:
    """The JSON object of a metrics file, or one `SFDConfigError` line saying why it is not one.

    Args:
        path: the file.
        what: how the message names it.

    Returns:
        its content.
    """
    path = Path(path)
    if not path.is_file():
        state = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise SFDConfigError(f"{what} {str(path)!r} {state}")
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise SFDConfigError(f"{what} {str(path)!r} is not valid JSON ({reason})") from error
    if not isinstance(content, dict):
        raise SFDConfigError(
            f"{what} {str(path)!r} holds a {type(content).__name__}, not a JSON object of metrics"
        )
    return content


def metrics_mismatch(metrics: Mapping[str, Any], training: Mapping[str, Any] | None) -> str | None:
    """How a metrics file disagrees with a checkpoint's training record, or None.

    Args:
        metrics: the metrics file's content.
        training: the checkpoint's training record (`training_record`), if it has one.

    Returns:
        e.g. "it records forget [3], the checkpoint forgets [0]"; "" when the file records
        nothing to compare; None when everything recorded agrees.
    """
    training = training or {}
    conditions = training.get("conditions") or {}
    protocol = metrics.get("protocol") if isinstance(metrics.get("protocol"), Mapping) else {}
    compared = False
    for key in ("forget", "override"):
        recorded = _classes(metrics.get(key, protocol.get(key)))
        actual = _classes(conditions.get(key))
        if recorded is None or actual is None:
            continue
        compared = True
        if recorded != actual:
            return f"it records {key} {recorded}, the checkpoint's run has {key} {actual}"
    iterations, step = metrics.get("iterations"), training.get("global_step")
    if _is_int(iterations) and _is_int(step):
        compared = True
        if iterations != step:
            return f"it records {iterations} iterations, the checkpoint is at iteration {step}"
    return None if compared else ""


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _classes(value: Any) -> list[int] | None:
    """Class indices as a sorted list (a single class or a list of them), else None."""
    if _is_int(value):
        return [value]
    if isinstance(value, list) and value and all(_is_int(v) for v in value):
        return sorted(value)
    return None
