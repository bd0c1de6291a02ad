"""The one-step generator G_θ(z, c) = D_θ(σ_init·z, σ_init, c) (METHOD.md §2)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sfd.errors import SFDConfigError
from sfd.teachers.base import Denoiser


class OneStepGenerator(nn.Module):
    """Maps noise z ~ N(0, I) to a sample in one denoiser evaluation.

    Args:
        denoiser: D_θ, usually a copy of the teacher (or an already distilled generator).
        sigma_init: the fixed noise level σ_init the generator denoises from (2.5 in the reference).
    """

    def __init__(self, denoiser: Denoiser, sigma_init: float = 2.5) -> None:
        super().__init__()
        if not sigma_init > 0:
            raise SFDConfigError(f"sigma_init={sigma_init} must be positive")
        self.denoiser = denoiser
        self.sigma_init = float(sigma_init)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        return self.denoiser.sample_shape

    def forward(self, z: Tensor, cond: Any) -> Tensor:
        """Generate samples.

        Args:
            z: standard normal noise, (B, C, H, W).
            cond: condition batch for the denoiser (e.g. class labels (B,)).

        Returns:
            x_g, (B, C, H, W), float32.
        """
        return self.denoiser(self.sigma_init * z, self.sigma_init, cond)

    @torch.no_grad()
    def sample(self, cond: Any, batch_size: int, generator: torch.Generator) -> Tensor:
        """Draw z from `generator` (on its device) and generate `batch_size` samples."""
        z = torch.randn(
            (batch_size, *self.sample_shape), generator=generator, device=generator.device
        )
        return self(z, cond)
