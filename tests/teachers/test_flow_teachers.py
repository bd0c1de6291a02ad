"""Flow-matching teachers (SD3, Flux) against oracles: the Gaussian optimal velocity, the stock
transformers' own call conventions, and the flow identities (σ = t/(1 − t), x0 = x_t − t·v)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FluxPipeline
from flow_fixtures import LATENT_SIZE
from gaussian import GaussianClassFlow
from torch import Tensor

from sfd.core.conditions import TextCondition
from sfd.core.generator import OneStepGenerator
from sfd.core.sigma import LogitNormalTime, UniformTime
from sfd.errors import SFDConfigError
from sfd.teachers import (
    FluxDenoiser,
    FluxTeacher,
    SD3Denoiser,
    SD3Teacher,
    StableDiffusionTeacher,
    denoiser_from_spec,
)
from sfd.teachers.flow import pack_pooled, unpack_pooled
from sfd.teachers.flow_time import (
    flow_euler_sigmas,
    flow_sigma,
    flow_time,
    velocity_from_x0,
    x0_from_velocity,
)
from sfd.teachers.flux import image_ids, pack_latents, unpack_latents


def test_gaussian_flow_denoiser_is_the_exact_posterior_mean() -> None:
    torch.manual_seed(0)
    mean, std = torch.randn(2, 3, 3), 0.7
    denoiser = GaussianClassFlow(mean.unsqueeze(0), std)
    x0, eps = mean + std * torch.randn(5, 2, 3, 3), torch.randn(5, 2, 3, 3)
    sigma = torch.tensor([0.05, 0.4, 1.0, 3.0, 30.0])
    x = x0 + sigma.view(-1, 1, 1, 1) * eps
    shrink = (std**2 / (std**2 + sigma**2)).view(-1, 1, 1, 1)
    expected = mean + shrink * (x - mean)  # E[x0 | x0 + σ·ε], independent of the flow form
    torch.testing.assert_close(
        denoiser(x, sigma, torch.zeros(5, dtype=torch.long)), expected, rtol=1e-5, atol=1e-5
    )


def test_flow_identities_are_exact_inverses() -> None:
    t = torch.tensor([0.01, 0.3, 0.5, 0.97])
    torch.testing.assert_close(flow_time(flow_sigma(t)), t)
    x_t, x0 = torch.randn(4, 2, 2, 2), torch.randn(4, 2, 2, 2)
    tb = t.view(-1, 1, 1, 1)
    torch.testing.assert_close(x0_from_velocity(velocity_from_x0(x0, x_t, tb), x_t, tb), x0)
    pooled, sequence = torch.randn(3, 5), torch.randn(3, 4, 8)
    back_sequence, back_pooled = unpack_pooled(pack_pooled(sequence, pooled), 5)
    assert torch.equal(back_sequence, sequence) and torch.equal(back_pooled, pooled)
    with pytest.raises(SFDConfigError, match="do not fit"):
        pack_pooled(sequence, torch.randn(3, 9))


def test_flux_packing_and_ids_equal_the_stock_pipeline() -> None:
    z = torch.randn(2, 4, 8, 6)
    packed = FluxPipeline._pack_latents(z, 2, 4, 8, 6)
    assert torch.equal(pack_latents(z), packed)
    assert torch.equal(unpack_latents(packed, 8, 6), z)
    stock = FluxPipeline._prepare_latent_image_ids(2, 4, 3, "cpu", torch.float32)
    assert torch.equal(image_ids(8, 6, torch.device("cpu"), torch.float32), stock)


def test_logit_normal_time_is_log_normal_sigma_and_clamped() -> None:
    sampler = LogitNormalTime(mean=0.3, std=1.2, t_min=0.05, t_max=0.95)
    sigma = sampler.sample(4000, torch.Generator().manual_seed(0), None)
    t = flow_time(sigma)
    assert float(t.min()) >= 0.05 - 1e-6 and float(t.max()) <= 0.95 + 1e-6
    inside = (t > 0.06) & (t < 0.94)
    log_sigma = sigma[inside].log()  # logit(t) = log σ: the unclamped part is N(0.3, 1.2²)
    assert abs(float(torch.logit(t[inside]).mean() - log_sigma.mean())) < 1e-4
    assert abs(float(sigma.log().median()) - 0.3) < 0.1
    uniform = flow_time(UniformTime(0.2, 0.4).sample(2000, torch.Generator().manual_seed(1), None))
    assert 0.2 - 1e-6 <= float(uniform.min()) and float(uniform.max()) <= 0.4 + 1e-6
    for bad in ({"t_min": 0.0}, {"t_max": 1.0}, {"t_min": 0.6, "t_max": 0.5}):
        with pytest.raises(SFDConfigError, match="flow-time range"):
            UniformTime(**{"t_min": 0.1, "t_max": 0.9, **bad})
    with pytest.raises(SFDConfigError, match="std"):
        LogitNormalTime(std=0.0)


def test_flow_euler_schedule_is_the_stock_shifted_grid() -> None:
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(sigmas=[1.0, 0.75, 0.5, 0.25])  # FluxPipeline's default grid
    sigmas = flow_euler_sigmas(4, shift=3.0, t_max=1.0 - 1e-4)
    stock_t = scheduler.sigmas[1:-1].double()  # the first (t = 1, σ = ∞) is capped
    torch.testing.assert_close(flow_time(sigmas[1:-1].double()), stock_t, rtol=1e-6, atol=1e-6)
    assert sigmas[-1] == 0 and math.isclose(float(flow_time(sigmas[0])), 1 - 1e-4, rel_tol=1e-5)


def _condition(teacher, prompts: list[str]) -> TextCondition:
    embeds = teacher.encode_prompts([*prompts, ""])
    return TextCondition(embeds[:-1], embeds[-1:].expand(len(prompts), -1, -1), tuple(prompts))


def _sd3_reference(teacher: SD3Denoiser, x: Tensor, sigma: Tensor, cond: TextCondition) -> Tensor:
    """x_t = x/(1 + σ), t = σ/(1 + σ), the stock call (timestep 1000·t), x0 = x_t − t·v."""
    t = sigma / (1 + sigma)
    x_t = x / (1 + sigma.view(-1, 1, 1, 1))
    pooled_dim = teacher.transformer.config.pooled_projection_dim
    v = teacher.transformer(
        hidden_states=x_t,
        encoder_hidden_states=cond.prompt_embeds[:, 1:],
        pooled_projections=cond.prompt_embeds[:, 0, :pooled_dim],
        timestep=t * 1000,
    ).sample
    return x_t - t.view(-1, 1, 1, 1) * v


def test_sd3_teacher_keeps_the_contract(flow_dirs) -> None:
    teacher = SD3Teacher(str(flow_dirs["sd3"]))
    assert teacher.sample_shape == (4, LATENT_SIZE, LATENT_SIZE) and teacher.sigma_table is None
    cond = _condition(teacher, ["a photo of a cat", "a dog"])
    x, sigma = torch.randn(2, *teacher.sample_shape), torch.tensor([0.3, 4.0])
    with torch.no_grad():
        x0 = teacher(x, sigma, cond)
        torch.testing.assert_close(x0, _sd3_reference(teacher, x, sigma, cond))
        # guidance in one batch equals the two halves
        guided = teacher.guided(x, sigma, cond, 4.5)
        null = teacher(x, sigma, cond.null())
        torch.testing.assert_close(guided, null + 4.5 * (x0 - null), rtol=1e-5, atol=1e-5)
        rebuilt = denoiser_from_spec(teacher.spec())
        rebuilt.load_state_dict(teacher.state_dict())
        assert torch.equal(rebuilt(x, sigma, cond), x0)


def test_flux_teacher_takes_guidance_as_an_input(flow_dirs) -> None:
    teacher = FluxTeacher(str(flow_dirs["flux"]), sample_size=LATENT_SIZE, max_sequence_length=16)
    assert teacher.guidance == 3.5 and teacher.sample_shape == (4, LATENT_SIZE, LATENT_SIZE)
    cond = _condition(teacher, ["a photo of a cat"])
    x, sigma = torch.randn(1, *teacher.sample_shape), torch.tensor([1.5])
    t = sigma / (1 + sigma)
    x_t = x / (1 + sigma)
    with torch.no_grad():
        v = teacher.transformer(  # the stock FluxPipeline call
            hidden_states=FluxPipeline._pack_latents(x_t, 1, 4, LATENT_SIZE, LATENT_SIZE),
            timestep=t,
            guidance=torch.full((1,), 3.5),
            pooled_projections=cond.prompt_embeds[:, 0, :32],
            encoder_hidden_states=cond.prompt_embeds[:, 1:],
            txt_ids=torch.zeros(16, 3),
            img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32),
        ).sample
        expected = x_t - t * unpack_latents(v, LATENT_SIZE, LATENT_SIZE)
        torch.testing.assert_close(teacher(x, sigma, cond), expected)
        other = FluxDenoiser(teacher.transformer, teacher.scheduler_config, guidance=1.0)
        other.sample_shape = teacher.sample_shape
        assert not torch.allclose(other(x, sigma, cond), expected)  # the input matters
    with pytest.raises(SFDConfigError, match="guidance-distilled"):
        teacher.check_guidance_scales({"teacher_guidance": 4.5, "fake_eval_guidance": 1.0})
    with pytest.raises(SFDConfigError, match="guidance-distilled"):
        teacher.guided(x, sigma, cond, 2.0)
    with pytest.raises(SFDConfigError, match="no guidance embedding"):
        FluxTeacher(str(flow_dirs["flux_schnell"]), guidance=3.5)


def test_one_step_flow_generator_is_one_euler_step(flow_dirs) -> None:
    teacher = SD3Teacher(str(flow_dirs["sd3"]))
    generator = OneStepGenerator(teacher, t_init=0.97)
    assert math.isclose(generator.sigma_init, 0.97 / 0.03, rel_tol=1e-12)
    cond = _condition(teacher, ["a photo of a dog"])
    z = torch.randn(1, *teacher.sample_shape)
    pooled_dim = teacher.transformer.config.pooled_projection_dim
    with torch.no_grad():
        v = teacher.transformer(
            hidden_states=z,
            encoder_hidden_states=cond.prompt_embeds[:, 1:],
            pooled_projections=cond.prompt_embeds[:, 0, :pooled_dim],
            timestep=torch.tensor([970.0]),
        ).sample
        torch.testing.assert_close(generator(z, cond), z - 0.97 * v, rtol=1e-5, atol=1e-5)
    for bad in (0, 1.0, 1.5, -0.1):
        with pytest.raises(SFDConfigError, match="strictly between 0 and 1"):
            OneStepGenerator(teacher, t_init=bad)


def test_flow_teachers_refuse_other_families_in_one_line(flow_dirs, sd_dirs) -> None:
    with pytest.raises(SFDConfigError, match="holds a 'FluxPipeline' pipeline; SD3Teacher") as e:
        SD3Teacher(str(flow_dirs["flux"]))
    assert "\n" not in str(e.value)
    with pytest.raises(SFDConfigError, match="holds a 'StableDiffusionPipeline'"):
        FluxTeacher(str(sd_dirs["epsilon"]))
    with pytest.raises(SFDConfigError, match="'FluxPipeline' pipeline"):
        StableDiffusionTeacher(str(flow_dirs["flux"]))


@pytest.mark.parametrize("family", [SD3Denoiser, FluxDenoiser], ids=["sd3", "flux"])
def test_a_flow_teacher_built_from_modules_is_checked_without_a_folder(family) -> None:
    """A teacher given its transformer (no `pretrained_model_name_or_path`) has no folder to read
    before loading; its generator's flow time is still checked."""
    family.check_before_loading({"transformer": {"class_path": "x"}}, {"t_init": 0.97})
    with pytest.raises(SFDConfigError, match="t_init=1.0 must be a flow time"):
        family.check_before_loading({"transformer": {"class_path": "x"}}, {"t_init": 1.0})
