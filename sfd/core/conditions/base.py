"""Data-free condition sampling: remain, forget and override conditions (docs/method.md §3).

A training batch is only conditions and noise. Samplers draw the *global* batch (all ranks) from a
shared random stream and return this rank's slice, so a run's randomness does not depend on how
many processes share it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

# The networks that evaluate conditions under classifier-free guidance (docs/method.md §4): the
# fake score in its own loss, the fake score inside the generator loss, the teacher.
GUIDED_ROLES = ("fake_train", "fake_eval", "teacher")


@dataclass
class ConditionBatch:
    """The conditions of one training iteration.

    Attributes:
        remain: conditions to keep, c_r (B,).
        forget: conditions to remove, c_f (B,), seen by the generator and the fake score.
        override: safe targets, c_o (B,), seen by the teacher in place of `forget`.
    """

    remain: Any
    forget: Any
    override: Any


@dataclass
class ConditionPreview:
    """The fixed conditions of a sample grid: one caption per row, `per_row` images per row.

    Attributes:
        remain: remain conditions, len(remain_labels)·per_row of them, row-major.
        forget: forget conditions, len(forget_labels)·per_row of them, row-major.
        remain_labels: caption of each remain row.
        forget_labels: caption of each forget row.
    """

    remain: Any
    forget: Any
    remain_labels: list[str]
    forget_labels: list[str]


class ConditionSampler:
    """Draws remain / forget / override conditions for a batch."""

    def check(self, num_classes: int | None) -> None:
        """Validate against the teacher; raise `SFDConfigError` naming the bad value."""

    def bind(self, teacher: Any) -> None:
        """Prepare teacher-dependent state once (text samplers encode their prompts here)."""

    def sample(
        self, batch_size: int, generator: torch.Generator, world_size: int = 1, rank: int = 0
    ) -> ConditionBatch:
        """Draw the global batch of world_size·batch_size and return rank's slice of batch_size."""
        raise NotImplementedError

    @classmethod
    def negative_setting(cls, settings: Mapping[str, Any]) -> tuple[str, tuple[str, ...]] | None:
        """The negative prompt the configured sampler will give guided networks, read from its
        init_args before anything is built: (the setting that gives it, as `--model.conditions.
        init_args.<name> <value>` words, the roles that see it); None: none (default).

        `sfd fit` refuses, before loading, a negative prompt that a role's guidance cannot use
        (`sfd.teachers.Denoiser.check_negative_prompt`).
        """
        return None

    def for_role(self, cond: Any, role: str) -> Any:
        """`cond` as the guided network `role` (one of `GUIDED_ROLES`) sees it; default: as is.

        Text samplers use this to give the negative prompt only to some networks.
        """
        return cond

    def preview(self, per_row: int, rows: int, generator: torch.Generator) -> ConditionPreview:
        """Fixed conditions for sample grids; by default `rows` rows drawn from `generator`.

        Args:
            per_row: images per row.
            rows: rows for samplers without a natural row per condition (class samplers show
                every class instead).
            generator: the grid's seeded random stream.

        Returns:
            remain and forget conditions of rows·per_row images each, row-major, with a
            caption per row.
        """
        batch = self.sample(rows * per_row, generator)
        return ConditionPreview(
            batch.remain,
            batch.forget,
            [f"remain {i}" for i in range(rows)],
            [f"forget {i}" for i in range(rows)],
        )
