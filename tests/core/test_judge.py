"""The data-free judge against an exact oracle: an analytic Gaussian teacher and its own samples.

With class-conditional Gaussians N(μ_k, s²·I) the teacher's denoiser is the exact posterior mean,
and the teacher's own samples of a class are draws from that class's Gaussian: the judge must call
a forget-class sample forget and an override-class sample override. The same holds for a
flow-matching teacher (the exact velocity through the flow adapter base), whose own samples come
from its flow Euler sampler: the judge's σ levels are σ-space levels, the same for every family.
"""

from __future__ import annotations

import pytest
import torch
from gaussian import GaussianClassFlow, GaussianClassNet

from sfd.core.conditions import ClassConditions
from sfd.core.ddim import ddim_trajectory
from sfd.core.generator import OneStepGenerator
from sfd.core.judge import (
    JudgeDraws,
    check_judge_settings,
    forget_rate,
    judged_forget,
    remain_drift,
    remain_samples,
)
from sfd.errors import SFDConfigError
from sfd.teachers import EDMDenoiser
from sfd.teachers.flow_time import flow_euler_sigmas

SHAPE = (1, 2, 2)
STD = 0.3


def teacher_with(means: torch.Tensor) -> EDMDenoiser:
    return EDMDenoiser(GaussianClassNet(means, STD), SHAPE, num_classes=len(means))


def separated_means() -> torch.Tensor:
    """Four classes at ±1.5 per pixel: every pair at least 3 apart, ten standard deviations."""
    signs = torch.tensor([[1, 1, 1, 1], [-1, -1, -1, -1], [1, 1, -1, -1], [-1, -1, 1, 1]])
    return 1.5 * signs.float().reshape(4, *SHAPE)


def draws_for(conditions: ClassConditions, n: int = 32, seed: int = 0) -> JudgeDraws:
    conditions.check(4)
    return JudgeDraws.draw(conditions, SHAPE, n, (0.4, 0.8, 1.6), 2, seed)


def teacher_samples(means: torch.Tensor, label: int, n: int, seed: int) -> torch.Tensor:
    """Exact draws from class `label` of the teacher's data distribution."""
    noise = torch.randn((n, *SHAPE), generator=torch.Generator().manual_seed(seed))
    return means[label] + STD * noise


@pytest.mark.parametrize(("forget", "override"), [(0, 1), (2, 3), (3, 0)])
def test_the_judge_ranks_the_teachers_own_samples(forget, override) -> None:
    means = separated_means()
    teacher = teacher_with(means)
    draws = draws_for(ClassConditions(forget, override))
    f = torch.full((32,), forget)
    o = torch.full((32,), override)
    of_forget = judged_forget(teacher, teacher_samples(means, forget, 32, 1), f, o, draws)
    of_override = judged_forget(teacher, teacher_samples(means, override, 32, 2), f, o, draws)
    assert of_forget.all()  # a sample of the forget class: judged forget
    assert not of_override.any()  # a sample of the override class: judged override


@pytest.mark.parametrize(("forget", "override"), [(0, 1), (2, 3), (3, 0)])
def test_the_judge_ranks_a_flow_teachers_own_samples(forget, override) -> None:
    means = separated_means()
    teacher = GaussianClassFlow(means, STD)
    draws = draws_for(ClassConditions(forget, override))
    f = torch.full((32,), forget)
    o = torch.full((32,), override)
    levels = flow_euler_sigmas(28)  # the flow sampler a user runs (StableDiffusion3Pipeline's)
    z = torch.randn((2, 32, *SHAPE), generator=torch.Generator().manual_seed(1))
    of_forget = ddim_trajectory(teacher, z[0], f, levels)
    of_override = ddim_trajectory(teacher, z[1], o, levels)
    # they are the classes' samples: within 4 standard deviations of their own mean (10 apart)
    assert (of_forget - means[forget]).abs().max() < 4 * STD
    assert (of_override - means[override]).abs().max() < 4 * STD
    assert judged_forget(teacher, of_forget, f, o, draws).all()
    assert not judged_forget(teacher, of_override, f, o, draws).any()


def test_forget_rate_of_generators_that_have_and_have_not_forgotten() -> None:
    means = separated_means()
    teacher = teacher_with(means)
    draws = draws_for(ClassConditions(0, 1))
    unchanged = OneStepGenerator(teacher_with(means), sigma_init=2.5)
    forgotten_means = means.clone()
    forgotten_means[0] = means[1]  # asked for class 0, it draws class 1
    forgotten = OneStepGenerator(teacher_with(forgotten_means), sigma_init=2.5)
    assert forget_rate(teacher, unchanged, draws) == 1.0
    assert forget_rate(teacher, forgotten, draws) == 0.0


