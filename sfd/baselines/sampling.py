"""The teacher's own samples, for baselines that need them: partial DDIM trajectories and sample pools.

ESD takes the noisy input of its loss from a DDIM trajectory of the model being fine-tuned, stopped
at a random step; data-free SalUn trains on the teacher's samples instead of real images. Both use
the deterministic DDIM update in σ-space (docs/method.md §1):

    x_next = x0_hat + σ_next · (x − x0_hat) / σ,   x_start = sqrt(1 + σ_max²)·z

with the trailing timestep spacing of diffusers' `DDIMScheduler`. (This layer may not import
`sfd.eval`, whose full-trajectory sampler is the same update; a test checks the two agree.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sfd.errors import SFDConfigError
from sfd.teachers.base import Denoiser


def trailing_sigmas(sigma_table: Tensor | None, num_steps: int) -> Tensor:
    """The noise levels of an n-step DDIM run with trailing spacing, ending at σ = 0.

    Args:
        sigma_table: the denoiser's σ_t table, (T,), increasing in t (None: no discrete schedule).
        num_steps: denoiser evaluations n of a full trajectory, 1 <= n <= T.

    Returns:
        σ schedule, (n + 1,), decreasing, last entry 0.
    """
    if sigma_table is None:
        raise SFDConfigError("sampling a trajectory needs a denoiser with a discrete (VP) schedule")
    total = len(sigma_table)
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= total:
        raise SFDConfigError(f"ddim_steps={num_steps!r} must be an integer in 1..{total}")
    step = total / num_steps
    timesteps = (torch.arange(total, 0, -step, dtype=torch.float64).round() - 1).long()
    sigmas = sigma_table[timesteps.to(sigma_table.device)].float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


@torch.no_grad()
def ddim_trajectory(
    denoiser: Denoiser, z: Tensor, cond: Any, sigmas: Tensor, guidance: float = 1.0
) -> Tensor:
    """Run deterministic DDIM from noise z through `sigmas` and return where it stops.

    Args:
        denoiser: D(x, σ, cond) -> x0_hat.
        z: standard normal noise, (B, C, H, W).
        cond: the condition batch.
        sigmas: decreasing noise levels, (k + 1,): k denoiser evaluations, from sigmas[0] to
            sigmas[-1] (0 for a full trajectory; a partial one stops at a noisy level).
        guidance: classifier-free guidance scale of every step (1: none).

    Returns:
        x at noise level sigmas[-1] in σ-space (x0 + σ·ε), (B, C, H, W), float32.
    """
    sigmas = sigmas.to(z.device, torch.float32)
    x = z.float() * (1 + sigmas[0] ** 2).sqrt()  # VP x_T ~ N(0, I) in σ-space
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        x0_hat = denoiser.guided(x, sigma, cond, guidance)  # (B, C, H, W)
        x = x0_hat + (sigma_next / sigma) * (x - x0_hat)
    return x


@torch.no_grad()
def sample_pool(
    denoiser: Denoiser,
    conds: list[Any],
    num_steps: int,
    generator: torch.Generator,
    guidance: float = 1.0,
) -> Tensor:
    """Full DDIM samples of `denoiser`, one batch per condition batch in `conds`.

    Args:
        denoiser: the model to sample (the frozen teacher).
        conds: condition batches, each of some size b_i.
        num_steps: DDIM steps.
        generator: the seeded stream of the noise (its device is where sampling runs).
        guidance: classifier-free guidance scale.

    Returns:
        samples x0, (Σ b_i, C, H, W), float32, on the generator's device.
    """
    sigmas = trailing_sigmas(denoiser.sigma_table, num_steps)
    was_training = denoiser.training
    denoiser.eval()
    chunks = []
    for cond in conds:
        z = torch.randn(
            (len(cond), *denoiser.sample_shape), generator=generator, device=generator.device
        )
        chunks.append(ddim_trajectory(denoiser, z, cond, sigmas, guidance))
    denoiser.train(was_training)
    return torch.cat(chunks)
