"""Run `sfd export --overwrite`, SIGKILLing itself at the worst moment of the folder swap.

    python tests/scripts/kill_during_export.py {exchange,renames} CHECKPOINT OUTPUT_DIR

"exchange": right after the atomic swap of the new and the old folder, before the old one is
deleted. "renames": with the swap unavailable (as on file systems without renameat2), right
after the old folder was renamed aside and before the new one is moved in.
"""

from __future__ import annotations

import os
import pathlib
import signal
import sys

import sfd.folders
from sfd.cli import main


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def run() -> None:
    mode, checkpoint, output_dir = sys.argv[1:]
    if mode == "exchange":
        swap = sfd.folders._exchange

        def swap_then_die(a: pathlib.Path, b: pathlib.Path) -> bool:
            if swap(a, b):
                die()
            raise AssertionError("renameat2(RENAME_EXCHANGE) is not available here")

        sfd.folders._exchange = swap_then_die
    else:
        sfd.folders._exchange = lambda a, b: False
        rename = pathlib.Path.rename

        def rename_then_maybe_die(self: pathlib.Path, target: pathlib.Path) -> pathlib.Path:
            result = rename(self, target)
            if f".{sfd.folders.REPLACED}-" in pathlib.Path(target).name:
                die()
            return result

        pathlib.Path.rename = rename_then_maybe_die
    sys.exit(main(["export", checkpoint, output_dir, "--overwrite"]))


if __name__ == "__main__":
    run()
