"""Noise-level distributions for the SFD losses (docs/method.md §4: σ ∈ [σ_min, σ_max] ≈ [0.14, 13])."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sfd.errors import SFDConfigError, check_number


class SigmaSampler:
    """Draws one noise level per sample."""

    def sample(self, n: int, generator: torch.Generator, sigma_table: Tensor | None) -> Tensor:
        """Draw σ.

        Args:
            n: number of samples.
            generator: the random stream (its device is the output's device).
            sigma_table: the teacher's discrete σ_t table (T,), or None for continuous teachers.

        Returns:
            σ, (n,), float32.
        """
        raise NotImplementedError

    def check(self, sigma_table: Tensor | None) -> None:
        """Raise `SFDConfigError` if this sampler cannot be used with the given teacher schedule."""


class UniformTimestepSigma(SigmaSampler):
    """σ = σ_t for integer t uniform in [t_min, t_max) of the teacher's discrete schedule.

    The reference uses t ∈ [38, 712) on linear-β CIFAR-10 and t ∈ [20, 980) on Stable Diffusion.
    """

    def __init__(self, t_min: int = 38, t_max: int = 712) -> None:
        for name, value in (("t_min", t_min), ("t_max", t_max)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise SFDConfigError(f"{name}={value!r} must be an integer timestep")
        if not 0 <= t_min < t_max:
            raise SFDConfigError(
                f"timestep range [t_min={t_min}, t_max={t_max}) is empty or negative; "
                "need 0 <= t_min < t_max"
            )
        self.t_min, self.t_max = t_min, t_max

    def check(self, sigma_table: Tensor | None) -> None:
        if sigma_table is None:
            raise SFDConfigError(
                "UniformTimestepSigma needs a teacher with a discrete schedule; use "
                "LogNormalSigma or LogUniformSigma for continuous (EDM) teachers, "
                "LogitNormalTime or UniformTime for flow-matching teachers"
            )
        if self.t_max > len(sigma_table):
            raise SFDConfigError(
                f"t_max={self.t_max} exceeds the teacher's {len(sigma_table)} timesteps"
            )

    def sample(self, n: int, generator: torch.Generator, sigma_table: Tensor | None) -> Tensor:
        self.check(sigma_table)
        t = torch.randint(
            self.t_min, self.t_max, (n,), generator=generator, device=generator.device
        )
        return sigma_table.to(generator.device)[t].float()


def _check_range(sigma_min: float, sigma_max: float) -> None:
    check_number("sigma_min", sigma_min)
    check_number("sigma_max", sigma_max)
    if not 0 < sigma_min < sigma_max or math.isinf(sigma_max):
        raise SFDConfigError(
            f"sigma range [sigma_min={sigma_min}, sigma_max={sigma_max}] is invalid; "
            "need 0 < sigma_min < sigma_max < inf"
        )


class LogUniformSigma(SigmaSampler):
    """log σ uniform in [log σ_min, log σ_max]."""

    def __init__(self, sigma_min: float = 0.137, sigma_max: float = 13.1) -> None:
        _check_range(sigma_min, sigma_max)
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sample(self, n: int, generator: torch.Generator, sigma_table: Tensor | None) -> Tensor:
        u = torch.rand(n, generator=generator, device=generator.device)
        lo, hi = math.log(self.sigma_min), math.log(self.sigma_max)
        return (lo + (hi - lo) * u).exp()


class LogNormalSigma(SigmaSampler):
    """log σ ~ N(p_mean, p_std²) (EDM's training distribution), clamped to [σ_min, σ_max]."""

    def __init__(
        self,
        p_mean: float = -1.2,
        p_std: float = 1.2,
        sigma_min: float = 0.002,
        sigma_max: float = 80.0,
    ) -> None:
        _check_range(sigma_min, sigma_max)
        check_number("p_mean", p_mean)
        check_number("p_std", p_std, low=0, low_open=True)
        self.p_mean, self.p_std = p_mean, p_std
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def sample(self, n: int, generator: torch.Generator, sigma_table: Tensor | None) -> Tensor:
        normal = torch.randn(n, generator=generator, device=generator.device)
        return (self.p_mean + self.p_std * normal).exp().clamp(self.sigma_min, self.sigma_max)


def _check_time_range(t_min: float, t_max: float) -> None:
    check_number("t_min", t_min)
    check_number("t_max", t_max)
    if not 0 < t_min < t_max < 1:
        raise SFDConfigError(
            f"flow-time range [t_min={t_min}, t_max={t_max}] is invalid; need 0 < t_min < t_max < 1"
        )


class LogitNormalTime(SigmaSampler):
    """Flow time t = sigmoid(m + s·n), n ~ N(0, 1), clamped to [t_min, t_max]; σ = t / (1 − t).

    The logit-normal time density flow-matching models (SD3, Flux) are trained with. Since
    logit(t) = log(t / (1 − t)) = log σ, it is exactly log σ ~ N(m, s²): EDM's log-normal in σ.
    """

    def __init__(
        self, mean: float = 0.0, std: float = 1.0, t_min: float = 0.02, t_max: float = 0.98
    ) -> None:
        check_number("mean", mean)
        check_number("std", std, low=0, low_open=True)
        _check_time_range(t_min, t_max)
        self.mean, self.std = mean, std
        self.t_min, self.t_max = t_min, t_max

    def sample(self, n: int, generator: torch.Generator, sigma_table: Tensor | None) -> Tensor:
        normal = torch.randn(n, generator=generator, device=generator.device)
        t = torch.sigmoid(self.mean + self.std * normal).clamp(self.t_min, self.t_max)
        return t / (1 - t)


class UniformTime(SigmaSampler):
    """Flow time t uniform in [t_min, t_max] ⊂ (0, 1); σ = t / (1 − t).

    The flow counterpart of `UniformTimestepSigma`'s timestep ranges (t ∈ [20, 980) of 1000 is
    [0.02, 0.98]).
    """

    def __init__(self, t_min: float = 0.02, t_max: float = 0.98) -> None:
        _check_time_range(t_min, t_max)
        self.t_min, self.t_max = t_min, t_max

    def sample(self, n: int, generator: torch.Generator, sigma_table: Tensor | None) -> Tensor:
        u = torch.rand(n, generator=generator, device=generator.device)
        t = self.t_min + (self.t_max - self.t_min) * u
        return t / (1 - t)
