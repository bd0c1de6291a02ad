"""Save a checkpoint, then start a second save that stalls mid-write (for a kill test).

    python tests/scripts/slow_save.py {atomic,plain} TARGET STARTED_MARKER

"atomic" writes through `sfd.training.checkpoint_io.AtomicCheckpointIO`, "plain" with `torch.save` to the
target path. The second checkpoint holds an object whose pickling writes STARTED_MARKER and then
sleeps, so the parent can SIGKILL the process while the file is being written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from sfd.training.checkpoint_io import AtomicCheckpointIO


class StallsWhilePickled:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        Path(self.marker).write_text("saving")
        time.sleep(600)
        return (int, (0,))


def main() -> None:
    writer, target, marker = sys.argv[1:]
    save = AtomicCheckpointIO().save_checkpoint if writer == "atomic" else torch.save
    save({"global_step": 1, "state_dict": {"weight": torch.full((64, 64), 1.0)}}, target)
    second = {
        "global_step": 2,
        "state_dict": {"weight": torch.full((64, 64), 2.0)},
        "stall": StallsWhilePickled(marker),
    }
    save(second, target)


if __name__ == "__main__":
    main()
