"""Analytic teachers: class-conditional Gaussians N(μ_k, s²·I) with their exact denoiser (EDM form)
or their exact velocity (rectified-flow form)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sfd.teachers import EDMDenoiser, FlowDenoiser


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


class EmbeddedGaussianNet(GaussianClassNet):
    """`GaussianClassNet` whose means are its class-embedding table (K, C·H·W): a condition's
    `class_embeds` stand in for its label's mean where `active` (`ClassEmbeddingCondition`)."""

    def forward(self, x: Tensor, sigma: Tensor, cond) -> Tensor:
        labels = getattr(cond, "labels", cond)
        mu = self.means[labels]
        embeds = getattr(cond, "class_embeds", None)
        if embeds is not None:
            active = cond.active.view(-1, 1, 1, 1)
            mu = torch.where(active, embeds.view_as(mu).to(mu.dtype), mu)
        variance = (2 * self.log_std).exp()
        shrink = variance / (variance + sigma.view(-1, 1, 1, 1) ** 2)
        return mu + shrink * (x - mu)


class EmbeddedGaussian(EDMDenoiser):
    """The Gaussian denoiser over `EmbeddedGaussianNet`, with its class-embedding table."""

    def __init__(self, means: Tensor, std: float) -> None:
        super().__init__(EmbeddedGaussianNet(means, std), tuple(means.shape[1:]), len(means))

    def class_embedding_table(self) -> Tensor:
        return self.net.means.flatten(1)


def gaussian_teacher(num_classes: int = 4, shape=(1, 2, 2), std: float = 0.5, seed: int = 0):
    """An `EDMDenoiser` over `GaussianClassNet` with well-separated random class means."""
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(num_classes, *shape, generator=g)
    return EDMDenoiser(GaussianClassNet(means, std), shape, num_classes=num_classes)


class GaussianClassVelocity(nn.Module):
    """The exact velocity E[ε − x0 | x_t, k] of N(μ_k, s²·I) data under x_t = (1 − t)·x0 + t·ε."""

    def __init__(self, means: Tensor, std: float) -> None:
        super().__init__()
        self.means, self.std = means, std  # (K, C, H, W)

    def forward(self, x_t: Tensor, t: Tensor, labels: Tensor) -> Tensor:
        mu = self.means[labels]  # (B, C, H, W)
        t = t.view(-1, 1, 1, 1)
        a, s2 = 1 - t, self.std**2
        centred = x_t - a * mu  # x_t − E[x_t | k]
        denominator = a**2 * s2 + t**2
        x0 = mu + a * s2 / denominator * centred
        eps = t / denominator * centred
        return eps - x0


class GaussianClassFlow(FlowDenoiser):
    """A flow teacher of class-conditional Gaussians: `GaussianClassVelocity` through the flow
    adapter base (σ ↔ t, x0 = x_t − t·v), conditioned on class labels (B,)."""

    def __init__(self, means: Tensor, std: float) -> None:
        super().__init__()
        self.net = GaussianClassVelocity(means, std)
        self.sample_shape = tuple(means.shape[1:])
        self.num_classes = len(means)

    def predict(self, x_t: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        return self.net(x_t, t, cond)
