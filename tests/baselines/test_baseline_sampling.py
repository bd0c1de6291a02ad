"""The baselines' DDIM helpers agree with the evaluation sampler (`sfd.eval.ddim`), step for step."""

from __future__ import annotations

import pytest
import torch

from sfd.baselines import ddim_trajectory, sample_pool, trailing_sigmas
from sfd.errors import SFDConfigError
from sfd.eval.ddim import ddim_sigmas, sample_ddim
from sfd.teachers import PretrainedVPTeacher


@pytest.mark.parametrize("steps", [1, 7, 50, 1000])
def test_schedule_is_the_evaluation_schedule(tiny_teacher_dir, steps: int) -> None:
    table = PretrainedVPTeacher(str(tiny_teacher_dir)).sigma_table
    assert torch.equal(trailing_sigmas(table, steps), ddim_sigmas(table, steps))


def test_full_and_partial_trajectories(tiny_teacher_dir) -> None:
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    sigmas = trailing_sigmas(teacher.sigma_table, 6)
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 4, 9])
    full = ddim_trajectory(teacher, z, labels, sigmas)
    torch.testing.assert_close(full, sample_ddim(teacher, z, labels, sigmas), rtol=0, atol=0)
    # Stopping after 2 steps and continuing from there is the same trajectory.
    half = ddim_trajectory(teacher, z, labels, sigmas[:3])
    x = half
    for sigma, sigma_next in zip(sigmas[2:-1], sigmas[3:], strict=True):
        x0 = teacher(x, sigma, labels)
        x = x0 + (sigma_next / sigma) * (x - x0)
    torch.testing.assert_close(x, full, rtol=1e-5, atol=1e-5)
    # No step at all is the starting point.
    start = ddim_trajectory(teacher, z, labels, sigmas[:1])
    torch.testing.assert_close(start, z * (1 + sigmas[0] ** 2).sqrt())


def test_pool_and_errors(tiny_teacher_dir) -> None:
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    pool = sample_pool(teacher, [torch.tensor([1, 2]), torch.tensor([3])], 2, torch.Generator())
    assert pool.shape == (3, 1, 8, 8) and torch.isfinite(pool).all()
    with pytest.raises(SFDConfigError, match="ddim_steps"):
        trailing_sigmas(teacher.sigma_table, 0)
    with pytest.raises(SFDConfigError, match="discrete"):
        trailing_sigmas(None, 5)
