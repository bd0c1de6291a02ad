"""Class-forgetting metrics (docs/method.md §6): unlearning accuracy, where forget samples went,
remain-class accuracy, and FID / KID on the evaluation classifier's penultimate features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchmetrics.functional.classification import binary_accuracy, multiclass_recall
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from sfd.errors import SFDConfigError
from sfd.images import from_uint8


def unlearning_accuracy(predicted: Tensor, forget: list[int]) -> float:
    """UA = 1 − (share of forget-class samples the classifier labels as a forget class).

    The denominator is the number of forget-class samples (not all generated images): UA is
    torchmetrics' binary accuracy of "no longer a forget class" over those samples, whose
    target is always true.

    Args:
        predicted: classifier labels of samples generated *for the forget classes*, (N,).
        forget: the forget classes.

    Returns:
        UA in [0, 1].
    """
    if predicted.numel() == 0:
        raise SFDConfigError("unlearning accuracy needs at least one forget-class sample")
    still_forget = torch.isin(predicted, torch.as_tensor(forget, device=predicted.device))
    forgotten = (~still_forget).long()  # (N,) 1 where the sample left the forget set
    return binary_accuracy(forgotten, torch.ones_like(forgotten)).item()


def label_histogram(predicted: Tensor, num_classes: int) -> list[int]:
    """Counts of each predicted label, (num_classes,) as a list (where forget samples went)."""
    return torch.bincount(predicted.long().cpu(), minlength=num_classes)[:num_classes].tolist()


def per_class_accuracy(predicted: Tensor, labels: Tensor, classes: list[int]) -> dict[int, float]:
    """Classifier accuracy on samples generated for each of `classes`.

    Args:
        predicted: classifier labels, (N,).
        labels: the classes the samples were generated for, (N,).
        classes: the classes to report (each must have samples).

    Returns:
        {class: accuracy in [0, 1]}.
    """
    missing = [label for label in classes if not bool((labels == label).any())]
    if missing:
        raise SFDConfigError(f"no samples of class {missing[0]} to measure its accuracy")
    # The share of class-c samples labelled c is the recall of class c.
    num_classes = int(max(max(classes), labels.max().item(), predicted.max().item())) + 1
    recall = multiclass_recall(predicted, labels, num_classes, average="none")  # (K,)
    return {label: recall[label].item() for label in classes}


class ClassifierFeatures(nn.Module):
    """The evaluation classifier's penultimate layer as a torchmetrics `feature=` module.

    torchmetrics passes a custom feature module the images exactly as given to `update` (with
    `normalize=False`), so real and generated images both enter as uint8 (B, C, H, W) in
    [0, 255] and are mapped to the classifier's [-1, 1] input here, identically.

    Args:
        classifier: a module with `features(x) -> (B, F)` for x in [-1, 1].
        num_features: F (so torchmetrics needs no dummy forward pass to find it).
    """

    def __init__(self, classifier: nn.Module, num_features: int) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = num_features

    def train(self, mode: bool = True) -> ClassifierFeatures:
        return super().train(False)  # a fixed feature extractor: never in training mode

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        if images.dtype != torch.uint8:
            raise TypeError(f"ClassifierFeatures expects uint8 images, got {images.dtype}")
        x = from_uint8(images)  # (B, C, H, W) in [-1, 1]
        return self.classifier.features(x).float()  # (B, F)


@dataclass
class FeatureDistances:
    """FID and KID between a real and a generated image set on one feature extractor."""

    fid: float
    kid_mean: float
    kid_std: float
    kid_subset_size: int
    kid_subsets: int


def num_features(classifier: nn.Module, image_shape: tuple[int, int, int]) -> int:
    """The width F of `classifier.features` for images of shape (C, H, W)."""
    probe = torch.zeros(1, *image_shape, device=next(classifier.parameters()).device)
    with torch.no_grad():
        return int(classifier.features(probe).shape[-1])


def feature_distances(
    real: Tensor,
    fake: Tensor,
    classifier: nn.Module,
    kid_subsets: int = 50,
    kid_subset_size: int = 100,
    seed: int = 0,
    batch_size: int = 500,
) -> FeatureDistances:
    """FID and KID of `fake` against `real` on the classifier's penultimate features (torchmetrics).

    Args:
        real: uint8 images, (N_real, C, H, W).
        fake: uint8 images, (N_fake, C, H, W), preprocessed exactly like `real`.
        classifier: the evaluation classifier (`features(x) -> (B, F)`).
        kid_subsets: number of KID subsets.
        kid_subset_size: samples per KID subset (capped at the smaller set size).
        seed: seed of KID's subset draws.
        batch_size: images per feature-extraction batch.

    Returns:
        the distances.
    """
    for name, images in (("real", real), ("fake", fake)):
        if images.dtype != torch.uint8:
            raise TypeError(f"{name} images must be uint8, got {images.dtype}")
        if len(images) < 2:
            raise SFDConfigError(f"FID needs at least 2 {name} images, got {len(images)}")
    subset_size = min(kid_subset_size, len(real), len(fake))
    extractor = ClassifierFeatures(classifier, num_features(classifier, tuple(real.shape[1:])))
    fid = FrechetInceptionDistance(feature=extractor, normalize=False)  # float64 statistics
    kid = KernelInceptionDistance(
        feature=extractor, subsets=kid_subsets, subset_size=subset_size, normalize=False
    )
    device = next(classifier.parameters()).device
    fid, kid = fid.to(device), kid.to(device)
    for images, is_real in ((real, True), (fake, False)):
        for chunk in images.split(batch_size):
            fid.update(chunk.to(device), real=is_real)
            kid.update(chunk.to(device), real=is_real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # KID draws its subsets from the global generator
        kid_mean, kid_std = kid.compute()
    return FeatureDistances(
        fid=float(fid.compute()),
        kid_mean=float(kid_mean),
        kid_std=float(kid_std),
        kid_subset_size=subset_size,
        kid_subsets=kid_subsets,
    )
