"""The σ-space denoiser contract, run against every adapter in `sfd.teachers`.

Each case builds a small adapter in code, a condition batch, and an *independent* x0 oracle
written in the network's own terms (DDPM's x_t / ε / v formulas, EDM's preconditioning, the exact
Gaussian posterior mean). An adapter added later gets a case here and passes the same checks:
shapes and dtype, σ broadcasting, the x0 identity, guidance and its null condition, the spec()
round trip and determinism in eval mode.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from conftest import tiny_unet
from diffusers import DDPMScheduler
from gaussian import gaussian_teacher
from sd_fixtures import EMBED_DIM, tiny_sd_unet
from sdxl_fixtures import HIDDEN, HIDDEN_2, POOLED, tiny_sdxl_unet
from torch import Tensor

from sfd.core.conditions import TextCondition
from sfd.teachers import (
    DENOISER_KINDS,
    Denoiser,
    EDMUNetDenoiser,
    FluxDenoiser,
    SD3Denoiser,
    StableDiffusionDenoiser,
    StableDiffusionXLDenoiser,
    VPUNetDenoiser,
    denoiser_from_spec,
)

BATCH = 3


def linear_betas(prediction_type: str) -> DDPMScheduler:
    return DDPMScheduler(beta_start=1e-4, beta_end=0.02, prediction_type=prediction_type)


def scaled_linear(prediction_type: str) -> dict[str, Any]:
    return dict(
        DDPMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            prediction_type=prediction_type,
        ).config
    )


def vp_reference(raw: Callable[[Tensor, Tensor], Tensor]):
    """x0 from the DDPM forward process x_t = sqrt(ā)·x0 + sqrt(1 − ā)·ε at integer timesteps."""

    def reference(denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        t = torch.searchsorted(denoiser.sigma_table, sigma)  # σ are table entries: exact t
        alpha_bar = (1 / (1 + denoiser.sigma_table[t] ** 2)).view(-1, 1, 1, 1)
        x_t = x * alpha_bar.sqrt()  # σ-space x = x_t / sqrt(ā)
        out = raw(x_t, t.float(), cond)
        if denoiser.prediction_type == "epsilon":
            return (x_t - (1 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()
        if denoiser.prediction_type == "v_prediction":
            return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * out
        return out

    return reference


def edm_reference(denoiser: EDMUNetDenoiser, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
    """Karras et al. 2022, eq. 7 with Table 1's EDM preconditioning."""
    s, sd = sigma.view(-1, 1, 1, 1), denoiser.sigma_data
    c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / (s**2 + sd**2).sqrt()
    raw = denoiser.unet(x / (s**2 + sd**2).sqrt(), sigma.log() / 4, class_labels=cond).sample
    return c_skip * x + c_out * raw


def gaussian_reference(denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Tensor) -> Tensor:
    """The exact posterior mean E[x0 | x] of N(μ_k, s²·I) data."""
    net = denoiser.net
    mu, variance = net.means[cond], (2 * net.log_std).exp()
    return mu + variance / (variance + sigma.view(-1, 1, 1, 1) ** 2) * (x - mu)


def class_labels(num_classes: int) -> Callable[[torch.Generator], Tensor]:
    return lambda rng: torch.randint(num_classes, (BATCH,), generator=rng)


def text_condition(rng: torch.Generator) -> TextCondition:
    prompt, negative = torch.randn(2, BATCH, 7, EMBED_DIM, generator=rng)
    return TextCondition(prompt, negative)


def sdxl_condition(rng: torch.Generator) -> TextCondition:
    prompt, negative = torch.randn(2, BATCH, 7, HIDDEN + HIDDEN_2, generator=rng)
    pooled, negative_pooled = torch.randn(2, BATCH, POOLED, generator=rng)
    return TextCondition(prompt, negative, pooled_embeds=pooled, negative_pooled=negative_pooled)


SDXL_TIME_IDS = (24, 20, 2, 1, 16, 16)


@dataclass
class Case:
    """One adapter under the contract."""

    make: Callable[[], Denoiser]
    cond: Callable[[torch.Generator], Any]
    reference: Callable[[Denoiser, Tensor, Tensor, Any], Tensor]
    has_null: bool
    exportable: bool


def vp_case(prediction_type: str, null_class: int | None) -> Case:
    embeds = 10 + (null_class is not None)
    return Case(
        make=lambda: VPUNetDenoiser(
            tiny_unet(num_class_embeds=embeds),
            linear_betas(prediction_type),
            prediction_type,
            null_class=null_class,
        ),
        cond=class_labels(10),
        reference=lambda d, x, s, c: vp_reference(
            lambda x_t, t, labels: d.unet(x_t, t, class_labels=labels).sample
        )(d, x, s, c),
        has_null=null_class is not None,
        exportable=True,
    )


