"""Reading a checkpoint file a user names: safely (`weights_only=True`) and with one clear error.

The one place `sfd` reads a Lightning checkpoint itself (torch only, no Lightning): `sfd fit`
checks `--ckpt_path` with it before Lightning loads the file, and exports rebuild their generator
from what it returns. Nothing in a checkpoint is ever unpickled as code.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from sfd.errors import SFDConfigError
from sfd.folders import check_input_file


def load_checkpoint_safely(
    path: str | os.PathLike[str], what: str = "checkpoint"
) -> dict[str, Any]:
    """Read a Lightning checkpoint with `weights_only=True`, every failure as one clear error.

    The tensors are memory-mapped where the file allows it, so validating a large checkpoint
    before Lightning loads it costs little memory.

    Args:
        path: the checkpoint file.
        what: how the message names it, e.g. "--ckpt_path".

    Returns:
        the checkpoint dictionary (tensors on the CPU).
    """
    path = check_input_file(path, what)
    name = f"{what} {str(path)!r}"
    try:
        checkpoint = _torch_load(path)
    except MemoryError:
        raise
    except Exception as error:  # any failure to parse a user's file: one line naming it
        message = str(error)
        if isinstance(error, pickle.UnpicklingError) and "Unsupported global" in message:
            raise SFDConfigError(
                f"{name} cannot be loaded safely: it holds Python objects other than tensors "
                "and plain data (refused, nothing of it was run)"
            ) from error
        reason = _first_sentence(message)
        if len(reason) < 30:  # bare values such as KeyError's "101" say little on their own
            reason = f"{type(error).__name__}: {reason}".rstrip(": ")
        raise SFDConfigError(
            f"{name} is not a readable torch checkpoint (truncated, corrupted or another "
            f"format: {reason})"
        ) from error
    if not isinstance(checkpoint, dict) or "pytorch-lightning_version" not in checkpoint:
        raise SFDConfigError(
            f"{name} is not a Lightning checkpoint (no 'pytorch-lightning_version' entry)"
        )
    if not isinstance(checkpoint.get("state_dict"), dict):
        raise SFDConfigError(f"{name} holds no model weights ('state_dict')")
    return checkpoint


def _torch_load(path: Path) -> Any:
    """torch.load with `weights_only=True`, memory-mapped unless the file is in the legacy format."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap can only be used" not in str(error):
            raise
    return torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format


def _first_sentence(message: str, limit: int = 120) -> str:
    text = " ".join(message.split())
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


# What `--ckpt_path last` resumes from and `sfd export RUN_FOLDER` exports: Lightning's last
# checkpoints and SLURM's pre-emption saves.
RESUMABLE_NAME = re.compile(r"^(last(-v\d+)?|hpc_ckpt_\d+)\.ckpt$")
DEFAULT_ROOT_DIR = "runs"  # `sfd fit`'s trainer.default_root_dir when no config names one


def newest_checkpoint(folders: Iterable[str | Path]) -> str | None:
    """The most recently written `last*.ckpt` or `hpc_ckpt_*.ckpt` anywhere under `folders`.

    Args:
        folders: the folders to search, recursively (ones that do not exist are skipped).

    Returns:
        the checkpoint path, or None if there is none.
    """
    candidates = {
        path.resolve()
        for root in map(Path, folders)
        if root.is_dir()
        for path in root.rglob("*.ckpt")
        if RESUMABLE_NAME.match(path.name) and path.is_file()
    }
    if not candidates:
        return None
    return str(max(candidates, key=lambda path: (path.stat().st_mtime_ns, str(path))))
