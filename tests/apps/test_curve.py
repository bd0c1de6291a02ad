"""The harness's timed forgetting curve: its remain FID against a hand-computed FID of the same
fixed-noise samples, and no FID for multi-step models."""

from __future__ import annotations

import torch
from gaussian import gaussian_teacher

from sfd.apps.harness.curve import TimedForgettingCurve, until_forgotten
from sfd.baselines.method import Unlearned
from sfd.core.generator import OneStepGenerator
from sfd.eval.classifier import Classifier
from sfd.eval.evaluate import class_noise
from sfd.eval.metrics import feature_distances
from sfd.images import to_uint8

SHAPE = (1, 4, 4)


def curve(real: torch.Tensor | None) -> TimedForgettingCurve:
    torch.manual_seed(0)
    classifier = Classifier(1, 4, SHAPE[1:], width=4, feature_dim=6)
    return TimedForgettingCurve(
        classifier, 4, [0], every_n=2, num_per_class=3, seed=5, real_remain=real, fid_per_class=8
    )


def test_the_remain_fid_is_the_fid_of_the_remain_samples_on_fixed_noise() -> None:
    generator = OneStepGenerator(gaussian_teacher(shape=SHAPE), sigma_init=2.5)
    real = to_uint8(torch.rand(40, *SHAPE, generator=torch.Generator().manual_seed(1)) * 2 - 1)
    timed = curve(real)
    labels = torch.tensor([1, 2, 3]).repeat_interleave(8)  # the remain classes, 8 each
    with torch.no_grad():
        images = generator.eval()(class_noise(len(labels), SHAPE, 6), labels)  # seed + 1
    expected = feature_distances(real, to_uint8(images), timed.classifier).fid
    measured = timed.remain_fid(Unlearned(generator), "cpu")
    assert measured == expected
    assert measured == timed.remain_fid(Unlearned(generator), "cpu")  # fixed noise


def test_no_reference_or_a_multi_step_model_gets_no_fid() -> None:
    teacher = gaussian_teacher(shape=SHAPE)
    generator = OneStepGenerator(teacher, sigma_init=2.5)
    assert curve(None).remain_fid(Unlearned(generator), "cpu") is None
    real = to_uint8(torch.zeros(4, *SHAPE))
    assert curve(real).remain_fid(Unlearned(teacher), "cpu") is None


def test_the_demos_average_after_is_at_least_one_probe_interval_and_0_is_off() -> None:
    """`--average-after N` of `sfd demo` / `sfd compare` / `sfd demo-text`: the rule averages
    max(N, the curve's interval) iterations after its restart; 0 leaves the EMA's schedule alone."""
    timed = curve(None)  # every_n=2
    assert until_forgotten(timed, 0).average_after is None
    assert until_forgotten(timed).average_after is None
    assert until_forgotten(timed, 1).average_after == 2
    assert until_forgotten(timed, 150).average_after == 150
    assert until_forgotten(timed, 150).every_n == 2