def sd_case(prediction_type: str) -> Case:
    return Case(
        make=lambda: StableDiffusionDenoiser(
            tiny_sd_unet(), scaled_linear(prediction_type), prediction_type
        ),
        cond=text_condition,
        reference=lambda d, x, s, c: vp_reference(
            lambda x_t, t, text: d.unet(x_t, t, encoder_hidden_states=text.prompt_embeds).sample
        )(d, x, s, c),
        has_null=True,
        exportable=True,
    )


def sdxl_case(prediction_type: str) -> Case:
    def raw(denoiser: Denoiser, x_t: Tensor, t: Tensor, text: TextCondition) -> Tensor:
        time_ids = torch.tensor([SDXL_TIME_IDS], dtype=torch.float32).expand(len(x_t), -1)
        return denoiser.unet(
            x_t,
            t,
            encoder_hidden_states=text.prompt_embeds,
            added_cond_kwargs={"text_embeds": text.pooled_embeds, "time_ids": time_ids},
        ).sample

    return Case(
        make=lambda: StableDiffusionXLDenoiser(
            tiny_sdxl_unet(), scaled_linear(prediction_type), prediction_type, SDXL_TIME_IDS
        ),
        cond=sdxl_condition,
        reference=lambda d, x, s, c: vp_reference(lambda x_t, t, text: raw(d, x_t, t, text))(
            d, x, s, c
        ),
        has_null=True,
        exportable=True,
    )


def flow_reference(call: Callable[[Denoiser, Tensor, Tensor, Any], Tensor]):
    """x0 from the rectified flow x_t = (1 − t)·x0 + t·ε: x_t = x·(1 − t), x0 = x_t − t·v."""

    def reference(denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        t = sigma / (1 + sigma)
        x_t = x * (1 - t).view(-1, 1, 1, 1)
        return x_t - t.view(-1, 1, 1, 1) * call(denoiser, x_t, t, cond)

    return reference


def packed_text_condition(rng: torch.Generator) -> TextCondition:
    """Sequence (7 rows) and pooled (row 0, 32 wide) embeddings of width 32, as `pack_pooled` packs."""
    prompt, negative = torch.randn(2, BATCH, 8, 32, generator=rng)
    return TextCondition(prompt, negative)


def sd3_velocity(d: Denoiser, x_t: Tensor, t: Tensor, cond: TextCondition) -> Tensor:
    embeds = cond.prompt_embeds
    return d.transformer(
        hidden_states=x_t,
        encoder_hidden_states=embeds[:, 1:],
        pooled_projections=embeds[:, 0],
        timestep=1000 * t,
    ).sample


def flux_velocity(d: Denoiser, x_t: Tensor, t: Tensor, cond: TextCondition) -> Tensor:
    from diffusers import FluxPipeline

    b, c, h, w = x_t.shape
    embeds = cond.prompt_embeds
    tokens = d.transformer(
        hidden_states=FluxPipeline._pack_latents(x_t, b, c, h, w),
        timestep=t,
        guidance=None,
        pooled_projections=embeds[:, 0],
        encoder_hidden_states=embeds[:, 1:],
        txt_ids=torch.zeros(embeds.shape[1] - 1, 3),
        img_ids=FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, "cpu", torch.float32),
    ).sample
    return FluxPipeline._unpack_latents(tokens, h, w, 1)


def flow_case(family: str) -> Case:
    from flow_fixtures import LATENT_SIZE, tiny_flux_transformer, tiny_sd3_transformer

    scheduler = {"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": 3.0}
    if family == "sd3":
        make = lambda: SD3Denoiser(tiny_sd3_transformer(), scheduler)  # noqa: E731
    else:  # schnell-like: no guidance embedding, so classifier-free guidance applies
        make = lambda: FluxDenoiser(  # noqa: E731
            tiny_flux_transformer(guidance_embeds=False), scheduler, sample_size=LATENT_SIZE
        )
    return Case(
        make=make,
        cond=packed_text_condition,
        reference=flow_reference(sd3_velocity if family == "sd3" else flux_velocity),
        has_null=True,
        exportable=True,
    )


CASES = {
    "vp_unet-epsilon": vp_case("epsilon", None),
    "vp_unet-v_prediction-null": vp_case("v_prediction", 10),
    "vp_unet-sample": vp_case("sample", None),
    "edm_unet-null": Case(
        make=lambda: EDMUNetDenoiser(tiny_unet(num_class_embeds=11), 0.5, null_class=10),
        cond=class_labels(10),
        reference=edm_reference,
        has_null=True,
        exportable=True,
    ),
    "edm_network-gaussian": Case(
        make=lambda: gaussian_teacher(num_classes=4, shape=(1, 2, 2)),
        cond=class_labels(4),
        reference=gaussian_reference,
        has_null=False,
        exportable=False,
    ),
    "stable_diffusion-epsilon": sd_case("epsilon"),
    "stable_diffusion-v_prediction": sd_case("v_prediction"),
    "sdxl-epsilon": sdxl_case("epsilon"),
    "sdxl-v_prediction": sdxl_case("v_prediction"),
    "sd3-velocity": flow_case("sd3"),
    "flux-velocity": flow_case("flux"),
}


