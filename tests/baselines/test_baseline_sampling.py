"""The one DDIM sampler (`sfd.core.ddim`) as the baselines use it: partial trajectories, pools."""

from __future__ import annotations

import pytest
import torch

from sfd.baselines import sample_pool
from sfd.core.ddim import ddim_sigmas, ddim_trajectory, sample_ddim
from sfd.errors import SFDConfigError
from sfd.teachers import PretrainedVPTeacher


def test_full_and_partial_trajectories(tiny_teacher_dir) -> None:
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    sigmas = ddim_sigmas(teacher.sigma_table, 6)
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 4, 9])
    with torch.no_grad():
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


def test_trajectory_is_differentiable_and_sample_ddim_is_not(tiny_teacher_dir) -> None:
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    sigmas = ddim_sigmas(teacher.sigma_table, 2)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), requires_grad=True)
    labels = torch.tensor([1, 2])
    ddim_trajectory(teacher, z, labels, sigmas).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    assert not sample_ddim(teacher, z, labels, sigmas).requires_grad


def test_pool_and_errors(tiny_teacher_dir) -> None:
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    pool = sample_pool(teacher, [torch.tensor([1, 2]), torch.tensor([3])], 2, torch.Generator())
    assert pool.shape == (3, 1, 8, 8) and torch.isfinite(pool).all()
    with pytest.raises(SFDConfigError, match="ddim_steps"):
        ddim_sigmas(teacher.sigma_table, 0)
    with pytest.raises(SFDConfigError, match="ddim_steps=2.5 must be an integer"):
        ddim_sigmas(teacher.sigma_table, 2.5)
    with pytest.raises(SFDConfigError, match="discrete"):
        ddim_sigmas(None, 5)
    with pytest.raises(SFDConfigError, match="strictly decreasing"):
        sample_ddim(teacher, torch.zeros(1, 1, 8, 8), torch.tensor([0]), torch.tensor([1.0, 2.0]))
