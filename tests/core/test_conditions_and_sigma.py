"""Condition and noise-level samplers: what they draw, their rank slicing, and their validation."""

from __future__ import annotations

import math

import pytest
import torch

from sfd.core.conditions import ClassConditions
from sfd.core.sigma import LogNormalSigma, LogUniformSigma, UniformTimestepSigma
from sfd.errors import SFDConfigError
from sfd.teachers import sigmas_from_alphas_cumprod


def test_fixed_override_per_forget_class() -> None:
    conditions = ClassConditions(forget=[2, 7], override=[3, 4], num_classes=10)
    batch = conditions.sample(4000, torch.Generator().manual_seed(0))
    assert set(batch.remain.tolist()) == set(range(10)) - {2, 7}
    assert set(batch.forget.tolist()) == {2, 7}
    mapping = {2: 3, 7: 4}
    assert all(
        mapping[f] == o for f, o in zip(batch.forget.tolist(), batch.override.tolist(), strict=True)
    )


def test_random_override_is_a_remain_class() -> None:
    conditions = ClassConditions(forget=5, override="random", num_classes=8)
    batch = conditions.sample(4000, torch.Generator().manual_seed(1))
    assert set(batch.override.tolist()) == set(range(8)) - {5}


def test_rank_slices_partition_the_global_batch() -> None:
    conditions = ClassConditions(forget=0, override="random", num_classes=10)
    whole = conditions.sample(8, torch.Generator().manual_seed(3))
    parts = [
        conditions.sample(4, torch.Generator().manual_seed(3), world_size=2, rank=r) for r in (0, 1)
    ]
    for name in ("remain", "forget", "override"):
        joined = torch.cat([getattr(p, name) for p in parts])
        assert torch.equal(joined, getattr(whole, name))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"forget": [], "override": 1}, "forget is empty"),
        ({"forget": [1, 1], "override": 2}, "lists a class twice"),
        ({"forget": [0, 1], "override": [2, 3, 4]}, "one class per forget class"),
        ({"forget": 0, "override": "nearest"}, "'nearest' is not allowed"),
        ({"forget": 0, "override": 1, "num_classes": 1}, "class 1 is outside the label range 0..0"),
        ({"forget": -1, "override": 1, "num_classes": 10}, "class -1 is outside"),
    ],
)
def test_condition_validation(kwargs, message) -> None:
    with pytest.raises(SFDConfigError, match=message):
        ClassConditions(**kwargs)


def test_class_conditions_need_a_class_conditional_teacher() -> None:
    with pytest.raises(SFDConfigError, match="class-conditional teacher"):
        ClassConditions(0, 1).check(None)


def test_uniform_timestep_sigma_draws_table_entries_in_range() -> None:
    betas = torch.linspace(1e-4, 0.02, 1000)
    table = sigmas_from_alphas_cumprod(torch.cumprod(1 - betas, 0))
    sigma = UniformTimestepSigma(38, 712).sample(20_000, torch.Generator().manual_seed(0), table)
    assert sigma.min() >= table[38] and sigma.max() <= table[711]
    assert torch.isin(sigma, table).all()
    assert len(torch.unique(sigma)) == 712 - 38
    with pytest.raises(SFDConfigError, match="discrete schedule"):
        UniformTimestepSigma().check(None)


def test_continuous_sigma_distributions() -> None:
    g = torch.Generator().manual_seed(0)
    log_uniform = LogUniformSigma(0.1, 10).sample(50_000, g, None)
    assert log_uniform.min() >= 0.1 and log_uniform.max() <= 10
    assert log_uniform.log().mean().item() == pytest.approx(0.0, abs=0.03)
    log_normal = LogNormalSigma(-1.2, 1.2, 1e-4, 1e4).sample(50_000, g, None)
    assert log_normal.log().mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_normal.log().std().item() == pytest.approx(1.2, abs=0.03)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LogUniformSigma(1.0, 0.5),
        lambda: LogUniformSigma(0.0, 1.0),
        lambda: LogUniformSigma(0.1, math.inf),
        lambda: LogNormalSigma(sigma_min=5, sigma_max=1),
        lambda: LogNormalSigma(p_std=0),
        lambda: UniformTimestepSigma(-1, 10),
    ],
)
def test_invalid_sigma_ranges(make) -> None:
    with pytest.raises(SFDConfigError):
        make()
