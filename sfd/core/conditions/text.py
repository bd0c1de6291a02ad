"""Data-free text conditions: remain, forget and override prompts (docs/method.md §3).

The override prompt is the forget prompt with its concept replaced, case-insensitively
("Brad Pitt holding a coffee cup" -> "a middle aged man holding a coffee cup"). The nudity recipe
puts an NSFW keyword before or after a subject; the bare subject is the override and the keyword
list the negative prompt. A negative prompt belongs to forget batches only (remain batches always
use the empty prompt), and each guided network sees it or not (`negative_for`). Every fixed prompt
set is encoded once by the teacher's text encoder (`bind`) and the embeddings are cached on the
sampler, one copy per device. A teacher whose `encode_prompts` returns (embeddings, pooled
embeddings), such as SDXL's, gets its pooled vectors cached and carried in every condition beside
the prompts they belong to (`TextCondition.pooled_embeds`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sfd.core.conditions.base import (
    GUIDED_ROLES,
    ConditionBatch,
    ConditionPreview,
    ConditionSampler,
)
from sfd.core.conditions.text_condition import TextCondition
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
NUDITY_TEMPLATES = ("{keyword} {subject}", "{subject}, {keyword}")  # prepended or appended
PROMPT_LISTS = "prompt_lists"  # shipped beside this module
POOLED = "_pooled"  # cached pooled embeddings: "<set>_pooled" beside "<set>"


def default_data_file(name: str) -> str:
    """Path of a prompt list shipped in `sfd/core/conditions/prompt_lists/`."""
    return str(resources.files("sfd.core.conditions") / PROMPT_LISTS / name)


def negative_roles(settings: Mapping[str, Any]) -> tuple[str, ...]:
    """The guided networks that see the negative prompt under these init_args (`negative_for`;
    default the teacher only)."""
    roles = settings.get("negative_for")
    return ("teacher",) if roles is None else tuple(roles)


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
            (default: a shipped prompt list for each concept that has one, such as the 50
            prompts of brad_pitt_prompts.txt, else `templates` x the concept).
        templates: forget-prompt templates with a "{concept}" slot, used for every concept
            (default: only for concepts without a shipped list, a few generic templates).
        remain_prompts: text file of prompts to keep (default: ~50 generic captions shipped in
            sfd/core/conditions/prompt_lists/remain_prompts.txt).
        negative_prompt: replaces the empty prompt as the guidance null of forget batches.
        negative_for: the guided networks that see the negative prompt: "fake_train" (the fake
            score in its own loss), "fake_eval" (the fake score in the generator loss),
            "teacher" (default: the teacher only, as the reference).
        encode_batch_size: prompts per text-encoder call when encoding the prompt sets.
    """

    def __init__(
        self,
        concepts: dict[str, str],
        forget_prompts: str | None = None,
        templates: list[str] | None = None,
        remain_prompts: str | None = None,
        negative_prompt: str | None = None,
        negative_for: list[str] | None = None,
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
            forget, override = [], []
            for concept, target in concepts.items():
                shipped = shipped_prompt_file(concept) if templates is None else None
                if shipped is not None:
                    prompts = read_prompt_file(shipped)
                    forget += prompts
                    override += [replace_concept(p, concept, target) for p in prompts]
                    continue
                for template in _checked_templates(templates):
                    forget.append(template.replace("{concept}", concept))
                    override.append(template.replace("{concept}", target))
        self.concepts = dict(concepts)
        self._set_prompts(
            read_prompt_file(remain_prompts or default_data_file("remain_prompts.txt")),
            forget,
            override,
            negative_prompt,
            negative_for,
            encode_batch_size,
        )

    def _set_prompts(
        self,
        remain: list[str],
        forget: list[str],
        override: list[str],
        negative_prompt: str | None,
        negative_for: list[str] | None,
        encode_batch_size: int,
    ) -> None:
        roles = list(negative_roles({"negative_for": negative_for}))
        unknown = [role for role in roles if role not in GUIDED_ROLES]
        if unknown:
            raise SFDConfigError(
                f"negative_for={roles} names {unknown[0]!r}; allowed: {list(GUIDED_ROLES)}"
            )
        for f, o in zip(forget, override, strict=True):
            if f.strip().lower() == o.strip().lower():
                raise SFDConfigError(f"override prompt {o!r} equals its forget prompt {f!r}")
        if encode_batch_size < 1:
            raise SFDConfigError(f"encode_batch_size={encode_batch_size} must be at least 1")
        self.remain_prompts = remain
        self.forget_prompts = forget
        self.override_prompts = override
        self.negative_prompt = negative_prompt or ""
        self.negative_for = tuple(roles)
        self.encode_batch_size = encode_batch_size
        self._embeds: dict[str, Tensor] | None = None  # on the CPU, set by `bind`
        self._embeds_by_device: dict[torch.device, dict[str, Tensor]] = {}

    # --- the ConditionSampler interface ---------------------------------------------------------

    @classmethod
    def negative_setting(cls, settings: Mapping[str, Any]) -> tuple[str, tuple[str, ...]] | None:
        prompt = settings.get("negative_prompt")
        if not prompt:
            return None
        return f"negative_prompt {prompt!r}", negative_roles(settings)

    def check(self, num_classes: int | None) -> None:
        if num_classes is not None:
            raise SFDConfigError(
                f"PromptConditions needs a text-conditioned teacher, not a {num_classes}-class one"
            )

    def bind(self, teacher: Any) -> None:
        """Encode every fixed prompt set once with `teacher.encode_prompts` and cache it.

        `encode_prompts(prompts, batch_size)` returns the embeddings (N, L, D), or a pair of
        embeddings and pooled embeddings ((N, L, D), (N, P)).
        """
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
                    "",
                ]
            )
        )
        encoded = encode(unique, self.encode_batch_size)  # (U, L, D) or with pooled (U, P)
        table, pooled = encoded if isinstance(encoded, tuple) else (encoded, None)
        row = {prompt: i for i, prompt in enumerate(unique)}
        sets = {
            "remain": self.remain_prompts,
            "forget": self.forget_prompts,
            "override": self.override_prompts,
        }
        self._embeds = {}
        for suffix, source in (("", table), (POOLED, pooled)):
            if source is None:
                continue
            for name, prompts in sets.items():  # (R or F, L, D) / (R or F, P)
                self._embeds[name + suffix] = source[torch.tensor([row[p] for p in prompts])]
            self._embeds["negative" + suffix] = source[row[self.negative_prompt]]  # (L, D) / (P,)
            self._embeds["empty" + suffix] = source[row[""]]
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
        n = batch_size * world_size
        remain = torch.randint(len(self.remain_prompts), (n,), generator=generator, device=device)
        forget = torch.randint(len(self.forget_prompts), (n,), generator=generator, device=device)
        part = slice(rank * batch_size, (rank + 1) * batch_size)
        forget_cond, override_cond = self.forget_pairs(forget[part])
        return ConditionBatch(
            remain=self.remain_conditions(remain[part]),
            forget=forget_cond,
            override=override_cond,
        )

    def forget_pairs(self, index: Tensor) -> tuple[TextCondition, TextCondition]:
        """The forget and override conditions of forget prompts `index` (B,) (on its device)."""
        embeds, ids = self.embeddings(index.device), index.tolist()
        return (
            _condition(embeds, "forget", index, "negative", [self.forget_prompts[i] for i in ids]),
            _condition(
                embeds, "override", index, "negative", [self.override_prompts[i] for i in ids]
            ),
        )

    def remain_conditions(self, index: Tensor) -> TextCondition:
        """The condition of remain prompts `index` (B,) (on its device), as `sample` builds it."""
        embeds, ids = self.embeddings(index.device), index.tolist()
        return _condition(embeds, "remain", index, "empty", [self.remain_prompts[i] for i in ids])

    def for_role(self, cond: TextCondition, role: str) -> TextCondition:
        """The negative prompt only for the networks named in `negative_for`."""
        return cond if role in self.negative_for else cond.without_negative()

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
            negative = "negative" if kind == "forget" else "empty"
            return _condition(embeds, kind, index, negative, [prompts[i] for i in index.tolist()])

        forget_ids = chosen["forget"].tolist()
        return ConditionPreview(
            condition("remain", self.remain_prompts),
            condition("forget", self.forget_prompts),
            [self.remain_prompts[i] for i in chosen["remain"].tolist()],
            [f"{self.forget_prompts[i]} (forget → {self.override_prompts[i]})" for i in forget_ids],
        )


