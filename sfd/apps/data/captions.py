"""Captioned image sets for text-to-image teachers: digits and Fashion-MNIST with caption templates.

A caption is a template ("a handwritten digit {name}") filled with one of the names of the image's
class ("seven", "7"). Every image of a class shares the class's captions, so a teacher learns
concept words, not image descriptions; the frozen text encoder brings the rest of the language.
Paraphrase templates that no teacher or SFD run trains on are shipped beside the text demo for
evaluation (sfd/apps/demo_text/prompts/).

Fashion-MNIST is read from its standard idx files (train-images-idx3-ubyte[.gz], ...), e.g. those
of Debian's `dataset-fashion-mnist` package, and padded from 28×28 to 32×32 so that a VAE with
two downsamplings gives 8×8 latents.
"""

from __future__ import annotations

import csv
import gzip
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sfd.apps.data.images import load_digits
from sfd.apps.data.names import DIGITS
from sfd.apps.data.names import FASHION as FASHION
from sfd.errors import SFDConfigError
from sfd.eval.concepts import PromptSet
from sfd.images import LabelledImages

FASHION_FOLDERS = ("/usr/share/datasets/fashion-mnist",)  # Debian's dataset-fashion-mnist
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
FASHION_PAD = 2  # 28 -> 32 pixels


@dataclass(frozen=True)
class CaptionVocabulary:
    """The words of each class and the caption templates of a captioned data set.

    Attributes:
        names: per class, the phrases that name it; the first is the canonical one.
        templates: caption templates with one "{name}" slot.
        class_names: short display names of the classes.
    """

    names: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...]
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.class_names) or not all(self.names):
            raise SFDConfigError("every class needs at least one name")
        bad = [t for t in self.templates if t.count("{name}") != 1]
        if not self.templates or bad:
            raise SFDConfigError(f"caption template {bad[0] if bad else ''!r} needs one '{{name}}'")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def captions(self, label: int, templates: tuple[str, ...] | None = None) -> list[str]:
        """Every template filled with every name of class `label` (template-major)."""
        return [
            template.replace("{name}", name)
            for template in (templates or self.templates)
            for name in self.names[label]
        ]

    def caption_table(self) -> tuple[list[str], torch.Tensor]:
        """All training captions and the class of each: (captions, labels (U,) int64)."""
        captions, labels = [], []
        for label in range(self.num_classes):
            found = self.captions(label)
            captions += found
            labels += [label] * len(found)
        return captions, torch.tensor(labels)

    def concept_pairs(self, forget: int, override: int) -> dict[str, str]:
        """Forget name -> override name (the i-th names paired; extra forget names -> the last)."""
        targets = self.names[override]
        return {
            name: targets[min(i, len(targets) - 1)] for i, name in enumerate(self.names[forget])
        }


def resolve_class(
    value: int | str, vocabulary: CaptionVocabulary | LabelledImages, flag: str
) -> int:
    """A class given by index (7, "7") or by name ("seven", "sneaker"; any case).

    Args:
        value: what the user gave.
        vocabulary: the data set's vocabulary, or labelled images (their `class_names`; a data
            set without names takes indices only).
        flag: the option that gave it, for the message.

    Returns:
        the class index.
    """
    text = str(value).strip().lower()
    if text.isdigit() and int(text) < vocabulary.num_classes:
        return int(text)
    names = [name.lower() for name in vocabulary.class_names or ()]
    if text in names:
        return names.index(text)
    allowed = f"0..{vocabulary.num_classes - 1}"
    allowed += f" or one of {names}" if names else " (the data set names no classes)"
    raise SFDConfigError(f"{flag} {text!r} is not a class: give {allowed}")


def named_classes(source: str, data: LabelledImages) -> CaptionVocabulary | LabelledImages:
    """What `resolve_class` reads the class names of `data` from: digits by their caption names
    ("zero".."nine"), any other data set by its own `class_names` (indices only without them)."""
    return DIGITS_VOCABULARY if source == DIGITS else data


DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGITS_VOCABULARY = CaptionVocabulary(
    names=tuple((word, str(digit)) for digit, word in enumerate(DIGIT_WORDS)),
    templates=(
        "a handwritten digit {name}",
        "the number {name}",
        "a drawing of the digit {name}",
        "{name}",
        "a picture of the number {name}",
        "handwritten {name}",
        "the digit {name} written with a pen",
        "an image of a {name}",
    ),
    class_names=DIGIT_WORDS,
)
FASHION_VOCABULARY = CaptionVocabulary(
    names=(
        ("a t-shirt", "a top", "a tee"),
        ("a pair of trousers", "trousers", "pants"),
        ("a pullover", "a sweater", "a jumper"),
        ("a dress", "a gown"),
        ("a coat", "a jacket"),
        ("a sandal", "a pair of sandals", "a flip-flop"),
        ("a shirt", "a blouse", "a button-down shirt"),
        ("a sneaker", "a pair of sneakers", "a trainer", "a running shoe"),
        ("a bag", "a handbag", "a purse"),
        ("an ankle boot", "a pair of ankle boots", "a boot"),
    ),
    templates=(
        "a photo of {name}",
        "{name}",
        "a picture of {name}",
        "a grayscale photo of {name}",
        "a product photo of {name}",
        "an image of {name}",
        "a small picture of {name}",
        "{name} on a black background",
    ),
    class_names=(
        "t-shirt",
        "trouser",
        "pullover",
        "dress",
        "coat",
        "sandal",
        "shirt",
        "sneaker",
        "bag",
        "ankle boot",
    ),
)


