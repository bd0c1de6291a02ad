"""The teacher's own samples, for baselines that need them: a pool of full DDIM samples.

Data-free SalUn trains on the teacher's samples instead of real images; they come from the one
deterministic DDIM sampler (`sfd.core.ddim`), which ESD also uses for its partial trajectories.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sfd.core.ddim import ddim_sigmas, sample_ddim
from sfd.teachers.base import Denoiser


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
    sigmas = ddim_sigmas(denoiser.sigma_table, num_steps)
    was_training = denoiser.training
    denoiser.eval()
    chunks = []
    for cond in conds:
        z = torch.randn(
            (len(cond), *denoiser.sample_shape), generator=generator, device=generator.device
        )
        chunks.append(sample_ddim(denoiser, z, cond, sigmas, guidance))
    denoiser.train(was_training)
    return torch.cat(chunks)
