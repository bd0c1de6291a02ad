"""What a training run prints: one progress bar over the whole run, and no warnings that only
restate sfd's design.

SFD's "epochs" are an artefact of Lightning's loops (the data-free `IterationStream` yields
`steps_per_epoch` indices), so the bar counts iterations against `trainer.max_steps`, which is
also right after a resume. The bar only reads the trainer's counters: it never changes what a run
computes, so a resumed run stays bit-identical.
"""

from __future__ import annotations

import logging
import re
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from typing_extensions import override

# Warnings Lightning raises about choices sfd makes on purpose (message prefixes, regular
# expressions). Every other warning is shown.
DESIGN_WARNINGS = (
    # The frozen teacher and the EMA generator stay in eval mode (SFDModule.train).
    r"Found \d+ module\(s\) in eval mode at the start of training",
    # The data-free IterationStream has a length so that epochs and intervals work; it never
    # runs in worker processes.
    r"Your `IterableDataset` has `__len__` defined",
    # Batches hold only iteration indices: nothing is lost by resuming mid-epoch.
    r"You're resuming from a checkpoint that ended before the epoch ended",
    # SFD optimises manually; a checkpoint after a whole iteration is what resume needs.
    r"Using ModelCheckpoint with manual optimization",
    # Every start of a run writes to <default_root_dir>/checkpoints/; a resumed run finds it full.
    r"Checkpoint directory .* exists and is not empty",
)
DESIGN_INFO = ("try installing [litlogger]",)  # Lightning's advertisement, logged at INFO
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


def quiet_design_warnings() -> None:
    """Hide the warnings of `DESIGN_WARNINGS` (and Lightning's litlogger tip); keep all others.

    Call it inside `warnings.catch_warnings()` to limit it to one run; `sfd fit` and
    `sfd teacher` call it for theirs.
    """
    for message in DESIGN_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in logger.filters):
            logger.addFilter(_DropMessages(DESIGN_INFO))


class _DropMessages(logging.Filter):
    def __init__(self, fragments: tuple[str, ...]) -> None:
        super().__init__()
        self.pattern = re.compile("|".join(re.escape(f) for f in fragments))

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.search(record.getMessage())


class IterationProgressBar(TQDMProgressBar):
    """One bar for the whole run: iterations done / `trainer.max_steps`, with the logged losses.

    Lightning's bar counts batches of the current epoch against the epoch's length, which for
    SFD shows `Epoch 0/-2` and, after a resume, counts past its total. With `max_steps` unset
    (a run bounded by epochs) this is Lightning's bar unchanged.

    Args:
        refresh_rate: update the bar every this many iterations.
    """

    def __init__(self, refresh_rate: int = 1) -> None:
        super().__init__(refresh_rate=refresh_rate)

    def _by_iterations(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    @override
    def total_train_batches(self) -> int | float:
        if self._by_iterations():
            return self.trainer.max_steps
        return super().total_train_batches

    @override
    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_start(trainer, *args)
        if self._by_iterations():
            # A run resumed mid-epoch gets no on_train_epoch_start: set the bar up here.
            bar = self.train_progress_bar
            bar.reset(total=trainer.max_steps)
            bar.initial = trainer.global_step  # the rate counts this process's iterations only
            bar.set_description("Iterations")
            self._show(trainer.global_step)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self._by_iterations():
            super().on_train_epoch_start(trainer, *args)

    @override
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self._by_iterations():
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
            return
        step = trainer.global_step
        if self._should_update(step, self.train_progress_bar.total):
            self._show(step)
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._by_iterations():
            super().on_train_epoch_end(trainer, pl_module)
            return
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def _show(self, step: int) -> None:
        bar = self.train_progress_bar
        if not bar.disable:
            bar.n = step
            bar.refresh()