def vocabulary_for(source: str) -> CaptionVocabulary:
    """The caption vocabulary of a data source ("digits" or Fashion-MNIST)."""
    return DIGITS_VOCABULARY if source == DIGITS else FASHION_VOCABULARY


def find_fashion_folder(source: str) -> Path:
    """The folder holding Fashion-MNIST's idx files: `source` itself, or Debian's location."""
    candidates = list(FASHION_FOLDERS) if source == FASHION else [source]
    for folder in map(Path, candidates):
        if all(
            _idx_file(folder, name) is not None for pair in FASHION_FILES.values() for name in pair
        ):
            return folder
    raise SFDConfigError(
        f"--data {source!r}: no Fashion-MNIST idx files (train-images-idx3-ubyte[.gz], "
        "train-labels-idx1-ubyte[.gz], t10k-...) found"
        + (
            " in /usr/share/datasets/fashion-mnist; install them with "
            "`apt-get install dataset-fashion-mnist` or give their folder"
            if source == FASHION
            else "; give 'digits', 'fashion-mnist' or a folder holding those files"
        )
    )


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally gzipped): magic 0x0000 08 <ndim>, big-endian sizes, uint8 data."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SFDConfigError(f"{str(path)!r} is not an unsigned-byte idx file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise SFDConfigError(f"{str(path)!r} holds {data.size} values, its header says {shape}")
    return data.reshape(shape)


def load_fashion_mnist(source: str = FASHION, split: str = "all") -> LabelledImages:
    """Fashion-MNIST from its idx files, padded to 1×32×32 (70,000 images with split "all").

    Args:
        source: "fashion-mnist" (Debian's folder) or a folder holding the four idx files.
        split: "train" (60,000), "test" (10,000) or "all".

    Returns:
        uint8 images (N, 1, 32, 32) and labels (N,).
    """
    if split not in ("train", "test", "all"):
        raise SFDConfigError(f"split={split!r}; allowed: 'train', 'test', 'all'")
    folder = find_fashion_folder(source)
    parts = ["train", "test"] if split == "all" else [split]
    images, labels = [], []
    for part in parts:
        image_name, label_name = FASHION_FILES[part]
        pixels = read_idx(_idx_file(folder, image_name))  # (N, 28, 28)
        targets = read_idx(_idx_file(folder, label_name))  # (N,)
        if pixels.ndim != 3 or targets.ndim != 1 or len(pixels) != len(targets):
            raise SFDConfigError(f"the {part} idx files of {str(folder)!r} do not match")
        images.append(torch.from_numpy(pixels.copy()))
        labels.append(torch.from_numpy(targets.astype(np.int64)))
    padded = F.pad(torch.cat(images).unsqueeze(1), (FASHION_PAD,) * 4)  # (N, 1, 32, 32)
    return LabelledImages(
        padded,
        torch.cat(labels),
        num_classes=10,
        horizontal_flip=False,
        class_names=FASHION_VOCABULARY.class_names,
    )


def load_captioned(source: str = DIGITS) -> tuple[LabelledImages, CaptionVocabulary]:
    """A captioned data set: "digits" (embedded), "fashion-mnist" or a Fashion-MNIST idx folder."""
    if source == DIGITS:
        return load_digits(), DIGITS_VOCABULARY
    return load_fashion_mnist(source), FASHION_VOCABULARY


def caption_sample(vocabulary: CaptionVocabulary, labels: torch.Tensor, seed: int) -> list[str]:
    """One random training caption per label (seeded), e.g. for previews."""
    rng = random.Random(seed)
    return [rng.choice(vocabulary.captions(int(label))) for label in labels]


# Labelled prompt files (CSV, columns prompt and label): the text demo's prompt sets.


def write_labelled(path: Path, prompts: list[str], labels: list[int]) -> None:
    """A CSV with columns prompt, label."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "label"])
        writer.writerows(zip(prompts, labels, strict=True))


def read_labelled(path: str | Path, name: str = "remain") -> PromptSet:
    """A prompt set from a CSV with columns prompt, label (or a .txt plus a fixed label: no)."""
    file = Path(path)
    if not file.is_file():
        raise SFDConfigError(f"prompt file {str(path)!r} does not exist")
    with file.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "prompt" not in rows[0] or "label" not in rows[0]:
        raise SFDConfigError(f"{str(path)!r} needs a header with 'prompt' and 'label' columns")
    try:
        labels = [int(row["label"]) for row in rows]
    except ValueError as error:
        raise SFDConfigError(f"{str(path)!r} has a non-integer label") from error
    return PromptSet(name, [row["prompt"].strip() for row in rows], labels, str(file))
