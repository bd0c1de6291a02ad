"""Which checkpoint `sfd fit --ckpt_path last` continues from."""

from __future__ import annotations

import re
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

# Lightning's names: ModelCheckpoint(save_last=True) writes last.ckpt (last-v1.ckpt, ... when
# names collide); the SLURM requeue signal handler writes hpc_ckpt_<n>.ckpt in default_root_dir.
RESUMABLE_NAME = re.compile(r"^(last(-v\d+)?|hpc_ckpt_\d+)\.ckpt$")


def find_resume_checkpoint(trainer: pl.Trainer) -> str | None:
    """The newest `last*.ckpt` or `hpc_ckpt_*.ckpt` of this run, or None for a fresh start.

    Lightning's own `ckpt_path="last"` looks only in the current logger version's folder, which
    a restarted job has not written yet, and ignores the checkpoint saved on SLURM's pre-timeout
    signal. This searches the whole run: `default_root_dir`, every logger's save_dir and every
    `ModelCheckpoint` dirpath, recursively, and returns the most recently written file.

    Args:
        trainer: the (not yet fitted) trainer of the run.

    Returns:
        the checkpoint path, or None if the run has none yet.
    """
    roots = {Path(trainer.default_root_dir)}
    roots |= {Path(logger.save_dir) for logger in trainer.loggers if logger.save_dir}
    roots |= {
        Path(callback.dirpath)
        for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint) and callback.dirpath
    }
    candidates = {
        path.resolve()
        for root in roots
        if root.is_dir()
        for path in root.rglob("*.ckpt")
        if RESUMABLE_NAME.match(path.name) and path.is_file()
    }
    if not candidates:
        rank_zero_info("--ckpt_path last: this run has no checkpoint yet; starting from scratch")
        return None
    newest = max(candidates, key=lambda path: (path.stat().st_mtime_ns, str(path)))
    rank_zero_info(f"--ckpt_path last: resuming from {newest}")
    return str(newest)
