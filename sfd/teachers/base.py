"""The σ-space denoiser contract every model in `sfd` is wrapped into (METHOD.md §1).

A denoiser maps a noisy sample x = x0 + σ·ε to an estimate of x0:  D(x, sigma, cond) -> x0_hat.
Losses, the generator and the trainer only ever see this interface; timesteps and alphas_cumprod
stay inside the adapters in this package.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class Denoiser(nn.Module):
    """Base class of all σ-space denoisers D(x, sigma, cond) -> x0_hat.

    Subclasses set `sample_shape` (C, H, W) and `num_classes` (None for text models), implement
    `denoise`, and may implement `null_condition` (classifier-free guidance) and `spec`/`from_spec`
    (export).
    """

    sample_shape: tuple[int, int, int]
    num_classes: int | None = None

    @property
    def sigma_table(self) -> Tensor | None:
        """The discrete noise levels σ_t of the training schedule (increasing in t), or None."""
        return None

    def denoise(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any) -> Tensor:
        """Estimate x0 from x at noise level sigma.

        Args:
            x: noisy samples, (B, C, H, W).
            sigma: noise level per sample, (B,), or a scalar broadcast to the batch.
            cond: the condition batch (class labels (B,) or a text condition).

        Returns:
            x0_hat in float32, (B, C, H, W).
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
        if sigma.ndim == 0:
            sigma = sigma.expand(x.shape[0])
        return self.denoise(x, sigma.reshape(-1), cond).float()

    def null_condition(self, cond: Any) -> Any:
        """The unconditional (or negative-prompt) condition matching `cond`, for guidance."""
        raise ValueError(
            f"{type(self).__name__} has no null condition, so classifier-free guidance and "
            "condition dropout are unavailable; use guidance scale 1.0 and cond_dropout 0.0"
        )

    def drop_condition(self, cond: Any, drop: Tensor) -> Any:
        """Replace the conditions where `drop` (B,) is True by the null condition."""
        null = self.null_condition(cond)
        if isinstance(cond, Tensor):
            return torch.where(drop.reshape(-1, *([1] * (cond.ndim - 1))), null, cond)
        return cond.where(drop, null)

    def guided(self, x: Tensor, sigma: Tensor | float, cond: Any, scale: float) -> Tensor:
        """Classifier-free guided x0_hat = D(x, ∅) + scale·(D(x, c) − D(x, ∅)); scale 1 is plain D."""
        x0_cond = self(x, sigma, cond)
        if scale == 1.0:
            return x0_cond
        x0_null = self(x, sigma, self.null_condition(cond))
        return x0_null + scale * (x0_cond - x0_null)

    def spec(self) -> dict[str, Any]:
        """A JSON-serialisable description that rebuilds this denoiser's architecture (no weights)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be exported")


# --- VP (DDPM) <-> σ-space bridge -------------------------------------------------------------


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """σ_t = sqrt((1 − ā_t) / ā_t) for every discrete timestep t.

    Args:
        alphas_cumprod: ā_t, (T,).

    Returns:
        σ_t, (T,), increasing in t.
    """
    alphas_cumprod = alphas_cumprod.double()
    return ((1 - alphas_cumprod) / alphas_cumprod).sqrt().float()


def sigma_to_t(sigma: Tensor, sigmas: Tensor) -> Tensor:
    """Continuous timestep t for noise level σ, interpolating linearly in log σ between table entries.

    Args:
        sigma: noise levels, any shape.
        sigmas: σ_t table, (T,), increasing.

    Returns:
        t in [0, T − 1], same shape as `sigma`, float32.
    """
    log_sigmas = sigmas.log()
    log_sigma = sigma.float().clamp_min(1e-20).log()
    high = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, len(sigmas) - 1)
    low = high - 1
    frac = (log_sigma - log_sigmas[low]) / (log_sigmas[high] - log_sigmas[low])
    return (low + frac.clamp(0, 1)).float()


def t_to_sigma(t: Tensor, sigmas: Tensor) -> Tensor:
    """Noise level σ at a (possibly fractional) timestep t: the inverse of `sigma_to_t`.

    Args:
        t: timesteps in [0, T − 1], any shape.
        sigmas: σ_t table, (T,), increasing.

    Returns:
        σ, same shape as `t`.
    """
    t = t.float().clamp(0, len(sigmas) - 1)
    low = t.floor().long().clamp(max=len(sigmas) - 2)
    frac = t - low
    log_sigmas = sigmas.log()
    return (torch.lerp(log_sigmas[low], log_sigmas[low + 1], frac)).exp()


def vp_input_scale(sigma: Tensor) -> Tensor:
    """Factor taking σ-space x = x0 + σ·ε to the VP network input x_t = x / sqrt(1 + σ²)."""
    return (1 + sigma**2).rsqrt()


def x0_from_prediction(
    prediction: Tensor, x: Tensor, sigma: Tensor, prediction_type: str
) -> Tensor:
    """Convert a VP network's output to x0_hat (METHOD.md §1).

    Args:
        prediction: network output, (B, C, H, W).
        x: σ-space input x = x0 + σ·ε, (B, C, H, W).
        sigma: noise levels, broadcastable to x, e.g. (B, 1, 1, 1).
        prediction_type: "epsilon", "v_prediction" or "sample".

    Returns:
        x0_hat, (B, C, H, W).
    """
    if prediction_type == "epsilon":
        return x - sigma * prediction
    if prediction_type == "v_prediction":
        # ā = 1/(1+σ²):  ε̂ = sqrt(ā)·v̂ + sqrt(1−ā)·x_t,  x_t = sqrt(ā)·x.
        sqrt_alpha = vp_input_scale(sigma)
        sqrt_one_minus_alpha = sigma * sqrt_alpha
        eps_hat = sqrt_alpha * prediction + sqrt_one_minus_alpha * sqrt_alpha * x
        return x - sigma * eps_hat
    if prediction_type == "sample":
        return prediction
    raise ValueError(
        f"prediction_type {prediction_type!r} is not supported; "
        "allowed: 'epsilon', 'v_prediction', 'sample'"
    )


def prediction_from_x0(x0: Tensor, x: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """The network output that `x0_from_prediction` maps to `x0` (its exact inverse)."""
    eps = (x - x0) / sigma
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        # v = sqrt(ā)·ε − sqrt(1−ā)·x0
        sqrt_alpha = vp_input_scale(sigma)
        return sqrt_alpha * eps - sigma * sqrt_alpha * x0
    if prediction_type == "sample":
        return x0
    raise ValueError(
        f"prediction_type {prediction_type!r} is not supported; "
        "allowed: 'epsilon', 'v_prediction', 'sample'"
    )
