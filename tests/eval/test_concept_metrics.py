"""Concept metrics against hand counts: a fake model whose images are its prompt's class."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sfd.core.conditions import TextCondition
from sfd.errors import SFDConfigError
from sfd.eval.concepts import PromptSet, evaluate_concepts, nearest_classes
from sfd.eval.text_models import TextToImage

K = 4


class ClassPrompts:
    """Encodes "class c ..." as a constant embedding c (one token)."""

    def condition(self, prompts: list[str]) -> TextCondition:
        values = torch.tensor([float(p.split()[1]) for p in prompts]).view(-1, 1, 1)
        return TextCondition(values, torch.zeros_like(values), tuple(prompts))


class PixelClassifier(nn.Module):
    """Class = round(mean pixel · K / 2 + K / 2) (images in [-1, 1]); features: a soft one-hot."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # the metrics read the device off a parameter

    def features(self, x: torch.Tensor) -> torch.Tensor:
        level = (x.float().mean(dim=(1, 2, 3)) + 1) * (K / 2)  # (B,) in [0, K]
        return -(level[:, None] - torch.arange(K)[None]).abs()  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 10 * self.features(x)


def image_of(label: torch.Tensor) -> torch.Tensor:
    return (label.float() * 2 / K - 1).view(-1, 1, 1, 1).expand(-1, 1, 2, 2)


def fake_model(redirect: dict[int, int]) -> TextToImage:
    """Draws the prompt's class, except classes in `redirect`, drawn as their target."""

    def denoise(z: torch.Tensor, cond: TextCondition) -> torch.Tensor:
        label = cond.prompt_embeds[:, 0, 0].round().long()
        for source, target in redirect.items():
            label = torch.where(label == source, torch.full_like(label, target), label)
        return image_of(label)

    return TextToImage("fake", 1, (1, 2, 2), 1.0, denoise, lambda x: x, ClassPrompts())


def test_ua_histogram_and_remain_accuracy_are_the_hand_counts():
    forget = PromptSet("forget_train", ["class 3 a", "class 3 b"], [3, 3])
    paraphrases = PromptSet("forget_paraphrases", ["class 3 c"], [3])
    remain = PromptSet("remain", [f"class {c} x" for c in (0, 1, 2)], [0, 1, 2])
    real = torch.cat([(127.5 * (image_of(torch.tensor([c] * 5)) + 1)).round() for c in (0, 1, 2)])
    real = real.to(torch.uint8)
    result = evaluate_concepts(
        fake_model({3: 1, 2: 0}),  # forget -> override 1; remain class 2 collapses onto 0
        PixelClassifier(),
        forget,
        remain,
        real,
        K,
        forget=[3],
        override=[1],
        neighbours=[2],
        forget_paraphrases=paraphrases,
        forget_images=6,
        remain_per_class=4,
    )
    assert result.forget_train.ua == 1.0 and result.forget_train.as_override == 1.0
    assert result.forget_train.histogram == [0, 6, 0, 0]
    assert result.forget_paraphrases.histogram == [0, 6, 0, 0]
    assert result.remain_per_class == {0: 1.0, 1: 1.0, 2: 0.0}
    assert result.remain_accuracy == pytest.approx(2 / 3)
    assert result.neighbour_accuracy == 0.0 and result.non_neighbour_accuracy == 1.0
    kept = evaluate_concepts(
        fake_model({}), PixelClassifier(), forget, remain, real, K, [3], [1], [2],
        forget_images=6, remain_per_class=5,
    )  # fmt: skip
    assert kept.ua == 0.0 and kept.forget_train.histogram == [0, 0, 0, 6]
    assert kept.fid_remain < result.fid_remain  # exact classes vs a collapsed class
    assert kept.fid_remain == pytest.approx(0.0, abs=1e-3)  # same images as the real set


def test_prompt_sets_are_checked():
    with pytest.raises(SFDConfigError, match="labels"):
        PromptSet("x", ["a"], [])
    forget = PromptSet("f", ["class 3"], [3])
    with pytest.raises(SFDConfigError, match="forget class"):
        evaluate_concepts(
            fake_model({}), PixelClassifier(), forget, forget, torch.zeros(2, 1, 2, 2, dtype=torch.uint8),
            K, [3], [1], [],
        )  # fmt: skip


def test_nearest_classes_by_mean_feature():
    labels = torch.tensor([0, 1, 2, 3] * 3)
    images = (127.5 * (image_of(labels) + 1)).round().to(torch.uint8)
    assert nearest_classes(PixelClassifier(), images, labels, 3, 2) == [2, 1]
