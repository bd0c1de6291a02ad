"""Writing model folders atomically: a failure or a kill never leaves a half-written folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_folder_atomically(output_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Let `write` fill a staging folder beside `output_dir`, then move it into place.

    Args:
        output_dir: the folder to create (an existing one is replaced only once `write` succeeded).
        write: fills the staging folder it is given.

    Returns:
        the folder.
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        write(staging)
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return output_dir
