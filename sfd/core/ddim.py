"""Deterministic DDIM sampling as a pure function of a σ-space denoiser.

In σ-space (x = x0 + σ·ε) the η = 0 DDIM update of a VP model is the Euler step of the
probability-flow ODE in σ:

    x_next = x0_hat + σ_next · (x − x0_hat) / σ

and the VP starting point x_T ~ N(0, I) is x = sqrt(1 + σ_T²)·z. Driving the same network, this
reproduces diffusers' `DDIMScheduler` (η = 0) step for step (tests/eval/test_evaluation.py).
For a flow-matching model the same update is the flow Euler step and the start is x_t = z, i.e.
x = (1 + σ)·z: each denoiser says where its sampler starts (`Denoiser.sampler_start`), and
`sampler_sigmas` picks the levels (DDIM's trailing timesteps, or the flow Euler grid).

Evaluation samples full trajectories with it (`sample_ddim`); the soft-prompt attack
differentiates through a short one, and ESD stops a trajectory at a random step
(`ddim_trajectory`); SalUn samples its pool of teacher images with it.

Why not `DDIMScheduler` itself: it is not simpler here and not exact. It steps VP samples at
integer timesteps, so each step would convert x_t to σ-space for the denoiser and back, and it
needs an ā table, which σ-space (EDM) denoisers do not have; and its arithmetic in VP
coordinates agrees with this loop to float rounding, not bit for bit (the test above compares
them at 1e-4). The σ-space loop is the shorter and the more general of the two.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from sfd.errors import SFDConfigError
from sfd.teachers.base import Denoiser
from sfd.teachers.flow import FlowDenoiser
from sfd.teachers.flow_time import flow_euler_sigmas


def ddim_sigmas(sigma_table: Tensor | None, num_steps: int) -> Tensor:
    """The noise levels of an n-step DDIM run with "trailing" timestep spacing, ending at σ = 0.

    Timesteps are t_i = round(T − i·T/n) − 1 for i = 0..n−1 (so the first is T − 1), as diffusers'
    `DDIMScheduler(timestep_spacing="trailing")`; the last step lands on clean data (σ = 0).

    Args:
        sigma_table: the denoiser's σ_t table, (T,), increasing in t (None: no discrete schedule,
            which DDIM cannot sample).
        num_steps: number of denoiser evaluations n, 1 <= n <= T.

    Returns:
        σ schedule, (n + 1,), decreasing, last entry 0.
    """
    if sigma_table is None:
        raise SFDConfigError("DDIM sampling needs a teacher with a discrete (VP) noise schedule")
    total = len(sigma_table)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= total:
        raise SFDConfigError(f"ddim_steps={num_steps!r} must be an integer in 1..{total}")
    step = total / num_steps
    timesteps = (torch.arange(total, 0, -step, dtype=torch.float64).round() - 1).long()
    sigmas = sigma_table[timesteps.to(sigma_table.device)].float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def sampler_sigmas(denoiser: Denoiser, num_steps: int) -> Tensor:
    """The σ levels of the model's own n-step deterministic sampler.

    A flow-matching model: the flow Euler grid t_i = 1 − i/n under its scheduler's static shift
    (`sfd.teachers.flow_time.flow_euler_sigmas`, FluxPipeline's and SD3's grid); a VP model: DDIM
    with trailing spacing (`ddim_sigmas`).
    """
    if isinstance(denoiser, FlowDenoiser):
        return flow_euler_sigmas(num_steps, shift=denoiser.sampler_shift)
    return ddim_sigmas(denoiser.sigma_table, num_steps)


def ddim_trajectory(
    denoiser: Denoiser,
    z: Tensor,
    cond: Any,
    sigmas: Tensor,
    guidance: float = 1.0,
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """Run deterministic DDIM from noise z through `sigmas` and return where it stops.

    Differentiable: gradients flow when the caller has them enabled (the soft-prompt attack);
    samplers that need none call it under `torch.no_grad()`.

    Args:
        denoiser: the σ-space denoiser D(x, sigma, cond) -> x0_hat.
        z: standard normal noise, (B, C, H, W).
        cond: the condition batch (e.g. class labels (B,)).
        sigmas: decreasing noise levels, (k + 1,): k denoiser evaluations, from sigmas[0] to
            sigmas[-1] (0 for a full trajectory; a partial one stops at a noisy level).
        guidance: classifier-free guidance scale of every step (1: none).
        on_step: called after each denoiser evaluation (progress of long samplings).

    Returns:
        x at noise level sigmas[-1] in σ-space (x0 + σ·ε), (B, C, H, W), float32.
    """
    sigmas = sigmas.to(z.device, torch.float32)
    x = denoiser.sampler_start(z.float(), sigmas[0])  # VP: x_T = z; flow: x_t = z
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x0_hat = denoiser.guided(x, sigma, cond, guidance)  # (B, C, H, W)
        x = x0_hat + (sigma_next / sigma) * (x - x0_hat)
        if on_step is not None:
            on_step()
    return x


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    z: Tensor,
    cond: Any,
    sigmas: Tensor,
    guidance: float = 1.0,
    *,
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """Run deterministic DDIM (η = 0) from noise z through the full σ schedule `sigmas`.

    Args:
        denoiser: the σ-space denoiser D(x, sigma, cond) -> x0_hat.
        z: standard normal noise, (B, C, H, W).
        cond: condition batch (e.g. class labels (B,)).
        sigmas: decreasing noise levels, (n + 1,), from `ddim_sigmas`; n denoiser evaluations.
        guidance: classifier-free guidance scale of every step (1: none).
        on_step: called after each denoiser evaluation (progress of long samplings).

    Returns:
        samples x0, (B, C, H, W), float32.
    """
    sigmas = sigmas.to(z.device, torch.float32)
    if sigmas.ndim != 1 or len(sigmas) < 2 or bool((sigmas[1:] >= sigmas[:-1]).any()):
        raise SFDConfigError("sigmas must be a strictly decreasing 1-D schedule of >= 2 levels")
    return ddim_trajectory(denoiser, z, cond, sigmas, guidance, on_step)
