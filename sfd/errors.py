"""The error types: a user's mistake (`SFDConfigError`) and a run that went non-finite."""

from __future__ import annotations

import math
from typing import Any

MAX_GUIDANCE = 100.0  # classifier-free guidance beyond this only saturates images


class SFDConfigError(ValueError):
    """A user-supplied value is invalid; the message names the value and what is allowed."""


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss, gradient or weight; the run stops before any checkpoint
    or export is written from it."""


def check_number(
    name: str,
    value: float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return `value` if it is a finite number in the given range, else raise `SFDConfigError`.

    Args:
        name: the setting, as the user writes it (e.g. "alpha").
        value: its value.
        low: smallest allowed value (None: unbounded).
        high: largest allowed value (None: unbounded).
        low_open: exclude `low` itself.
        high_open: exclude `high` itself.

    Returns:
        the value.
    """
    lower = "" if low is None else f"{'(' if low_open else '['}{low:g}"
    upper = "" if high is None else f"{high:g}{')' if high_open else ']'}"
    allowed = (
        f"a finite number in {lower or '(-inf'}, {upper or 'inf)'}"
        if low is not None or high is not None
        else "a finite number"
    )
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SFDConfigError(f"{name}={value!r} must be {allowed}")
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or value < low or (low_open and value == low)
    if high is not None:
        bad = bad or value > high or (high_open and value == high)
    if bad:
        raise SFDConfigError(f"{name}={value!r} must be {allowed}")
    return value


def check_count(name: str, value: int, low: int = 1, low_name: str | None = None) -> int:
    """Return `value` if it is an integer (not a bool) of at least `low`, else raise `SFDConfigError`.

    Args:
        name: the setting, as the user writes it (e.g. "batch_size").
        value: its value.
        low: the smallest allowed value.
        low_name: how the message names `low` when it is another setting (e.g. "every_n=10").

    Returns:
        the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SFDConfigError(f"{name}={value!r} must be an integer of at least {low_name or low}")
    return value


def check_at_least(flag: str, value: Any, low: int = 1, note: str = "") -> int:
    """Return `value` if it is an integer (not a bool) of at least `low`, else raise
    `SFDConfigError` saying it is too small (the demos' and `sfd fit`'s counts of iterations and
    images).

    Args:
        flag: the option, as the user types it (e.g. "--trainer.max_steps").
        value: its value.
        low: the smallest allowed value.
        note: what else is allowed, said after `low` (e.g. "or -1: no limit").

    Returns:
        the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        allowed = f"{low}, {note}" if note else f"{low}"
        raise SFDConfigError(f"{flag} is too small (got {value}; need at least {allowed})")
    return value


def check_guidance(name: str, value: float) -> float:
    """Return a classifier-free guidance scale if it is finite and in [0, `MAX_GUIDANCE`].

    Args:
        name: the setting, as the user writes it (e.g. "--guidance-scale").
        value: its value.

    Returns:
        the value.
    """
    return check_number(name, value, low=0, high=MAX_GUIDANCE)


def check_integer(name: str, value: Any, low: int) -> int:
    """Return `value` if it is an integer of at least `low`, else raise `SFDConfigError`.

    Args:
        name: the setting, as the user writes it (e.g. "--lora").
        value: its value.
        low: smallest allowed value.

    Returns:
        the value.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SFDConfigError(f"{name}={value!r} must be an integer of at least {low}")
    return value
