"""Data-free text conditions: remain, forget and override prompts (docs/method.md §3).

The override prompt is the forget prompt with its concept replaced, case-insensitively
("Brad Pitt holding a coffee cup" -> "a middle aged man holding a coffee cup"). The nudity recipe
combines subjects with NSFW keywords; the bare subject is the override and the keyword list the
negative prompt. Every fixed prompt set is encoded once by the teacher's text encoder (`bind`) and
the embeddings are cached on the sampler, one copy per device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sfd.core.conditions.base import ConditionBatch, ConditionPreview, ConditionSampler
from sfd.errors import SFDConfigError

DEFAULT_TEMPLATES = (
    "a photo of {concept}",
    "a portrait of {concept}",
    "a close-up photo of {concept} smiling",
    "{concept} holding a coffee cup",
    "{concept} walking down the street",
    "a painting of {concept}",
    "{concept} at a press conference",
    "{concept} sitting on a chair",
)
NUDITY_TEMPLATE = "{subject}, {keyword}"
PROMPT_LISTS = "prompt_lists"  # shipped beside this module


def default_data_file(name: str) -> str:
    """Path of a prompt list shipped in `sfd/core/conditions/prompt_lists/`."""
    return str(resources.files("sfd.core.conditions") / PROMPT_LISTS / name)


@dataclass(eq=False)  # tensors have no single truth value
class TextCondition:
    """A batch of text conditions: prompt embeddings plus the negative-prompt embeddings for CFG.

    Attributes:
        prompt_embeds: text-encoder hidden states of the prompts, (B, L, D).
        negative_embeds: those of the negative prompt (the empty prompt if none), (B, L, D).
        prompts: the prompt strings, for logging (optional), length B.
    """

    prompt_embeds: Tensor
    negative_embeds: Tensor
    prompts: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.prompt_embeds.shape != self.negative_embeds.shape:
            raise ValueError(
                f"prompt_embeds {tuple(self.prompt_embeds.shape)} and negative_embeds "
                f"{tuple(self.negative_embeds.shape)} must have the same shape (B, L, D)"
            )
        if self.prompts is not None and len(self.prompts) != len(self.prompt_embeds):
            raise ValueError(
                f"{len(self.prompts)} prompts for {len(self.prompt_embeds)} embeddings"
            )

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]

    def __getitem__(self, index: slice | Tensor) -> TextCondition:
        prompts = None
        if self.prompts is not None:
            picked = range(len(self))[index] if isinstance(index, slice) else index.tolist()
            prompts = tuple(self.prompts[i] for i in picked)
        return TextCondition(self.prompt_embeds[index], self.negative_embeds[index], prompts)

    def to(self, device: torch.device | str) -> TextCondition:
        """The same condition with its tensors on `device`."""
        return TextCondition(
            self.prompt_embeds.to(device), self.negative_embeds.to(device), self.prompts
        )

    def null(self) -> TextCondition:
        """The guidance null condition: the negative prompt in place of every prompt."""
        prompts = None if self.prompts is None else ("<negative>",) * len(self)
        return TextCondition(self.negative_embeds, self.negative_embeds, prompts)

    def where(self, drop: Tensor, null: TextCondition) -> TextCondition:
        """Take `null`'s prompt where `drop` (B,) is True (condition dropout)."""
        embeds = torch.where(drop.reshape(-1, 1, 1), null.prompt_embeds, self.prompt_embeds)
        prompts = None
        if self.prompts is not None and null.prompts is not None:
            prompts = tuple(
                n if d else p
                for p, n, d in zip(self.prompts, null.prompts, drop.tolist(), strict=True)
            )
        return TextCondition(embeds, self.negative_embeds, prompts)


def read_prompt_file(path: str) -> list[str]:
    """Non-empty, stripped lines of a UTF-8 text file, one prompt per line."""
    file = Path(path)
    if not file.is_file():
        raise SFDConfigError(f"prompt file {path!r} does not exist")
    raw = file.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise SFDConfigError(
            f"prompt file {path!r} is not UTF-8 text: line {line} holds the byte "
            f"{raw[error.start : error.start + 1]!r}; save the file as UTF-8"
        ) from error
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [p for p in prompts if p]
    if not prompts:
        raise SFDConfigError(f"prompt file {path!r} holds no prompt (one per line expected)")
    return prompts


def replace_concept(prompt: str, concept: str, override: str) -> str:
    """Replace every case-insensitive occurrence of `concept` in `prompt` by `override`."""
    pattern = re.compile(re.escape(concept), re.IGNORECASE)
    if not pattern.search(prompt):
        raise SFDConfigError(f"concept {concept!r} does not occur in the forget prompt {prompt!r}")
    return pattern.sub(lambda _: override, prompt)