@pytest.fixture(params=sorted(CASES))
def case(request: pytest.FixtureRequest) -> tuple[Case, Denoiser]:
    spec = CASES[request.param]
    return spec, spec.make().eval()


def draw(denoiser: Denoiser, case: Case, seed: int = 0) -> tuple[Tensor, Tensor, Any]:
    """x (B, C, H, W), σ (B,) at table entries for discrete schedules, and a condition batch."""
    rng = torch.Generator().manual_seed(seed)
    if denoiser.sigma_table is not None:
        sigma = denoiser.sigma_table[torch.tensor([20, 440, 900])]
    else:
        sigma = torch.tensor([0.05, 1.0, 20.0])
    x = torch.randn(BATCH, *denoiser.sample_shape, generator=rng) * (1 + sigma.view(-1, 1, 1, 1))
    return x, sigma, case.cond(rng)


def close(a: Tensor, b: Tensor) -> None:
    """Equal up to float reassociation (batching, kernel choice), far tighter than any bug."""
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_shape_dtype_and_determinism(case) -> None:
    spec, denoiser = case
    x, sigma, cond = draw(denoiser, spec)
    x0 = denoiser(x, sigma, cond)
    assert x0.shape == x.shape and x0.dtype == torch.float32
    assert torch.isfinite(x0).all()
    assert torch.equal(x0, denoiser(x, sigma, cond))  # eval mode: no randomness
    table = denoiser.sigma_table
    if table is not None:
        assert table.dtype == torch.float32 and table.ndim == 1
        assert bool((table[1:] > table[:-1]).all())


@torch.no_grad()
def test_x0_matches_the_independent_oracle(case) -> None:
    spec, denoiser = case
    x, sigma, cond = draw(denoiser, spec)
    close(denoiser(x, sigma, cond), spec.reference(denoiser, x, sigma, cond))


@torch.no_grad()
def test_sigma_broadcasts_from_a_scalar(case) -> None:
    spec, denoiser = case
    x, sigma, cond = draw(denoiser, spec)
    level = float(sigma[1])
    by_scalar = denoiser(x, level, cond)
    assert torch.equal(by_scalar, denoiser(x, torch.tensor(level), cond))
    close(by_scalar, denoiser(x, torch.full((BATCH,), level), cond))


@torch.no_grad()
def test_guidance_and_the_null_condition(case) -> None:
    spec, denoiser = case
    x, sigma, cond = draw(denoiser, spec)
    plain = denoiser(x, sigma, cond)
    assert torch.equal(denoiser.guided(x, sigma, cond, 1.0), plain)
    if not spec.has_null:
        with pytest.raises(ValueError, match="no null condition"):
            denoiser.guided(x, sigma, cond, 2.0)
        return
    null = denoiser.null_condition(cond)
    unconditional = denoiser(x, sigma, null)
    close(denoiser.guided(x, sigma, cond, 3.0), unconditional + 3.0 * (plain - unconditional))
    none = denoiser.drop_condition(cond, torch.zeros(BATCH, dtype=torch.bool))
    every = denoiser.drop_condition(cond, torch.ones(BATCH, dtype=torch.bool))
    assert torch.equal(denoiser(x, sigma, none), plain)
    assert torch.equal(denoiser(x, sigma, every), unconditional)


@torch.no_grad()
def test_spec_round_trip_rebuilds_the_same_denoiser(case) -> None:
    spec, denoiser = case
    if not spec.exportable:
        with pytest.raises(NotImplementedError):
            denoiser.spec()
        return
    description = denoiser.spec()
    json.dumps(description)  # plain data: it goes into checkpoints and exports
    assert DENOISER_KINDS[description["kind"]] is type(denoiser)
    as_saved = json.loads(json.dumps(description))  # tuples become lists, as in a file
    rebuilt = denoiser_from_spec(as_saved).eval()
    rebuilt.load_state_dict(denoiser.state_dict(), strict=True)
    assert json.loads(json.dumps(rebuilt.spec())) == as_saved
    assert rebuilt.sample_shape == denoiser.sample_shape
    assert rebuilt.num_classes == denoiser.num_classes
    x, sigma, cond = draw(denoiser, spec)
    assert torch.equal(rebuilt(x, sigma, cond), denoiser(x, sigma, cond))
