"""The text demo's prompt files: SFD's forget and remain prompts, evaluation-only paraphrases.

SFD trains on the teacher's caption templates: the forget prompts are the forget class's captions,
the remain prompts those of every other class; stage 1 of the two-stage path (plain distillation,
the same for every concept pair) distils on every class's captions. The paraphrases are other
templates (shipped in prompts/ beside this module, one "{name}" template per line) filled with the
forget class's names; neither the teacher nor SFD ever sees them. Every file is written into the
report folder, so `sfd eval-text` can re-run the evaluation from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from sfd.apps.data.captions import CaptionVocabulary, write_labelled
from sfd.apps.data.images import DIGITS
from sfd.errors import SFDConfigError
from sfd.eval.concepts import PromptSet

PARAPHRASE_FILES = {DIGITS: "digits_paraphrases.txt", "fashion": "fashion_paraphrases.txt"}


def shipped_paraphrases(source: str, variant: str = "") -> Path:
    """A shipped paraphrase template file ("" the tuned set, "b" the held-back one)."""
    name = PARAPHRASE_FILES[DIGITS if source == DIGITS else "fashion"]
    if variant:
        name = name.replace(".txt", f"_{variant}.txt")
    return Path(str(resources.files("sfd.apps.demo_text") / "prompts" / name))


def read_templates(path: str | Path) -> list[str]:
    """Non-empty lines of a template file, each with one "{name}" slot."""
    file = Path(path)
    if not file.is_file():
        raise SFDConfigError(f"paraphrase template file {str(path)!r} does not exist")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines()]
    templates = [line for line in lines if line]
    bad = [t for t in templates if t.count("{name}") != 1]
    if not templates or bad:
        raise SFDConfigError(
            f"{str(path)!r}: every line needs one '{{name}}' slot (got {bad[0] if bad else 'none'!r})"
        )
    return templates


@dataclass
class DemoPrompts:
    """The prompt sets of one run and the files they were written to."""

    forget_train: PromptSet
    forget_paraphrases: PromptSet
    remain: PromptSet
    concepts: dict[str, str]
    files: dict[str, Path]


def write_prompt_sets(
    vocabulary: CaptionVocabulary,
    forget: int,
    override: int,
    paraphrase_templates: str | Path,
    folder: Path,
) -> DemoPrompts:
    """Write forget_prompts.txt, remain_prompts.txt (+ remain_prompts.csv with classes),
    forget_paraphrases.txt and distill_prompts.txt (every class's captions) into `folder`;
    return the sets.
    """
    forget_prompts = vocabulary.captions(forget)
    templates = read_templates(paraphrase_templates)
    paraphrases = [
        t.replace("{name}", name) for t in templates for name in vocabulary.names[forget]
    ]
    overlap = sorted(set(paraphrases) & set(vocabulary.caption_table()[0]))
    if overlap:
        raise SFDConfigError(
            f"paraphrase {overlap[0]!r} is also a training caption; paraphrases must be held out"
        )
    folder.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good
    remain, labels = [], []
    for label in range(vocabulary.num_classes):
        if label != forget:
            captions = vocabulary.captions(label)
            remain += captions
            labels += [label] * len(captions)
    files = {
        "forget_prompts": folder / "forget_prompts.txt",
        "forget_paraphrases": folder / "forget_paraphrases.txt",
        "remain_prompts": folder / "remain_prompts.txt",
        "remain_prompts_labelled": folder / "remain_prompts.csv",
        "distill_prompts": folder / "distill_prompts.txt",
    }
    files["forget_prompts"].write_text("\n".join(forget_prompts) + "\n", encoding="utf-8")
    files["forget_paraphrases"].write_text("\n".join(paraphrases) + "\n", encoding="utf-8")
    files["remain_prompts"].write_text("\n".join(remain) + "\n", encoding="utf-8")
    write_labelled(files["remain_prompts_labelled"], remain, labels)
    every_caption = vocabulary.caption_table()[0]
    files["distill_prompts"].write_text("\n".join(every_caption) + "\n", encoding="utf-8")
    return DemoPrompts(
        forget_train=PromptSet(
            "forget_train",
            forget_prompts,
            [forget] * len(forget_prompts),
            str(files["forget_prompts"]),
        ),
        forget_paraphrases=PromptSet(
            "forget_paraphrases",
            paraphrases,
            [forget] * len(paraphrases),
            str(files["forget_paraphrases"]),
        ),
        remain=PromptSet("remain", remain, labels, str(files["remain_prompts_labelled"])),
        concepts=vocabulary.concept_pairs(forget, override),
        files=files,
    )
