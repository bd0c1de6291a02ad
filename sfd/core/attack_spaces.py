"""The attack spaces of adversarial SFD (docs/method.md §9): what an attacker may change, per condition type.

A space draws the attacked rows (`draw`), builds the attacked, plain forget and override conditions of
each row from its learned vectors (`conditions`), and names the concepts the forget concept competes
with (`rivals`, `remain_conditions`): learned soft-prompt tokens inserted into forget (or, with
`remain_starts`, remain) prompts for text teachers, the flow families' sequence encoders included
(`SoftPromptSpace`, `FlowSoftPromptSpace`), and a learned vector in place of the forget label's class
embedding for class teachers (`ClassEmbeddingSpace`). `sfd.core.adversarial` runs the inner attack
and the two SFD steps on them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sfd.core.conditions import (
    ClassConditions,
    ClassEmbeddingCondition,
    ConditionSampler,
    PromptConditions,
    TextCondition,
)
from sfd.errors import SFDConfigError
from sfd.teachers.base import Denoiser
from sfd.teachers.flow import FlowTransformerDenoiser
from sfd.teachers.text_encoder import (
    check_token_embeddings,
    check_token_room,
    hidden_states,
    insert_soft_tokens,
    load_text_encoder,
    tokenize,
)

if TYPE_CHECKING:
    from sfd.core.adversarial_settings import AdversarialSettings
    from sfd.core.generator import OneStepGenerator

ROOM_KEY = "model.adversarial.tokens"  # the setting whose tokens must fit after a forget prompt

START_KEY = "remain_start"  # pool entry (`remain_starts` > 0): the rows that start from remain


def check_class_attack(remain_starts: float) -> None:
    """Refuse (one line) settings a class-embedding attack cannot run: `remain_starts` > 0."""
    if remain_starts > 0:
        raise SFDConfigError(
            f"model.adversarial.remain_starts={remain_starts!r} needs prompt "
            "conditions (soft prompts); the class attack replaces the forget label's own "
            "embedding, which no remain class has (use 0)"
        )


def spread(count: int, picks: int, n: int, rng: torch.Generator | None, device) -> list[Tensor]:
    """Indices into `count` items for `n` rows: one index tensor (n,) from each of `picks` equal
    slices of them — a random item of its slice per row (`rng`), or the slice's middle (None) —
    or every item when `count` ≤ `picks`. Lists grouped by concept (the demos' remain prompts,
    class by class) then give every concept a rival whenever `picks` covers their number."""
    if count <= picks:
        return [torch.full((n,), i, device=device) for i in range(count)]
    indices = []
    for j in range(picks):
        low, high = j * count // picks, (j + 1) * count // picks
        if rng is None:
            indices.append(torch.full((n,), (low + high - 1) // 2, device=device))
        else:
            offset = torch.randint(high - low, (n,), generator=rng, device=rng.device)
            indices.append(low + offset.to(device))
    return indices


@dataclass
class Attacked:
    """This rank's attacked rows of one iteration (no gradient to the learned vectors).

    Attributes:
        condition: what the generator and the fake score see (forget condition ⊕ attack), (K,).
        override: what the teacher sees for them, (K,).
        rows: K, the adversarial samples per device.
        remain: the remain anchor's conditions (remain prompt ⊕ the same attack), (K,), or None.
        remain_plain: what the teacher sees for them (the remain prompts), (K,), or None.
        weights: each row's weight in the generator's unlearning term (`posterior_weight`:
            p(forget | x) at its last inner step, detached), (K,), or None (every row 1).
    """

    condition: Any
    override: Any
    rows: int
    remain: Any = None
    remain_plain: Any = None
    weights: Tensor | None = None


class AttackSpace:
    """Where the attacker searches: draws rows and turns learned vectors into conditions."""

    learned = "learned"  # the state entry the attack optimises

    def draw(self, n: int, rng: torch.Generator, generator: OneStepGenerator) -> dict[str, Tensor]:
        """Fresh rows: which forget condition each attacks, and its starting vectors."""
        raise NotImplementedError

    def conditions(self, state: Mapping[str, Tensor], learned: Tensor) -> tuple[Any, Any, Any]:
        """(attacked condition, plain forget condition, override condition) of the rows."""
        raise NotImplementedError

    def remain_conditions(
        self, state: Mapping[str, Tensor], learned: Tensor
    ) -> tuple[Any, Any] | None:
        """(remain prompt ⊕ the rows' attack, remain prompt) of the rows, or None where the
        attack has no remain counterpart (the default)."""
        return None

    def rivals(
        self, state: Mapping[str, Tensor], picks: int, rng: torch.Generator | None
    ) -> list[Any]:
        """The concepts each row's forget condition competes with, K rows each: its override
        first, then `picks` remain conditions (`spread`; `rng` None: fixed ones)."""
        raise NotImplementedError


class SoftPromptSpace(AttackSpace):
    """`tokens` learned vectors in the text encoder's input space, inserted into forget prompts.

    The same insertion as the evaluation's soft-prompt attack (`sfd.eval.soft_prompt`): after
    the prompt's last word, before its end token; the vectors start at random vocabulary tokens.
    Like that attack, it takes only forget prompts with room for `tokens` more tokens.
    The frozen text encoder is loaded from the teacher's pipeline and kept outside the module's
    weights (never optimised or checkpointed).
    """

    learned = "tokens"
    length_name = "tokenizer's model_max_length"  # what bounds the tokens per prompt

    def __init__(self, teacher: Denoiser, conditions: PromptConditions, tokens: int) -> None:
        if getattr(teacher, "pipeline", None) is None:
            raise SFDConfigError(
                f"the soft-prompt attack of model.adversarial needs the teacher's text encoder; "
                f"{type(teacher).__name__} names no pipeline folder to load it from"
            )
        self.teacher = teacher
        tokenizer, self.text_encoder = self._load_encoder()
        encoded = self._tokenize(tokenizer, conditions.forget_prompts)
        self.input_ids = encoded.input_ids  # (F, L)
        self.used = encoded.attention_mask.sum(1)  # (F,)
        remain = self._tokenize(tokenizer, conditions.remain_prompts)
        self.remain_ids, self.remain_used = remain.input_ids, remain.attention_mask.sum(1)
        check_same_embeddings(self, encoded, conditions, type(teacher).__name__)
        check_token_embeddings(self.text_encoder, "the soft-prompt attack of model.adversarial")
        length = self.input_ids.shape[1]
        check_token_room(
            tokenizer, conditions.forget_prompts, tokens, self._room(), ROOM_KEY, shortest=True
        )
        # Only prompts that leave room for the tokens are attacked, as in the evaluation attack.
        self.attackable = (self.used + tokens <= length).nonzero().flatten()  # (F',)
        # The remain anchor takes the remain prompts with room for the tokens (none: no anchor).
        self.remain_attackable = (self.remain_used + tokens <= length).nonzero().flatten()  # (R',)
        self.sampler = conditions
        self.tokens = tokens

    def _on(self, device: torch.device) -> None:
        if self.input_ids.device != device:
            self.text_encoder.to(device)
            self.input_ids, self.used = self.input_ids.to(device), self.used.to(device)
            self.attackable = self.attackable.to(device)
            self.remain_ids = self.remain_ids.to(device)
            self.remain_used = self.remain_used.to(device)
            self.remain_attackable = self.remain_attackable.to(device)

    def draw(self, n: int, rng: torch.Generator, generator: OneStepGenerator) -> dict[str, Tensor]:
        self._on(rng.device)
        vocabulary = self.text_encoder.get_input_embeddings().weight.detach()  # (V, D_in)
        pick = torch.randint(len(self.attackable), (n,), generator=rng, device=rng.device)
        prompt = self.attackable[pick]
        picks = torch.randint(len(vocabulary), (n, self.tokens), generator=rng, device=rng.device)
        state = {"prompt": prompt, "tokens": vocabulary[picks].float()}  # (n,), (n, tokens, D_in)
        if len(self.remain_attackable) > 0:  # drawn last: the draws above do not depend on it
            pick = torch.randint(
                len(self.remain_attackable), (n,), generator=rng, device=rng.device
            )
            state["remain"] = self.remain_attackable[pick]  # (n,)
        return state

    def conditions(self, state: Mapping[str, Tensor], learned: Tensor) -> tuple[Any, Any, Any]:
        self._on(learned.device)
        prompt = state["prompt"]
        forget, override = self.sampler.forget_pairs(prompt)
        start = state.get(START_KEY)
        if start is None or not bool(start.any()):
            attacked = self._with_tokens(forget, self.input_ids[prompt], self.used[prompt], learned)
            return attacked, forget, override
        # Rows that start from a remain prompt (`remain_starts`): the tokens go into it.
        rows, remain = (~start).nonzero().flatten(), start.nonzero().flatten()
        index = state["remain"][remain]
        parts = [
            self._with_tokens(
                self.sampler.remain_conditions(index),
                self.remain_ids[index],
                self.remain_used[index],
                learned[remain],
            )
        ]
        if len(rows) > 0:  # every row starts from a remain prompt when ⌈remain_starts·K⌉ = K
            on_forget = self._with_tokens(
                forget[rows], self.input_ids[prompt[rows]], self.used[prompt[rows]], learned[rows]
            )
            parts.insert(0, on_forget)
        order = torch.argsort(torch.cat([rows, remain]))  # back to the rows' order
        return type(forget).cat(parts)[order], forget, override

    def _with_tokens(
        self, plain: TextCondition, input_ids: Tensor, used: Tensor, learned: Tensor
    ) -> TextCondition:
        """`plain` (K rows) with the learned tokens inserted into its prompts' ids (K, L)."""
        hidden = self._soft_states(input_ids, used, learned)
        captions = tuple(f"{p} <{self.tokens} learned tokens>" for p in plain.prompts or ())
        return replace(
            plain,
            prompt_embeds=self._with_states(plain.prompt_embeds, hidden),
            prompts=captions or None,
        )  # the negative, empty and any pooled embeddings: the plain prompt's

    def remain_conditions(
        self, state: Mapping[str, Tensor], learned: Tensor
    ) -> tuple[Any, Any] | None:
        if "remain" not in state:  # no remain prompt has room for the tokens
            return None
        self._on(learned.device)
        prompt = state["remain"]
        remain = self.sampler.remain_conditions(prompt)
        ids, used = self.remain_ids[prompt], self.remain_used[prompt]
        return self._with_tokens(remain, ids, used, learned), remain

    def rivals(
        self, state: Mapping[str, Tensor], picks: int, rng: torch.Generator | None
    ) -> list[Any]:
        prompt = state["prompt"]
        _, override = self.sampler.forget_pairs(prompt)
        count = len(self.sampler.remain_prompts)
        picked = spread(count, picks, len(prompt), rng, prompt.device) if picks > 0 else []
        return [override, *(self.sampler.remain_conditions(index) for index in picked)]

    # --- the family's encoding path (Stable Diffusion 1.x / 2.x: one encoder, all rows) ---------

    def _load_encoder(self) -> tuple[Any, torch.nn.Module]:
        return load_text_encoder(self.teacher.pipeline, getattr(self.teacher, "revision", None))

    def _tokenize(self, tokenizer: Any, prompts: list[str]) -> Any:
        return tokenize(tokenizer, prompts)

    def _room(self) -> int | None:
        """The padded length the tokens must fit in (None: the tokenizer's model_max_length)."""
        return None

    def _plain_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """The encoder's hidden states of tokenised prompts, as the teacher was bound with."""
        return hidden_states(self.text_encoder, input_ids, attention_mask)

    def _soft_states(self, input_ids: Tensor, used: Tensor, learned: Tensor) -> Tensor:
        """Hidden states with the learned tokens inserted, (K, L, D), differentiable."""
        return insert_soft_tokens(self.text_encoder, input_ids, used, learned)

    def _bound_rows(self, prompt_embeds: Tensor) -> Tensor:
        """The rows of the teacher's prompt embeddings that this encoder gives."""
        return prompt_embeds

    def _with_states(self, prompt_embeds: Tensor, states: Tensor) -> Tensor:
        """Prompt embeddings with this encoder's rows replaced by `states`."""
        return states


class FlowSoftPromptSpace(SoftPromptSpace):
    """The soft-prompt attack of a flow teacher (SD3, Flux): the learned tokens enter the family's
    sequence encoder (SD3's T5 slot, Flux's T5), called as the stock pipeline calls it (no
    attention mask, padded to `max_sequence_length`), as the evaluation's `FlowSoftPrompt`; its
    rows replace the forget prompt's sequence rows, and every other part of the condition (CLIP
    rows, pooled embeddings) stays the plain forget prompt's (`FlowTransformerDenoiser`'s
    `with_sequence_states`)."""

    teacher: FlowTransformerDenoiser
    length_name = "teacher's max_sequence_length"

    def _load_encoder(self) -> tuple[Any, torch.nn.Module]:
        return self.teacher.load_sequence_encoder()

    def _tokenize(self, tokenizer: Any, prompts: list[str]) -> Any:
        return self.teacher.tokenize_sequence(tokenizer, prompts)

    def _room(self) -> int | None:
        return self.teacher.max_sequence_length

    def _plain_states(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return self.teacher.sequence_states(self.text_encoder, input_ids=input_ids)

    def _soft_states(self, input_ids: Tensor, used: Tensor, learned: Tensor) -> Tensor:
        return self.teacher.soft_sequence_states(self.text_encoder, input_ids, used, learned)

    def _bound_rows(self, prompt_embeds: Tensor) -> Tensor:
        return self.teacher.sequence_rows(prompt_embeds)

    def _with_states(self, prompt_embeds: Tensor, states: Tensor) -> Tensor:
        return self.teacher.with_sequence_states(prompt_embeds, states)


def check_same_embeddings(
    space: SoftPromptSpace, encoded: Any, conditions: PromptConditions, teacher: str
) -> None:
    """Refuse teachers whose prompt embeddings are not what the attack's encoder gives.

    The soft-prompt attack re-encodes forget prompts with one text encoder of the pipeline (a
    flow family's sequence encoder); that must give the embeddings (their sequence rows) the
    teacher was bound with.
    """
    bound = space._bound_rows(conditions.embeddings("cpu")["forget"][:2])  # (2, L, D)
    with torch.no_grad():
        again = space._plain_states(encoded.input_ids[:2], encoded.attention_mask[:2])
    if again.shape != bound.shape or not torch.allclose(again, bound, atol=1e-4, rtol=1e-4):
        raise SFDConfigError(
            f"the soft-prompt attack of model.adversarial re-encodes forget prompts with the "
            f"pipeline's text encoder, which does not give {teacher}'s prompt embeddings "
            f"({tuple(again.shape[1:])} vs {tuple(bound.shape[1:])}); it supports teachers "
            "conditioned on one text encoder's hidden states (Stable Diffusion 1.x / 2.x style) "
            "and flow teachers' sequence encoder (SD3, Flux)"
        )


class ClassEmbeddingSpace(AttackSpace):
    """A learned vector in place of the forget label's class embedding, starting at it."""

    learned = "embedding"

    def __init__(self, generator: OneStepGenerator, conditions: ClassConditions) -> None:
        if generator.denoiser.class_embedding_table() is None:
            raise SFDConfigError(
                f"the class-embedding attack of model.adversarial needs a generator whose labels "
                f"pass through a class-embedding table; {type(generator.denoiser).__name__} has none"
            )
        self.sampler = conditions

    def draw(self, n: int, rng: torch.Generator, generator: OneStepGenerator) -> dict[str, Tensor]:
        batch = self.sampler.sample(n, rng)  # the global rows
        table = generator.denoiser.class_embedding_table().detach()  # (num_embeds, E)
        return {
            "forget": batch.forget,
            "override": batch.override,
            "embedding": table[batch.forget].float().clone(),
        }

    def conditions(self, state: Mapping[str, Tensor], learned: Tensor) -> tuple[Any, Any, Any]:
        forget = state["forget"]
        active = torch.ones_like(forget, dtype=torch.bool)
        return ClassEmbeddingCondition(forget, learned, active), forget, state["override"]

    def rivals(
        self, state: Mapping[str, Tensor], picks: int, rng: torch.Generator | None
    ) -> list[Any]:
        override = state["override"]
        remain = torch.tensor(self.sampler.remain, device=override.device)
        if picks == 0:
            return [override]
        picked = [remain[i] for i in spread(len(remain), picks, len(override), rng, remain.device)]
        # Every remain class holds the override (a remain class): it is not counted twice.
        return picked if len(remain) <= picks else [override, *picked]


def attack_space(
    settings: AdversarialSettings,
    teacher: Denoiser,
    generator: OneStepGenerator,
    conditions: ConditionSampler,
) -> AttackSpace:
    """The attack that fits the conditions: soft prompts for prompts, embeddings for classes."""
    if isinstance(conditions, PromptConditions):
        space = (
            FlowSoftPromptSpace if isinstance(teacher, FlowTransformerDenoiser) else SoftPromptSpace
        )
        return space(teacher, conditions, settings.tokens)
    if isinstance(conditions, ClassConditions):
        check_class_attack(settings.remain_starts)
        return ClassEmbeddingSpace(generator, conditions)
    raise SFDConfigError(
        f"model.adversarial supports PromptConditions and ClassConditions, not "
        f"{type(conditions).__name__}"
    )
