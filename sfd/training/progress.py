"""What a training run prints: one progress bar over the whole run, and no warnings that only
restate sfd's design.

SFD's "epochs" are an artefact of Lightning's loops (the data-free `IterationStream` yields
`steps_per_epoch` indices), so the bar counts iterations against `trainer.max_steps`, which is
also right after a resume. The bar only reads the trainer's counters: it never changes what a run
computes, so a resumed run stays bit-identical.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from typing_extensions import override

from sfd.notices import quiet_known_warnings
from sfd.progress import PlainMarks, plain_output, progress_line


def quiet_design_warnings() -> None:
    """Hide the warnings and log lines listed in `sfd.notices` (the one list), every other kept.

    For a plain `lightning.Trainer` run of `SFDModule`; every `sfd` verb installs it itself.
    """
    quiet_known_warnings()


class IterationProgressBar(TQDMProgressBar):
    """One bar for the whole run: iterations done / `trainer.max_steps`, with the logged losses.

    Lightning's bar counts batches of the current epoch against the epoch's length, which for
    SFD shows `Epoch 0/-2` and, after a resume, counts past its total. With `max_steps` unset
    (a run bounded by epochs) this is Lightning's bar unchanged. When the bar's stream (stdout) is
    not a terminal (a SLURM log, `| tee`), the bar is replaced by a plain line every
    `PLAIN_EVERY_PERCENT` % of the run: `Iterations 50/1000 (5%) loss_fake=…`.

    Args:
        refresh_rate: update the bar every this many iterations.
        plain: print plain lines instead of the bar (default: when stdout is not a terminal).
    """

    def __init__(self, refresh_rate: int = 1, plain: bool | None = None) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.plain = plain
        self._marks = PlainMarks()

    def _plain_lines(self) -> bool:
        return plain_output() if self.plain is None else self.plain

    @override
    def init_train_tqdm(self) -> Tqdm:
        if self._by_iterations() and self._plain_lines():
            return Tqdm(disable=True)
        return super().init_train_tqdm()

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
        if self._plain_lines() and not self.is_disabled:
            self.train_progress_bar.n = step  # the hidden bar still counts
            self._print_plain_line(trainer, pl_module, step)
            return
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

    def _print_plain_line(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int
    ) -> None:
        """One line when the run crosses the next `PLAIN_EVERY_PERCENT` % mark (and at its end)."""
        if self._marks.due(step, trainer.max_steps):
            metrics = self.get_metrics(trainer, pl_module)
            print(progress_line("Iterations", step, trainer.max_steps, metrics), flush=True)

    def _show(self, step: int) -> None:
        bar = self.train_progress_bar
        if not bar.disable:
            bar.n = step
            bar.refresh()
