"""Lightning loop plumbing for a data-free, two-optimizer module.

`IterationStream` is the "dataset" of SFD (batches are only conditions and noise, drawn inside
the module); `step_without_counting` keeps the fake-score step out of `global_step`, so that
`max_steps`, checkpoint intervals and the random streams all count SFD iterations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset

# LightningOptimizer's private hooks that count a step in `global_step` (see step_without_counting).
LIGHTNING_STEP_HOOKS = ("_on_before_step", "_on_after_step")


class IterationStream(IterableDataset):
    """A data-free "dataset": SFD batches are only conditions and noise, drawn inside the module.

    It yields the index of each iteration so that Lightning's loops (epochs, checkpoints, logging
    intervals) work unchanged.
    """

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.steps_per_epoch))

    def __len__(self) -> int:
        return self.steps_per_epoch


def step_without_counting(optimizer: Any) -> None:
    """`optimizer.step()` that Lightning does not count in `trainer.global_step`.

    Lightning counts every optimizer step, and one SFD iteration is two (fake score, generator),
    so the fake-score step is kept out of the count and `max_steps`, checkpoint intervals and the
    random streams all count iterations. Lightning exposes no switch for this: its training loop
    counts through the private `LightningOptimizer._on_before_step` / `_on_after_step` hooks,
    which are swapped for no-ops for this one step. If a Lightning release drops them, this
    fails loudly instead of silently counting two steps per iteration.

    Args:
        optimizer: a `LightningOptimizer`, as `LightningModule.optimizers()` returns it.
    """
    missing = [name for name in LIGHTNING_STEP_HOOKS if not hasattr(optimizer, name)]
    if missing:
        import lightning

        raise RuntimeError(
            f"Lightning {lightning.__version__}'s {type(optimizer).__name__} has no {missing}: "
            "sfd cannot keep the fake-score step out of global_step with this Lightning version"
        )
    saved = [getattr(optimizer, name) for name in LIGHTNING_STEP_HOOKS]
    for name in LIGHTNING_STEP_HOOKS:
        setattr(optimizer, name, _do_nothing)
    try:
        optimizer.step()
    finally:
        for name, hook in zip(LIGHTNING_STEP_HOOKS, saved, strict=True):
            setattr(optimizer, name, hook)


def _do_nothing() -> None:
    return None