def _condition(
    embeds: dict[str, Tensor], kind: str, index: Tensor, negative: str, prompts: list[str]
) -> TextCondition:
    """The `TextCondition` of rows `index` (B,) of a cached prompt set, with its guidance null.

    Args:
        embeds: the cached embeddings (`PromptConditions.embeddings`), with their pooled
            twins ("<name>_pooled") when the teacher's encoder has pooled outputs.
        kind: the prompt set, "remain", "forget" or "override".
        index: rows of that set, (B,).
        negative: "negative" (the negative prompt) or "empty" (the empty prompt) as null.
        prompts: the B prompt strings.
    """
    batch = len(index)

    def rows(name: str) -> Tensor:  # one cached (L, D) / (P,) entry for every row
        return embeds[name].expand(batch, *embeds[name].shape)

    pooled = {}
    if kind + POOLED in embeds:
        pooled = {
            "pooled_embeds": embeds[kind + POOLED][index],
            "negative_pooled": rows(negative + POOLED),
            "empty_pooled": rows("empty" + POOLED),
        }
    return TextCondition(
        embeds[kind][index], rows(negative), tuple(prompts), rows("empty"), **pooled
    )


def shipped_prompt_file(concept: str) -> str | None:
    """The shipped forget-prompt list of a concept ("brad pitt" -> brad_pitt_prompts.txt), if any."""
    name = re.sub(r"[^a-z0-9]+", "_", concept.strip().lower()).strip("_") + "_prompts.txt"
    path = Path(default_data_file(name))
    return str(path) if path.is_file() else None


