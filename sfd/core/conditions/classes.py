"""Class-label conditions: remain = every class but the forget ones (docs/method.md §3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sfd.core.conditions.base import ConditionBatch, ConditionPreview, ConditionSampler
from sfd.errors import SFDConfigError


def _as_list(value: int | list[int]) -> list[int]:
    return [value] if isinstance(value, int) else list(value)


@dataclass(eq=False)  # tensors have no single truth value
class ClassEmbeddingCondition:
    """Class labels of which some rows see a given embedding vector in place of their label's.

    Denoisers with a class-embedding table (`Denoiser.class_embedding_table`) feed `class_embeds`
    where `active` is True; it is how the class-embedding attack (docs/method.md §9) conditions
    a network on a learned vector.

    Attributes:
        labels: class labels, (B,) int64.
        class_embeds: the vectors fed in place of the label embeddings, (B, E).
        active: rows that see `class_embeds`, (B,) bool; the others see their label.
    """

    labels: Tensor
    class_embeds: Tensor
    active: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def cat(conditions: list[ClassEmbeddingCondition | Tensor]) -> ClassEmbeddingCondition:
        """The rows of `conditions` one after the other, as one batch; a label tensor among them
        joins as rows that see their labels (`active` False: the network sees exactly its label's
        embedding, `ClassConditionalUNet._run_unet`)."""
        embedded = next(c for c in conditions if isinstance(c, ClassEmbeddingCondition))
        width, dtype = embedded.class_embeds.shape[1], embedded.class_embeds.dtype
        parts = [
            c
            if isinstance(c, ClassEmbeddingCondition)
            else ClassEmbeddingCondition(
                c,
                torch.zeros(len(c), width, dtype=dtype, device=c.device),
                torch.zeros(len(c), dtype=torch.bool, device=c.device),
            )
            for c in conditions
        ]
        return ClassEmbeddingCondition(
            *(torch.cat([getattr(c, name) for c in parts]) for name in _EMBEDDING_FIELDS)
        )

    def dropped(self, drop: Tensor, null_labels: Tensor) -> ClassEmbeddingCondition:
        """Condition dropout: rows where `drop` (B,) is True become `null_labels`, embedding off."""
        drop = drop.to(self.labels.device)
        return ClassEmbeddingCondition(
            torch.where(drop, null_labels, self.labels), self.class_embeds, self.active & ~drop
        )


_EMBEDDING_FIELDS = ("labels", "class_embeds", "active")  # ClassEmbeddingCondition's, in order


class ClassConditions(ConditionSampler):
    """Class-label conditions: remain = every class but the forget ones.

    Args:
        forget: the class or classes to remove.
        override: one safe class per forget class (a single int applies to all of them), or
            "random" for a uniformly random remain class per sample.
        num_classes: number of labels; by default taken from the teacher.
    """

    def __init__(
        self,
        forget: int | list[int] = 0,
        override: int | list[int] | str = 1,
        num_classes: int | None = None,
    ) -> None:
        self.forget = _as_list(forget)
        if not self.forget:
            raise SFDConfigError("forget is empty; give at least one class to forget")
        if len(set(self.forget)) != len(self.forget):
            raise SFDConfigError(f"forget={self.forget} lists a class twice")
        if isinstance(override, str):
            if override != "random":
                raise SFDConfigError(
                    f"override={override!r} is not allowed; give class labels or 'random'"
                )
            self.override: list[int] | None = None
        else:
            override = _as_list(override)
            if len(override) == 1:
                override = override * len(self.forget)
            if len(override) != len(self.forget):
                raise SFDConfigError(
                    f"override={override} must give one class per forget class {self.forget} "
                    "(or a single class for all)"
                )
            for f, o in zip(self.forget, override, strict=True):
                if f == o:
                    raise SFDConfigError(f"override class {o} equals its forget class {f}")
                if o in self.forget:
                    raise SFDConfigError(
                        f"override class {o} is itself in the forget set {self.forget}"
                    )
            self.override = override
        self.num_classes: int | None = None
        if num_classes is not None:
            self.check(num_classes)

    def check(self, num_classes: int | None) -> None:
        if num_classes is None:
            raise SFDConfigError(
                "ClassConditions needs a class-conditional teacher (num_classes is unknown)"
            )
        if self.num_classes is not None and self.num_classes != num_classes:
            raise SFDConfigError(
                f"num_classes={self.num_classes} disagrees with the teacher's {num_classes} classes"
            )
        labels = self.forget + (self.override or [])
        bad = [c for c in labels if not 0 <= c < num_classes]
        if bad:
            raise SFDConfigError(
                f"class {bad[0]} is outside the label range 0..{num_classes - 1} of the teacher"
            )
        if len(set(self.forget)) >= num_classes:
            raise SFDConfigError(
                f"forget={self.forget} leaves no remain class out of {num_classes}"
            )
        self.num_classes = num_classes

    @property
    def remain(self) -> list[int]:
        """The classes to keep."""
        assert self.num_classes is not None, "call check(num_classes) first"
        return [c for c in range(self.num_classes) if c not in self.forget]

    def sample(
        self, batch_size: int, generator: torch.Generator, world_size: int = 1, rank: int = 0
    ) -> ConditionBatch:
        device = generator.device
        n = batch_size * world_size
        remain = torch.tensor(self.remain, device=device)
        forget = torch.tensor(self.forget, device=device)
        remain_labels = remain[torch.randint(len(remain), (n,), generator=generator, device=device)]
        which = torch.randint(len(forget), (n,), generator=generator, device=device)
        if self.override is None:
            pick = torch.randint(len(remain), (n,), generator=generator, device=device)
            override_labels = remain[pick]
        else:
            override_labels = torch.tensor(self.override, device=device)[which]
        part = slice(rank * batch_size, (rank + 1) * batch_size)
        return ConditionBatch(
            remain=remain_labels[part], forget=forget[which][part], override=override_labels[part]
        )

    def preview(self, per_row: int, rows: int, generator: torch.Generator) -> ConditionPreview:
        """Every remain class and every forget class as one row each (`rows` is not used)."""
        device = generator.device
        remain = torch.tensor(self.remain, device=device).repeat_interleave(per_row)
        forget = torch.tensor(self.forget, device=device).repeat_interleave(per_row)
        return ConditionPreview(
            remain,
            forget,
            [str(c) for c in self.remain],
            [f"{c} (forget)" for c in self.forget],
        )
