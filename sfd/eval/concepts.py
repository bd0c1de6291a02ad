"""Concept-forgetting metrics of text-to-image models, measured by an evaluation classifier.

The prompts of each role are labelled with the class they ask for: forget prompts used in
training, held-out paraphrases given to evaluation only, and remain prompts of every other class.
Images are generated with seeded noise (sample i gets the same z for every model), labelled by
the classifier, and scored as in the class-forgetting evaluation (`sfd.eval.metrics`): UA, where
forget samples went, per-class remain accuracy with the neighbour concepts apart, and FID / KID of
remain samples against held-out real images on the classifier's features.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sfd.errors import SFDConfigError
from sfd.eval.evaluate import class_noise, classify
from sfd.eval.metrics import (
    feature_distances,
    label_histogram,
    per_class_accuracy,
    unlearning_accuracy,
)
from sfd.eval.text_models import TextToImage
from sfd.images import to_uint8
from sfd.progress import ProgressBar


@dataclass
class PromptSet:
    """Prompts with the class each asks for.

    Attributes:
        name: the role ("forget_train", "forget_paraphrases", "remain").
        prompts: the prompt strings.
        labels: the class of each prompt.
        source: the file they came from (None: built in code).
    """

    name: str
    prompts: list[str]
    labels: list[int]
    source: str | None = None

    def __post_init__(self) -> None:
        if not self.prompts or len(self.prompts) != len(self.labels):
            raise SFDConfigError(
                f"prompt set {self.name!r} needs as many labels as prompts (and at least one)"
            )

    def sha256(self) -> str:
        """Hash of the prompts and labels (and so of the file's content), for the protocol."""
        text = "\n".join(
            f"{label}\t{prompt}" for prompt, label in zip(self.prompts, self.labels, strict=True)
        )
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> dict[str, Any]:
        """Protocol entry: source, hash, prompt and class counts."""
        entry: dict[str, Any] = {
            "source": self.source,
            "sha256": self.sha256(),
            "num_prompts": len(self.prompts),
            "classes": sorted(set(self.labels)),
        }
        if self.source is not None and Path(self.source).is_file():
            entry["file_sha256"] = hashlib.sha256(Path(self.source).read_bytes()).hexdigest()
        return entry

    def spread(self, per_class: int) -> tuple[list[str], Tensor]:
        """`per_class` prompts for each class, cycling through its prompts: (prompts, labels)."""
        prompts, labels = [], []
        for label in sorted(set(self.labels)):
            own = [p for p, c in zip(self.prompts, self.labels, strict=True) if c == label]
            prompts += [own[i % len(own)] for i in range(per_class)]
            labels += [label] * per_class
        return prompts, torch.tensor(labels)


@torch.no_grad()
def generate_for_prompts(
    model: TextToImage,
    prompts: list[str],
    seed: int,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Tensor:
    """One uint8 image per prompt, (N, C, H, W), image i from the i-th z of `seed`.

    Args:
        model: the model.
        prompts: N prompts (repeat a prompt for several images).
        seed: seed of the noise (the same for every model).
        batch_size: images per call.
        device: where the model runs.
        progress: show a progress bar.
    """
    z = class_noise(len(prompts), model.latent_shape, seed)
    chunks = []
    starts = range(0, len(prompts), batch_size)
    for start in ProgressBar(
        starts, desc=f"sampling {model.name}", disable=not progress, leave=False
    ):
        cond = model.encoder.condition(prompts[start : start + batch_size]).to(device)
        images = model.images(z[start : start + batch_size].to(device), cond)
        chunks.append(to_uint8(images.cpu()))
    return torch.cat(chunks)


@dataclass
class ForgetSetResult:
    """Where the samples of one forget prompt set went."""

    ua: float
    as_override: float
    histogram: list[int]
    num_images: int


@dataclass
class ConceptEvaluation:
    """Concept-forgetting and quality metrics of one text-to-image model."""

    forget_train: ForgetSetResult
    forget_paraphrases: ForgetSetResult | None
    remain_accuracy: float
    remain_per_class: dict[int, float]
    neighbour_accuracy: float | None
    non_neighbour_accuracy: float
    fid_remain: float
    kid_remain: float
    kid_remain_std: float
    nfe: int
    sampler: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ua(self) -> float:
        return self.forget_train.ua

    @property
    def forget_histogram(self) -> list[int]:
        return self.forget_train.histogram

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (class keys as strings)."""
        data = asdict(self)
        data["remain_per_class"] = {str(k): v for k, v in self.remain_per_class.items()}
        return data


def forget_set_result(
    predicted: Tensor, forget: list[int], override: list[int], num_classes: int
) -> ForgetSetResult:
    """UA, share labelled as an override class, and the label histogram of forget samples."""
    return ForgetSetResult(
        ua=unlearning_accuracy(predicted, forget),
        as_override=torch.isin(predicted, torch.tensor(override)).float().mean().item(),
        histogram=label_histogram(predicted, num_classes),
        num_images=len(predicted),
    )


def evaluate_forget_set(
    model: TextToImage,
    classifier: nn.Module,
    prompt_set: PromptSet,
    forget: list[int],
    override: list[int],
    num_classes: int,
    images: int,
    seed: int,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ForgetSetResult:
    """Where `images` samples of a forget prompt set (cycling through its prompts, noise of
    `seed`) went: UA, share labelled as an override class, label histogram."""
    prompts = [prompt_set.prompts[i % len(prompt_set.prompts)] for i in range(images)]
    generated = generate_for_prompts(model, prompts, seed, batch_size, device, progress)
    return forget_set_result(classify(classifier, generated), forget, override, num_classes)


def evaluate_concepts(
    model: TextToImage,
    classifier: nn.Module,
    forget_train: PromptSet,
    remain: PromptSet,
    real_remain: Tensor,
    num_classes: int,
    forget: list[int],
    override: list[int],
    neighbours: list[int],
    forget_paraphrases: PromptSet | None = None,
    forget_images: int = 200,
    remain_per_class: int = 100,
    seed: int = 0,
    batch_size: int = 250,
    kid_subsets: int = 50,
    kid_subset_size: int = 100,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ConceptEvaluation:
    """UA on training forget prompts and paraphrases, remain / neighbour accuracy, FID / KID.

    Args:
        model: the model.
        classifier: the evaluation classifier (logits; `features` for FID / KID).
        forget_train: the forget prompts SFD trained on.
        remain: remain prompts of every remain class.
        real_remain: held-out real remain-class images, uint8 (N, C, H, W).
        num_classes: K.
        forget: the forget classes.
        override: the override classes.
        neighbours: remain classes reported apart (the concepts closest to the forgotten one).
        forget_paraphrases: held-out paraphrases of the forget prompts (evaluation only).
        forget_images: images per forget prompt set (cycling through its prompts).
        remain_per_class: images per remain class.
        seed: seed of the noise (each set and model draws the same z).
        batch_size: images per call.
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size (capped by the set sizes).
        device: where the model runs.
        progress: show progress bars.

    Returns:
        the metrics.
    """
    if remain_per_class < 2 or forget_images < 1:
        raise SFDConfigError(
            f"remain_per_class={remain_per_class} must be >= 2 and forget_images="
            f"{forget_images} >= 1"
        )
    if any(c in forget for c in remain.labels):
        raise SFDConfigError("the remain prompt set holds prompts of a forget class")
    bad = [c for c in neighbours if c in forget or c not in remain.labels]
    if bad:
        raise SFDConfigError(f"neighbour class {bad[0]} is not a remain class with prompts")

    def forget_result(prompt_set: PromptSet, offset: int) -> ForgetSetResult:
        return evaluate_forget_set(
            model, classifier, prompt_set, forget, override, num_classes, forget_images,
            seed + offset, batch_size, device, progress,
        )  # fmt: skip

    train_result = forget_result(forget_train, 0)
    paraphrase_result = (
        forget_result(forget_paraphrases, 1) if forget_paraphrases is not None else None
    )
    prompts, labels = remain.spread(remain_per_class)
    images = generate_for_prompts(model, prompts, seed + 2, batch_size, device, progress)
    classes = sorted(set(remain.labels))
    per_class = per_class_accuracy(classify(classifier, images), labels, classes)
    distances = feature_distances(
        real_remain, images, classifier, kid_subsets, kid_subset_size, seed
    )
    others = [c for c in classes if c not in neighbours]
    return ConceptEvaluation(
        forget_train=train_result,
        forget_paraphrases=paraphrase_result,
        remain_accuracy=sum(per_class.values()) / len(per_class),
        remain_per_class=per_class,
        neighbour_accuracy=(
            sum(per_class[c] for c in neighbours) / len(neighbours) if neighbours else None
        ),
        non_neighbour_accuracy=(
            sum(per_class[c] for c in others) / len(others) if others else float("nan")
        ),
        fid_remain=distances.fid,
        kid_remain=distances.kid_mean,
        kid_remain_std=distances.kid_std,
        nfe=model.nfe,
        sampler=model.name,
        extra={
            "kid_subset_size": distances.kid_subset_size,
            "kid_subsets": kid_subsets,
            "neighbours": list(neighbours),
            "remain_images": len(images),
        },
    )


@torch.no_grad()
def nearest_classes(
    classifier: nn.Module, images: Tensor, labels: Tensor, target: int, count: int
) -> list[int]:
    """The `count` classes whose mean classifier feature is closest to class `target`'s.

    Args:
        classifier: the evaluation classifier (`features`).
        images: real uint8 images, (N, C, H, W).
        labels: their classes, (N,).
        target: the class to find neighbours of.
        count: how many neighbours.

    Returns:
        neighbour classes, nearest first.
    """
    from sfd.images import from_uint8

    features = torch.cat([classifier.features(from_uint8(c)) for c in images.split(1000)])
    classes = sorted(set(labels.tolist()))
    means = {c: features[labels == c].mean(0) for c in classes}
    distance = {c: float((means[c] - means[target]).norm()) for c in classes if c != target}
    return sorted(distance, key=distance.get)[:count]