class PromptConditions(ConditionSampler):
    """Remain prompts plus forget -> override prompt pairs for text-to-image teachers.

    Args:
        concepts: forget concept -> override text, e.g. {"brad pitt": "a middle aged man"};
            several pairs may be given.
        forget_prompts: text file of forget prompts, each containing one of the concepts
            (default: `templates` x concepts).
        templates: forget-prompt templates with a "{concept}" slot (default: a few generic ones).
        remain_prompts: text file of prompts to keep (default: ~50 generic captions shipped in
            sfd/core/conditions/prompt_lists/remain_prompts.txt).
        negative_prompt: replaces the empty prompt as the guidance null condition.
        encode_batch_size: prompts per text-encoder call when encoding the prompt sets.
    """

    def __init__(
        self,
        concepts: dict[str, str],
        forget_prompts: str | None = None,
        templates: list[str] | None = None,
        remain_prompts: str | None = None,
        negative_prompt: str | None = None,
        encode_batch_size: int = 32,
    ) -> None:
        if not concepts:
            raise SFDConfigError("concepts is empty; give at least one 'forget: override' pair")
        for concept, override in concepts.items():
            if not concept.strip() or not override.strip():
                raise SFDConfigError(f"concept pair {concept!r} -> {override!r} has an empty side")
            if concept.strip().lower() == override.strip().lower():
                raise SFDConfigError(f"override {override!r} equals its forget concept {concept!r}")
        if forget_prompts is not None and templates is not None:
            raise SFDConfigError("give forget_prompts (a file) or templates, not both")
        if forget_prompts is not None:
            forget = read_prompt_file(forget_prompts)
            override = [_override_of(prompt, concepts, forget_prompts) for prompt in forget]
            for concept in concepts:
                if not any(concept.lower() in prompt.lower() for prompt in forget):
                    raise SFDConfigError(
                        f"concept {concept!r} does not occur in any prompt of {forget_prompts!r}"
                    )
        else:
            templates = list(DEFAULT_TEMPLATES if templates is None else templates)
            if not templates:
                raise SFDConfigError("templates is empty; give at least one '{concept}' template")
            bad = [t for t in templates if "{concept}" not in t]
            if bad:
                raise SFDConfigError(f"template {bad[0]!r} has no '{{concept}}' slot")
            forget, override = [], []
            for concept, target in concepts.items():
                for template in templates:
                    forget.append(template.replace("{concept}", concept))
                    override.append(template.replace("{concept}", target))
        self.concepts = dict(concepts)
        self._set_prompts(
            read_prompt_file(remain_prompts or default_data_file("remain_prompts.txt")),
            forget,
            override,
            negative_prompt,
            encode_batch_size,
        )

    def _set_prompts(
        self,
        remain: list[str],
        forget: list[str],
        override: list[str],
        negative_prompt: str | None,
        encode_batch_size: int,
    ) -> None:
        for f, o in zip(forget, override, strict=True):
            if f.strip().lower() == o.strip().lower():
                raise SFDConfigError(f"override prompt {o!r} equals its forget prompt {f!r}")
        if encode_batch_size < 1:
            raise SFDConfigError(f"encode_batch_size={encode_batch_size} must be at least 1")
        self.remain_prompts = remain
        self.forget_prompts = forget
        self.override_prompts = override
        self.negative_prompt = negative_prompt or ""
        self.encode_batch_size = encode_batch_size
        self._embeds: dict[str, Tensor] | None = None  # on the CPU, set by `bind`
        self._embeds_by_device: dict[torch.device, dict[str, Tensor]] = {}

    # --- the ConditionSampler interface ---------------------------------------------------------

    def check(self, num_classes: int | None) -> None:
        if num_classes is not None:
            raise SFDConfigError(
                f"PromptConditions needs a text-conditioned teacher, not a {num_classes}-class one"
            )

    def bind(self, teacher: Any) -> None:
        """Encode every fixed prompt set once with `teacher.encode_prompts` and cache it."""
        encode = getattr(teacher, "encode_prompts", None)
        if encode is None:
            raise SFDConfigError(
                f"PromptConditions needs a teacher that encodes prompts; "
                f"{type(teacher).__name__} does not"
            )
        unique = list(
            dict.fromkeys(
                [
                    *self.remain_prompts,
                    *self.forget_prompts,
                    *self.override_prompts,
                    self.negative_prompt,
                ]
            )
        )
        table = encode(unique, self.encode_batch_size)  # (U, L, D)
        row = {prompt: i for i, prompt in enumerate(unique)}

        def rows(prompts: list[str]) -> Tensor:
            return table[torch.tensor([row[p] for p in prompts])]

        self._embeds = {
            "remain": rows(self.remain_prompts),  # (R, L, D)
            "forget": rows(self.forget_prompts),  # (F, L, D)
            "override": rows(self.override_prompts),  # (F, L, D)
            "negative": table[row[self.negative_prompt]],  # (L, D)
        }
        self._embeds_by_device = {}

    def embeddings(self, device: torch.device | str) -> dict[str, Tensor]:
        """The cached prompt embeddings on `device` (moved once per device)."""
        if self._embeds is None:
            raise RuntimeError("call bind(teacher) before sampling text conditions")
        device = torch.device(device)
        if device not in self._embeds_by_device:
            self._embeds_by_device[device] = {k: v.to(device) for k, v in self._embeds.items()}
        return self._embeds_by_device[device]

    def sample(
        self, batch_size: int, generator: torch.Generator, world_size: int = 1, rank: int = 0
    ) -> ConditionBatch:
        device = generator.device
        embeds = self.embeddings(device)
        n = batch_size * world_size
        remain = torch.randint(len(self.remain_prompts), (n,), generator=generator, device=device)
        forget = torch.randint(len(self.forget_prompts), (n,), generator=generator, device=device)
        part = slice(rank * batch_size, (rank + 1) * batch_size)
        remain, forget = remain[part], forget[part]
        negative = embeds["negative"].expand(batch_size, *embeds["negative"].shape)  # (B, L, D)
        remain_ids, forget_ids = remain.tolist(), forget.tolist()
        return ConditionBatch(
            remain=TextCondition(
                embeds["remain"][remain],
                negative,
                tuple(self.remain_prompts[i] for i in remain_ids),
            ),
            forget=TextCondition(
                embeds["forget"][forget],
                negative,
                tuple(self.forget_prompts[i] for i in forget_ids),
            ),
            override=TextCondition(
                embeds["override"][forget],
                negative,
                tuple(self.override_prompts[i] for i in forget_ids),
            ),
        )

    def preview(self, per_row: int, rows: int, generator: torch.Generator) -> ConditionPreview:
        """`rows` distinct remain and forget prompts (drawn at `generator`), one per row.

        Args:
            per_row: images per row.
            rows: rows per grid (at most the number of distinct prompts).
            generator: the grid's seeded random stream.

        Returns:
            the conditions, row-major, captioned with their prompts (forget rows also name
            their override).
        """
        device = generator.device
        embeds = self.embeddings(device)
        chosen = {}
        for kind, prompts in (("remain", self.remain_prompts), ("forget", self.forget_prompts)):
            order = torch.randperm(len(prompts), generator=generator, device=device)
            chosen[kind] = order[: min(rows, len(prompts))].sort().values  # (rows,)

        def condition(kind: str, prompts: list[str]) -> TextCondition:
            index = chosen[kind].repeat_interleave(per_row)  # (rows·per_row,)
            negative = embeds["negative"].expand(len(index), *embeds["negative"].shape)
            return TextCondition(
                embeds[kind][index], negative, tuple(prompts[i] for i in index.tolist())
            )

        forget_ids = chosen["forget"].tolist()
        return ConditionPreview(
            condition("remain", self.remain_prompts),
            condition("forget", self.forget_prompts),
            [self.remain_prompts[i] for i in chosen["remain"].tolist()],
            [f"{self.forget_prompts[i]} (forget → {self.override_prompts[i]})" for i in forget_ids],
        )


