"""`TextCondition`: the condition batch of text-conditioned denoisers (docs/method.md §3, §4)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor


def _rows(tensor: Tensor | None, index: slice | Tensor) -> Tensor | None:
    return None if tensor is None else tensor[index]


def _moved(tensor: Tensor | None, device: torch.device | str) -> Tensor | None:
    return None if tensor is None else tensor.to(device)


@dataclass(eq=False)  # tensors have no single truth value
class TextCondition:
    """A batch of prompt embeddings with what classifier-free guidance and dropout replace them by.

    Guidance evaluates the prompt against `negative_embeds`; condition dropout replaces a whole
    row by the empty prompt (prompt and negative alike). On remain batches the negative *is* the
    empty prompt; forget batches may carry a negative prompt (the nudity keyword list), which
    each network sees or not (`PromptConditions.negative_for`).

    Teachers whose network also takes one pooled vector per prompt (SDXL: the second text
    encoder's projected output) carry it beside each embedding: `pooled_embeds`,
    `negative_pooled` and `empty_pooled` always travel with `prompt_embeds`, `negative_embeds` and
    `empty_embeds`, row for row, through slicing, `null()`, `without_negative()` and `dropped()`.

    Attributes:
        prompt_embeds: text-encoder hidden states of the prompts, (B, L, D).
        negative_embeds: the guidance null of each row: the negative prompt, or the empty
            prompt, (B, L, D).
        prompts: the prompt strings, for logging (optional), length B.
        empty_embeds: the empty prompt's hidden states, (B, L, D); None means the negative is
            the empty prompt.
        pooled_embeds: the prompts' pooled embeddings, (B, P), or None for encoders without one.
        negative_pooled: the negative's pooled embeddings, (B, P); given with `pooled_embeds`.
        empty_pooled: the empty prompt's pooled embeddings, (B, P); given when both
            `empty_embeds` and `pooled_embeds` are.
    """

    prompt_embeds: Tensor
    negative_embeds: Tensor
    prompts: tuple[str, ...] | None = None
    empty_embeds: Tensor | None = None
    pooled_embeds: Tensor | None = None
    negative_pooled: Tensor | None = None
    empty_pooled: Tensor | None = None

    def __post_init__(self) -> None:
        shapes = [self.prompt_embeds.shape, self.negative_embeds.shape]
        if self.empty_embeds is not None:
            shapes.append(self.empty_embeds.shape)
        if len(set(shapes)) != 1:
            raise ValueError(
                f"prompt, negative and empty embeddings {[tuple(s) for s in shapes]} must all "
                "have the same shape (B, L, D)"
            )
        if self.prompts is not None and len(self.prompts) != len(self.prompt_embeds):
            raise ValueError(
                f"{len(self.prompts)} prompts for {len(self.prompt_embeds)} embeddings"
            )
        pooled = [self.pooled_embeds, self.negative_pooled]
        wanted = [True, True, self.empty_embeds is not None]
        if self.pooled_embeds is None:
            if any(p is not None for p in (*pooled, self.empty_pooled)):
                raise ValueError("pooled negative or empty embeddings without pooled_embeds")
            return
        pooled.append(self.empty_pooled)
        if [p is not None for p in pooled] != wanted:
            raise ValueError(
                "pooled_embeds needs negative_pooled, and empty_pooled exactly when "
                "empty_embeds is given"
            )
        pooled_shapes = {tuple(p.shape) for p in pooled if p is not None}
        if len(pooled_shapes) != 1 or next(iter(pooled_shapes))[0] != len(self.prompt_embeds):
            raise ValueError(
                f"pooled embeddings {sorted(pooled_shapes)} must all have the shape (B, P) with "
                f"B = {len(self.prompt_embeds)}"
            )

    @property
    def empty(self) -> Tensor:
        """The empty prompt's embeddings, (B, L, D)."""
        return self.negative_embeds if self.empty_embeds is None else self.empty_embeds

    @property
    def empty_pooled_or_negative(self) -> Tensor | None:
        """The empty prompt's pooled embeddings, (B, P) (None without pooled embeddings)."""
        return self.negative_pooled if self.empty_pooled is None else self.empty_pooled

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def __getitem__(self, index: slice | Tensor) -> TextCondition:
        prompts = None
        if self.prompts is not None:
            picked = range(len(self))[index] if isinstance(index, slice) else index.tolist()
            prompts = tuple(self.prompts[i] for i in picked)
        return TextCondition(
            self.prompt_embeds[index],
            self.negative_embeds[index],
            prompts,
            _rows(self.empty_embeds, index),
            _rows(self.pooled_embeds, index),
            _rows(self.negative_pooled, index),
            _rows(self.empty_pooled, index),
        )

    @staticmethod
    def cat(conditions: list[TextCondition]) -> TextCondition:
        """The rows of `conditions` one after the other, as one batch (a field missing from one
        of them is left out)."""
        parts = {}
        for field in fields(TextCondition):
            values = [getattr(c, field.name) for c in conditions]
            if any(v is None for v in values):
                parts[field.name] = None
            elif field.name == "prompts":
                parts[field.name] = sum(values, ())
            else:
                parts[field.name] = torch.cat(values)
        return TextCondition(**parts)

    def to(self, device: torch.device | str) -> TextCondition:
        """The same condition with its tensors on `device`."""
        return TextCondition(
            self.prompt_embeds.to(device),
            self.negative_embeds.to(device),
            self.prompts,
            _moved(self.empty_embeds, device),
            _moved(self.pooled_embeds, device),
            _moved(self.negative_pooled, device),
            _moved(self.empty_pooled, device),
        )

    def null(self) -> TextCondition:
        """The guidance null condition: the negative prompt in place of every prompt."""
        prompts = None if self.prompts is None else ("<negative>",) * len(self)
        return TextCondition(
            self.negative_embeds,
            self.negative_embeds,
            prompts,
            self.empty_embeds,
            self.negative_pooled,
            self.negative_pooled,
            self.empty_pooled,
        )

    def without_negative(self) -> TextCondition:
        """The same prompts with the empty prompt as guidance null."""
        return TextCondition(
            self.prompt_embeds,
            self.empty,
            self.prompts,
            self.empty_embeds,
            self.pooled_embeds,
            self.empty_pooled_or_negative,
            self.empty_pooled,
        )

    def dropped(self, drop: Tensor) -> TextCondition:
        """Condition dropout: rows where `drop` (B,) is True become the empty prompt entirely."""
        rows = drop.reshape(-1, 1, 1).to(self.prompt_embeds.device)
        prompts = None
        if self.prompts is not None:
            prompts = tuple(
                "" if d else p for p, d in zip(self.prompts, drop.tolist(), strict=True)
            )
        pooled = negative_pooled = None
        if self.pooled_embeds is not None:
            empty_pooled = self.empty_pooled_or_negative
            pooled = torch.where(rows[:, :, 0], empty_pooled, self.pooled_embeds)
            negative_pooled = torch.where(rows[:, :, 0], empty_pooled, self.negative_pooled)
        return TextCondition(
            torch.where(rows, self.empty, self.prompt_embeds),
            torch.where(rows, self.empty, self.negative_embeds),
            prompts,
            self.empty_embeds,
            pooled,
            negative_pooled,
            self.empty_pooled,
        )