def _checked_templates(templates: list[str] | None) -> list[str]:
    templates = list(DEFAULT_TEMPLATES if templates is None else templates)
    if not templates:
        raise SFDConfigError("templates is empty; give at least one '{concept}' template")
    bad = [t for t in templates if "{concept}" not in t]
    if bad:
        raise SFDConfigError(f"template {bad[0]!r} has no '{{concept}}' slot")
    return templates


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
    """The nudity recipe: an NSFW keyword before or after a subject; the override is the subject.

    Each draw takes a subject, a keyword and a position uniformly ("nudity Woman" or
    "Woman, nudity", as the reference's prompt set), over the shipped 12 subjects and 27
    keywords by default; the comma-joined keyword list is the negative prompt of forget batches.

    Args:
        subjects: text file of subjects, e.g. "Woman" (default: the shipped
            prompt_lists/nudity_subjects.txt).
        keywords: text file of NSFW keywords (default: the shipped
            prompt_lists/nudity_keywords.txt).
        remain_prompts: text file of prompts to keep (default: the shipped generic captions).
        templates: how a forget prompt combines "{subject}" and "{keyword}" (one is drawn
            uniformly per prompt; default: prepended and appended).
        keywords_as_negative: use the comma-joined keyword list as the negative prompt.
        negative_for: the guided networks that see the negative prompt (see `PromptConditions`;
            the reference's nudity run uses all three).
        encode_batch_size: prompts per text-encoder call when encoding the prompt sets.
    """

    @classmethod
    def negative_setting(cls, settings: Mapping[str, Any]) -> tuple[str, tuple[str, ...]] | None:
        if not settings.get("keywords_as_negative", True):
            return None
        return "keywords_as_negative true", negative_roles(settings)

    def __init__(
        self,
        subjects: str | None = None,
        keywords: str | None = None,
        remain_prompts: str | None = None,
        templates: list[str] | None = None,
        keywords_as_negative: bool = True,
        negative_for: list[str] | None = None,
        encode_batch_size: int = 32,
    ) -> None:
        templates = list(NUDITY_TEMPLATES if templates is None else templates)
        bad = [t for t in templates if "{subject}" not in t or "{keyword}" not in t]
        if not templates or bad:
            raise SFDConfigError(
                f"template {bad[0] if bad else ''!r} needs both a '{{subject}}' and a "
                "'{keyword}' slot"
            )
        subject_list = read_prompt_file(subjects or default_data_file("nudity_subjects.txt"))
        keyword_list = read_prompt_file(keywords or default_data_file("nudity_keywords.txt"))
        forget, override = [], []
        for subject in subject_list:
            for keyword in keyword_list:
                for template in templates:
                    forget.append(
                        template.replace("{subject}", subject).replace("{keyword}", keyword)
                    )
                    override.append(subject)
        self.concepts = {}
        self.keywords = keyword_list
        self._set_prompts(
            read_prompt_file(remain_prompts or default_data_file("remain_prompts.txt")),
            forget,
            override,
            ", ".join(keyword_list) if keywords_as_negative else None,
            negative_for,
            encode_batch_size,
        )