def _override_of(prompt: str, concepts: dict[str, str], source: str) -> str:
    """The override prompt of a forget prompt: its (longest matching) concept replaced."""
    found = [c for c in concepts if c.lower() in prompt.lower()]
    if not found:
        raise SFDConfigError(
            f"forget prompt {prompt!r} in {source!r} contains none of the concepts {sorted(concepts)}"
        )
    concept = max(found, key=len)
    return replace_concept(prompt, concept, concepts[concept])


class NudityConditions(PromptConditions):
    """The nudity recipe: forget "subject, keyword" for subjects x NSFW keywords; override the subject.

    Args:
        subjects: text file of subjects, e.g. "a woman" (default: the shipped
            prompt_lists/nudity_subjects.txt).
        keywords: text file of NSFW keywords (default: the shipped
            prompt_lists/nudity_keywords.txt).
        remain_prompts: text file of prompts to keep (default: the shipped generic captions).
        template: how a forget prompt combines "{subject}" and "{keyword}".
        keywords_as_negative: use the comma-joined keyword list as the negative prompt.
        encode_batch_size: prompts per text-encoder call when encoding the prompt sets.
    """

    def __init__(
        self,
        subjects: str | None = None,
        keywords: str | None = None,
        remain_prompts: str | None = None,
        template: str = NUDITY_TEMPLATE,
        keywords_as_negative: bool = True,
        encode_batch_size: int = 32,
    ) -> None:
        if "{subject}" not in template or "{keyword}" not in template:
            raise SFDConfigError(
                f"template {template!r} needs both a '{{subject}}' and a '{{keyword}}' slot"
            )
        subject_list = read_prompt_file(subjects or default_data_file("nudity_subjects.txt"))
        keyword_list = read_prompt_file(keywords or default_data_file("nudity_keywords.txt"))
        forget, override = [], []
        for subject in subject_list:
            for keyword in keyword_list:
                forget.append(template.replace("{subject}", subject).replace("{keyword}", keyword))
                override.append(subject)
        self.concepts = {}
        self.keywords = keyword_list
        self._set_prompts(
            read_prompt_file(remain_prompts or default_data_file("remain_prompts.txt")),
            forget,
            override,
            ", ".join(keyword_list) if keywords_as_negative else None,
            encode_batch_size,
        )
