"""Callbacks that a test loads into `sfd fit` / `sfd teacher` by class_path (tests/scripts on the path)."""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.callbacks import Callback


class FailAtStep(Callback):
    """Raise RuntimeError at the start of training (step 0) or after iteration `step`."""

    def __init__(self, step: int = 0) -> None:
        self.step = step

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.step == 0:
            raise RuntimeError("probe: failure before the first iteration")

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if self.step and trainer.global_step >= self.step:
            raise RuntimeError(f"probe: failure after iteration {self.step}")


class WarnOnTrainStart(Callback):
    """Emit a warning no filter of sfd knows (a real one must reach the user)."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        warnings.warn("probe: a real problem", UserWarning, stacklevel=1)
