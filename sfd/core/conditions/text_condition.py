"""`TextCondition`: the condition batch of text-conditioned denoisers (docs/method.md §3, §4)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(eq=False)  # tensors have no single truth value
class TextCondition:
    """A batch of prompt embeddings with what classifier-free guidance and dropout replace them by.

    Guidance evaluates the prompt against `negative_embeds`; condition dropout replaces a whole
    row by the empty prompt (prompt and negative alike). On remain batches the negative *is* the
    empty prompt; forget batches may carry a negative prompt (the nudity keyword list), which
    each network sees or not (`PromptConditions.negative_for`).

    Attributes:
        prompt_embeds: text-encoder hidden states of the prompts, (B, L, D).
        negative_embeds: the guidance null of each row: the negative prompt, or the empty
            prompt, (B, L, D).
        prompts: the prompt strings, for logging (optional), length B.
        empty_embeds: the empty prompt's hidden states, (B, L, D); None means the negative is
            the empty prompt.
    """

    prompt_embeds: Tensor
    negative_embeds: Tensor
    prompts: tuple[str, ...] | None = None
    empty_embeds: Tensor | None = None

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

    @property
    def empty(self) -> Tensor:
        """The empty prompt's embeddings, (B, L, D)."""
        return self.negative_embeds if self.empty_embeds is None else self.empty_embeds

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def __getitem__(self, index: slice | Tensor) -> TextCondition:
        prompts = None
        if self.prompts is not None:
            picked = range(len(self))[index] if isinstance(index, slice) else index.tolist()
            prompts = tuple(self.prompts[i] for i in picked)
        empty = None if self.empty_embeds is None else self.empty_embeds[index]
        return TextCondition(self.prompt_embeds[index], self.negative_embeds[index], prompts, empty)

    @staticmethod
    def cat(conditions: list[TextCondition]) -> TextCondition:
        """The rows of `conditions` one after the other, as one batch."""
        prompts = [c.prompts for c in conditions]
        empties = [c.empty_embeds for c in conditions]
        return TextCondition(
            torch.cat([c.prompt_embeds for c in conditions]),
            torch.cat([c.negative_embeds for c in conditions]),
            None if any(p is None for p in prompts) else sum(prompts, ()),
            None if any(e is None for e in empties) else torch.cat(empties),
        )

    def to(self, device: torch.device | str) -> TextCondition:
        """The same condition with its tensors on `device`."""
        empty = None if self.empty_embeds is None else self.empty_embeds.to(device)
        return TextCondition(
            self.prompt_embeds.to(device), self.negative_embeds.to(device), self.prompts, empty
        )

    def null(self) -> TextCondition:
        """The guidance null condition: the negative prompt in place of every prompt."""
        prompts = None if self.prompts is None else ("<negative>",) * len(self)
        return TextCondition(self.negative_embeds, self.negative_embeds, prompts, self.empty_embeds)

    def without_negative(self) -> TextCondition:
        """The same prompts with the empty prompt as guidance null."""
        return TextCondition(self.prompt_embeds, self.empty, self.prompts, self.empty_embeds)

    def dropped(self, drop: Tensor) -> TextCondition:
        """Condition dropout: rows where `drop` (B,) is True become the empty prompt entirely."""
        rows = drop.reshape(-1, 1, 1).to(self.prompt_embeds.device)
        prompts = None
        if self.prompts is not None:
            prompts = tuple(
                "" if d else p for p, d in zip(self.prompts, drop.tolist(), strict=True)
            )
        return TextCondition(
            torch.where(rows, self.empty, self.prompt_embeds),
            torch.where(rows, self.empty, self.negative_embeds),
            prompts,
            self.empty_embeds,
        )
