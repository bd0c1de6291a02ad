"""Every pretrained model enters `sfd` here, as a σ-space denoiser D(x, sigma, cond) -> x0_hat."""

from sfd.teachers.base import (
    Denoiser,
    prediction_from_x0,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
    x0_from_prediction,
)
from sfd.teachers.edm import EDMDenoiser
from sfd.teachers.unet import (
    EDMUNetDenoiser,
    PretrainedEDMTeacher,
    PretrainedVPTeacher,
    VPUNetDenoiser,
)

__all__ = [
    "Denoiser",
    "EDMDenoiser",
    "EDMUNetDenoiser",
    "PretrainedEDMTeacher",
    "PretrainedVPTeacher",
    "VPUNetDenoiser",
    "prediction_from_x0",
    "sigma_to_t",
    "sigmas_from_alphas_cumprod",
    "t_to_sigma",
    "x0_from_prediction",
]
