"""What a number was measured with: library versions and the machine (for metrics.json files).

Every report of `sfd` (evaluation, demos, comparisons, the text evaluation) records these two, so
that a number read later names the code and the machine that produced it.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Iterable
from typing import Any

import torch

# The libraries every evaluation's numbers depend on (distribution names).
LIBRARIES = ("torch", "diffusers", "lightning", "torchmetrics", "numpy", "scikit-learn", "sfd")


def library_versions(extra: Iterable[str] = ()) -> dict[str, str]:
    """Installed versions of Python, `LIBRARIES` and `extra` (importlib.metadata).

    Args:
        extra: further distribution names, e.g. the text side's "transformers".

    Returns:
        {"python": version, name: version or "not installed", ...}, in that order.
    """
    versions = {"python": platform.python_version()}
    for name in (*LIBRARIES, *extra):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def environment() -> dict[str, Any]:
    """Where the numbers were measured: machine, torch threads, device, load at measurement."""
    return {
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
