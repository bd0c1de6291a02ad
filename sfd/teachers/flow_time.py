"""Rectified-flow time and σ-space: the exact maps between them and the flow Euler grid.

Rectified flow interpolates x_t = (1 − t)·x0 + t·ε for t ∈ [0, 1] and trains a velocity
v(x_t, t, c) ≈ ε − x0. Dividing by (1 − t) gives σ-space (docs/method.md §1):

    x_σ = x_t / (1 − t) = x0 + σ·ε,   σ = t / (1 − t),   t = σ / (1 + σ),   x_t = x_σ / (1 + σ).

These functions are those maps, the velocity ↔ x0 pair at fixed (x_t, t), a sampler's static shift,
and the σ-levels of an n-step flow Euler run; the adapters (`sfd.teachers.flow`) and the samplers
(`sfd.core.ddim`) use them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sfd.errors import SFDConfigError


def flow_time(sigma: Tensor) -> Tensor:
    """t = σ / (1 + σ): the flow time of σ-space noise level σ (any shape)."""
    return sigma / (1 + sigma)


def flow_sigma(t: Tensor | float) -> Tensor | float:
    """σ = t / (1 − t): the σ-space noise level of flow time t ∈ [0, 1) (inverse of `flow_time`)."""
    return t / (1 - t)


def check_flow_time(name: str, t: float) -> float:
    """Return `t` if it is a number strictly inside (0, 1), else raise `SFDConfigError`."""
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 < t < 1:
        raise SFDConfigError(f"{name}={t!r} must be a flow time strictly between 0 and 1")
    return float(t)


def x0_from_velocity(velocity: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """x0_hat = x_t − t·v: the clean sample a velocity points to (v = ε − x0).

    Args:
        velocity: the network's output v, (B, C, H, W).
        x_t: the flow-space input (1 − t)·x0 + t·ε, (B, C, H, W).
        t: flow times, broadcastable to x_t, e.g. (B, 1, 1, 1).

    Returns:
        x0_hat, (B, C, H, W).
    """
    return x_t - t * velocity


def velocity_from_x0(x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """v = (x_t − x0) / t: the velocity `x0_from_velocity` maps to `x0` (its exact inverse)."""
    return (x_t - x0) / t


def shifted_time(t: Tensor, shift: float) -> Tensor:
    """The time a flow sampler with static shift s visits instead of t: s·t / (1 + (s − 1)·t).

    diffusers' `FlowMatchEulerDiscreteScheduler` applies it to its step grid (SD3: s = 3); in
    σ-space it is simply σ → s·σ. Resolution-dependent shifting (Flux) picks s = exp(μ).
    """
    return shift * t / (1 + (shift - 1) * t)


def flow_euler_sigmas(num_steps: int, shift: float = 1.0, t_max: float = 1.0 - 1e-4) -> Tensor:
    """σ-levels of an n-step flow Euler run on the grid t_i = 1 − i/n (shifted), then 0.

    The grid is FluxPipeline's default; diffusers' scheduler applies the shift to it as here.

    In σ-space the flow Euler step x_t' = x_t + (t' − t)·v is exactly the DDIM step
    x' = x0_hat + σ'/σ·(x − x0_hat), so `sfd.core.ddim.ddim_trajectory` samples flow teachers
    with these levels. t = 1 is σ = ∞: the first level is capped at `t_max`.

    Args:
        num_steps: number of velocity evaluations n >= 1.
        shift: the sampler's static shift (1: none).
        t_max: the largest flow time used for the first level.

    Returns:
        σ schedule, (n + 1,), decreasing, last entry 0.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise SFDConfigError(f"num_steps={num_steps!r} must be a positive integer")
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise SFDConfigError(f"shift={shift!r} must be a positive number")
    grid = torch.linspace(1.0, 1.0 / num_steps, num_steps, dtype=torch.float64)
    t = shifted_time(grid, float(shift)).clamp(max=t_max)
    return torch.cat([flow_sigma(t), t.new_zeros(1)]).float()
