"""Every pretrained model enters `sfd` here, as a σ-space denoiser D(x, sigma, cond) -> x0_hat.

Families: pixel VP / EDM UNets (`unet`), Stable Diffusion 1.x / 2.x (`stable_diffusion`), and the
flow-matching transformers SD3 / SD3.5 (`sd3`) and Flux.1 (`flux`) on the flow base (`flow`).
A new kind of teacher is a `Denoiser` subclass in this package with a `kind` tag, `spec()` and
`from_spec()`, plus one entry in `DENOISER_KINDS` (and, to export it, one entry in
`sfd.pipelines.io.PIPELINE_FOR_KIND`).
"""

from typing import Any

from sfd.errors import SFDConfigError
from sfd.teachers.base import Denoiser
from sfd.teachers.edm import EDMDenoiser
from sfd.teachers.flow import FlowDenoiser, FlowTransformerDenoiser
from sfd.teachers.flow_time import flow_sigma, flow_time
from sfd.teachers.flux import FluxDenoiser, FluxTeacher
from sfd.teachers.sd3 import SD3Denoiser, SD3Teacher
from sfd.teachers.sdxl import StableDiffusionXLDenoiser, StableDiffusionXLTeacher
from sfd.teachers.stable_diffusion import (
    StableDiffusionDenoiser,
    StableDiffusionLoRAFakeScore,
    StableDiffusionTeacher,
)
from sfd.teachers.unet import (
    EDMUNetDenoiser,
    PretrainedEDMTeacher,
    PretrainedVPTeacher,
    VPUNetDenoiser,
)
from sfd.teachers.vp import (
    PREDICTION_TYPES,
    VPDenoiser,
    check_prediction_type,
    prediction_from_x0,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
    vp_input_scale,
    x0_from_prediction,
)

# The `kind` tag written by `Denoiser.spec()` -> the class whose `from_spec` rebuilds it.
DENOISER_KINDS: dict[str, type[Denoiser]] = {
    cls.kind: cls
    for cls in (
        VPUNetDenoiser,
        EDMUNetDenoiser,
        StableDiffusionDenoiser,
        StableDiffusionXLDenoiser,
        SD3Denoiser,
        FluxDenoiser,
    )
}


def denoiser_from_spec(spec: dict[str, Any]) -> Denoiser:
    """Rebuild a denoiser's architecture (random weights) from its `spec()`."""
    kind = spec.get("kind")
    if kind not in DENOISER_KINDS:
        raise SFDConfigError(f"unknown denoiser kind {kind!r}; known: {sorted(DENOISER_KINDS)}")
    return DENOISER_KINDS[kind].from_spec(spec)


__all__ = [
    "DENOISER_KINDS",
    "PREDICTION_TYPES",
    "Denoiser",
    "EDMDenoiser",
    "EDMUNetDenoiser",
    "FlowDenoiser",
    "FlowTransformerDenoiser",
    "FluxDenoiser",
    "FluxTeacher",
    "PretrainedEDMTeacher",
    "PretrainedVPTeacher",
    "SD3Denoiser",
    "SD3Teacher",
    "StableDiffusionDenoiser",
    "StableDiffusionLoRAFakeScore",
    "StableDiffusionTeacher",
    "StableDiffusionXLDenoiser",
    "StableDiffusionXLTeacher",
    "VPDenoiser",
    "VPUNetDenoiser",
    "check_prediction_type",
    "denoiser_from_spec",
    "flow_sigma",
    "flow_time",
    "prediction_from_x0",
    "sigma_to_t",
    "sigmas_from_alphas_cumprod",
    "t_to_sigma",
    "vp_input_scale",
    "x0_from_prediction",
]
