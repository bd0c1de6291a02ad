"""Atomic checkpoint writes: a kill during a save never leaves a truncated latest checkpoint.

Lightning's `TorchCheckpointIO` serialises into memory and lets fsspec move a temporary file from
the system temp folder into place. When the run folder is on another file system than /tmp (the
usual case on clusters) that move is a copy, which a kill can interrupt, and nothing is fsynced.
Here the temporary file lives in the checkpoint's own folder, is fsynced, and `os.replace`
swaps it in: a reader sees either the old file or the complete new one. The file gets the mode
the user's umask gives a plain file. Every load passes `weights_only=True` (tensors and plain
data only; a checkpoint cannot run code), whatever torch's default.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override

from sfd.errors import SFDConfigError
from sfd.folders import follow_umask

TEMP_SUFFIX = ".tmp"  # unfinished checkpoint files end with this; they are never loaded
# The temporary files `atomic_torch_save` writes: .<name>.<random>.tmp beside <name>.
TEMP_NAME = re.compile(r"^\..+\.ckpt\.[^.]+\.tmp$")


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """`torch.save` to a temporary file beside `path`, fsync it, then `os.replace` it into place.

    Args:
        obj: anything `torch.save` accepts (a checkpoint dictionary).
        path: the final file; its folder is created if needed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temp_name = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as file:
            torch.save(obj, file)
            file.flush()
            os.fsync(file.fileno())
        follow_umask(temp_name)  # mkstemp makes 0600 files
        os.replace(temp_name, path)
    except BaseException:
        # Also on KeyboardInterrupt / SystemExit: never leave the half-written file behind.
        Path(temp_name).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Persist the rename itself (POSIX; folders cannot be opened this way on Windows)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO whose local saves are atomic (`atomic_torch_save`) and whose loads
    are always `weights_only=True`.

    Remote paths (s3://, gs://, ...) keep Lightning's own writer: object stores publish an object
    only once its upload completes.
    """

    @override
    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if weights_only is False:
            raise SFDConfigError(
                "weights_only=False: sfd loads checkpoints with weights_only=True only "
                "(a checkpoint must not be able to run code)"
            )
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__}.save_checkpoint got storage_options={storage_options!r}; "
                "it takes none"
            )
        if not _is_local(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)


def _is_local(path: Any) -> bool:
    protocol = get_filesystem(str(path)).protocol
    return "file" in (protocol if isinstance(protocol, tuple) else (protocol,))


def remove_stale_temp_files(folders: Iterable[Path]) -> list[Path]:
    """Delete the `.tmp` files that kills during earlier atomic saves left in `folders`.

    Call it before a run writes its first checkpoint (nothing of this run is in flight then).

    Args:
        folders: the run's folders (searched recursively).

    Returns:
        the deleted files.
    """
    removed = []
    for folder in {Path(f).resolve() for f in folders}:
        if not folder.is_dir():
            continue
        for path in folder.rglob(f"*{TEMP_SUFFIX}"):
            if TEMP_NAME.match(path.name) and path.is_file():
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed
