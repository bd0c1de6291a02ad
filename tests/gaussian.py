"""An analytic teacher: class-conditional Gaussians N(μ_k, s²·I) with their exact denoiser."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sfd.teachers import EDMDenoiser


class GaussianClassNet(nn.Module):
    """D(x, σ, k) = μ_k + s²/(s² + σ²)·(x − μ_k): the exact posterior mean for x = x0 + σ·ε."""

    def __init__(self, means: Tensor, std: float) -> None:
        super().__init__()
        self.means = nn.Parameter(means.clone())  # (K, C, H, W)
        self.log_std = nn.Parameter(torch.tensor(math.log(std)))

    def forward(self, x: Tensor, sigma: Tensor, labels: Tensor) -> Tensor:
        mu = self.means[labels]
        variance = (2 * self.log_std).exp()
        shrink = variance / (variance + sigma.view(-1, 1, 1, 1) ** 2)
        return mu + shrink * (x - mu)


def gaussian_teacher(num_classes: int = 4, shape=(1, 2, 2), std: float = 0.5, seed: int = 0):
    """An `EDMDenoiser` over `GaussianClassNet` with well-separated random class means."""
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(num_classes, *shape, generator=g)
    return EDMDenoiser(GaussianClassNet(means, std), shape, num_classes=num_classes)
