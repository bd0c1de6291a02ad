"""The discrete VP (DDPM) schedule in σ-space, and the base class of every VP adapter (docs/method.md §1).

x_t = sqrt(ā_t)·x0 + sqrt(1 − ā_t)·ε is x = x0 + σ_t·ε scaled by 1/sqrt(1 + σ_t²), with
σ_t = sqrt((1 − ā_t)/ā_t). A VP network therefore sees x/sqrt(1 + σ²) at the continuous timestep t(σ)
(log-σ interpolation of the table), and its ε-, v- or x0-prediction converts back to x0_hat. Pixel
UNets and Stable Diffusion UNets differ only in how the network is called (`VPDenoiser.predict`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from sfd.errors import SFDConfigError
from sfd.teachers.base import Denoiser

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def check_prediction_type(prediction_type: str) -> str:
    """Return `prediction_type` if a VP network can have it, else raise `SFDConfigError`."""
    if prediction_type not in PREDICTION_TYPES:
        raise SFDConfigError(
            f"prediction_type {prediction_type!r} is not supported; allowed: {PREDICTION_TYPES}"
        )
    return prediction_type


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
    """Convert a VP network's output to x0_hat (docs/method.md §1).

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
    check_prediction_type(prediction_type)
    return prediction  # "sample": the network predicts x0 itself


def prediction_from_x0(x0: Tensor, x: Tensor, sigma: Tensor, prediction_type: str) -> Tensor:
    """The network output that `x0_from_prediction` maps to `x0` (its exact inverse)."""
    eps = (x - x0) / sigma
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        # v = sqrt(ā)·ε − sqrt(1−ā)·x0
        sqrt_alpha = vp_input_scale(sigma)
        return sqrt_alpha * eps - sigma * sqrt_alpha * x0
    check_prediction_type(prediction_type)
    return x0  # "sample"


def check_timestep(t_init: Any, length: int) -> None:
    """Refuse a t_init that is no integer timestep of a VP schedule of `length` steps."""
    if isinstance(t_init, bool) or not isinstance(t_init, int) or not 0 <= t_init < length:
        raise SFDConfigError(f"t_init={t_init!r} must be an integer timestep in 0..{length - 1}")


class VPDenoiser(Denoiser):
    """Base of the discrete-VP adapters: the σ table, t(σ) and the denoise body.

    Subclasses call the network in `predict`; everything between σ-space and the network's
    timestep and output parameterisation happens here, once.

    Args:
        scheduler_config: config of the training scheduler (gives ā_t; saved with exports).
        prediction_type: "epsilon", "v_prediction" or "sample".
    """

    def __init__(self, scheduler_config: dict[str, Any], prediction_type: str) -> None:
        super().__init__()
        self.prediction_type = check_prediction_type(prediction_type)
        self.scheduler_config = dict(scheduler_config)
        alphas_cumprod = DDPMScheduler.from_config(self.scheduler_config).alphas_cumprod
        self.register_buffer("sigmas", sigmas_from_alphas_cumprod(alphas_cumprod), persistent=False)

    @classmethod
    def check_module_settings(cls, module: Mapping[str, Any]) -> None:
        """The generator's t_init, an integer timestep (its upper end, the schedule's length, is
        checked once the schedule is known: `sigma_at_time`)."""
        t_init = module.get("t_init")
        if t_init is not None and (isinstance(t_init, bool) or not isinstance(t_init, int)):
            raise SFDConfigError(
                f"t_init={t_init!r} must be an integer timestep of the VP teacher's schedule "
                "(0 up to its length, e.g. 625); a time in (0, 1) is a flow teacher's"
            )

    @property
    def sigma_table(self) -> Tensor:
        return self.sigmas

    def _apply(self, fn: Any, recurse: bool = True) -> VPDenoiser:
        # `.to(dtype)` / `.half()` / true-half precision cast every buffer; in bf16 neighbouring
        # σ_t collide and t(σ) shifts. The table follows device moves and stays float32.
        sigmas = self.sigmas
        super()._apply(fn, recurse)
        self.sigmas = sigmas.to(device=self.sigmas.device)
        return self

    def sigma_at_time(self, t_init: Any) -> float:
        """σ_init = σ_t of the integer timestep t_init (the reference's 440 / 625)."""
        table = self.sigmas
        check_timestep(t_init, len(table))
        return float(table[t_init])

    def predict(self, x_t: Tensor, timestep: Tensor, cond: Any) -> Tensor:
        """The network's raw output for VP input x_t (B, C, H, W) at continuous timesteps (B,)."""
        raise NotImplementedError

    def denoise(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        timestep = sigma_to_t(sigma, self.sigmas)  # (B,)
        sigma = sigma.reshape(-1, 1, 1, 1)
        prediction = self.predict(x * vp_input_scale(sigma), timestep, cond)  # (B, C, H, W)
        return x0_from_prediction(prediction.float(), x.float(), sigma, self.prediction_type)
