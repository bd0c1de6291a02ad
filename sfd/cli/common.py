"""What several verbs share (not a verb itself): the torch device a user names, quiet training."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sfd.errors import SFDConfigError


def usable_device(name: str, flag: str = "--device") -> Any:
    """The `torch.device` called `name`, if this machine can allocate on it.

    Args:
        name: e.g. "cpu", "cuda", "cuda:1", "mps".
        flag: the option that named it, for the message.

    Returns:
        the device.
    """
    import torch

    try:
        device = torch.device(name)
        torch.empty(0, device=device)  # "cuda" parses on a machine without CUDA; this does not
    except (RuntimeError, AssertionError, ValueError) as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise SFDConfigError(
            f"{flag} {name!r} is not a usable torch device here ({reason}); e.g. cpu, cuda, cuda:1"
        ) from error
    return device


@contextmanager
def design_warnings_hidden() -> Iterator[None]:
    """Within: Lightning's warnings about choices sfd makes on purpose are hidden (as in `sfd fit`)."""
    from sfd.training.progress import quiet_design_warnings

    with warnings.catch_warnings():
        quiet_design_warnings()
        yield