def test_the_attacked_reading_counts_forget_only_where_it_beats_every_rival() -> None:
    """Adversarial SFD's reading of the pool (docs/method.md §8, §9). Oracle: the nearest class
    mean of an exact Gaussian teacher's own samples. A remain class nearer the forget class
    than the override (here 3 against 5.2 apart) is forget to the pairwise judge; among every
    concept it is its own class, while the forget class's samples stay forget."""
    means = separated_means()[:3]
    means[2] = 1.5 * torch.tensor([1.0, 1.0, 1.0, -1.0]).view(SHAPE)
    teacher = teacher_with(means)
    conditions = ClassConditions(0, 1)
    conditions.check(3)
    draws = JudgeDraws.draw(conditions, SHAPE, 32, (0.4, 0.8, 1.6), 2, 0)
    generator = OneStepGenerator(teacher_with(means), sigma_init=2.5)  # draws each class
    label = lambda k: torch.full((32,), k)  # noqa: E731
    remain_like = (label(2), label(0), label(1))  # drawn as class 2, judged as forget 0
    assert forget_rate(teacher, generator, draws, remain_like) == 1.0  # pairwise: "forget"
    assert forget_rate(teacher, generator, draws, (label(2), label(0), [label(1)])) == 1.0
    every = [label(1), label(2)]
    assert forget_rate(teacher, generator, draws, (label(2), label(0), every)) == 0.0
    assert forget_rate(teacher, generator, draws, (label(0), label(0), every)) == 1.0
    assert forget_rate(teacher, generator, draws, (label(1), label(0), every)) == 0.0


def test_the_floor_judges_the_generators_override_samples_on_the_forget_noise() -> None:
    """`sampled="override"`: the generator's samples for the override conditions, on the forget
    samples' noise, judged forget vs override. Separated classes: 0. A generator that draws the same
    ambiguous shapes (the midpoint of 0 and 1) for both conditions: the forget samples' rate, which
    is neither 0 nor 1, and the judge applied to those samples by hand."""
    means = separated_means()
    teacher = teacher_with(means)
    draws = draws_for(ClassConditions(0, 1))
    unchanged = OneStepGenerator(teacher_with(means), sigma_init=2.5)
    assert forget_rate(teacher, unchanged, draws, sampled="override") == 0.0
    blended = means.clone()
    blended[0] = blended[1] = 0.5 * (means[0] + means[1])
    ambiguous = OneStepGenerator(teacher_with(blended), sigma_init=2.5)
    conds = draws.conditions
    by_hand = judged_forget(
        teacher, ambiguous(draws.z_forget, conds.override), conds.forget, conds.override, draws
    )
    floor = forget_rate(teacher, ambiguous, draws, sampled="override")
    assert floor == float(by_hand.float().mean())
    assert 0 < floor < 1 and floor == forget_rate(teacher, ambiguous, draws)
    with pytest.raises(ValueError, match="sampled='remain'"):
        forget_rate(teacher, ambiguous, draws, sampled="remain")


def test_remain_drift_is_the_rms_distance_on_fixed_noise() -> None:
    means = separated_means()
    draws = draws_for(ClassConditions(0, 1))
    generator = OneStepGenerator(teacher_with(means), sigma_init=2.5)
    start = remain_samples(generator, draws)
    assert remain_drift(remain_samples(generator, draws), start) == 0.0  # fixed draws
    shifted = OneStepGenerator(teacher_with(means + 0.25), sigma_init=2.5)
    # the remain samples move by (1 − shrink)·0.25 everywhere: shrink = s² / (s² + σ_init²)
    shrink = STD**2 / (STD**2 + 2.5**2)
    assert remain_drift(remain_samples(shifted, draws), start) == pytest.approx(
        0.25 * (1 - shrink), rel=1e-5
    )


def test_the_draws_depend_only_on_the_seed() -> None:
    conditions = ClassConditions(0, 1)
    a, b = draws_for(conditions, seed=3), draws_for(conditions, seed=3)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.z_forget, b.z_forget)
    assert torch.equal(a.conditions.remain, b.conditions.remain)
    assert a.sigmas.tolist() == pytest.approx([0.4, 0.4, 0.8, 0.8, 1.6, 1.6])


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ((0, (1.0,), 1), "num_samples=0"),
        ((4, (), 1), "sigmas=\\[\\]"),
        ((4, (1.0, -1.0), 1), "sigmas=-1.0"),
        ((4, (1.0,), 0), "draws=0"),
    ],
)
def test_bad_judge_settings(settings, message) -> None:
    with pytest.raises(SFDConfigError, match=message):
        check_judge_settings(*settings)
