"""The σ-space bridge against diffusers' own DDPM arithmetic, and the adapters against exact denoisers."""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_teacher, tiny_unet
from diffusers import DDPMScheduler

from sfd.errors import SFDConfigError
from sfd.teachers import (
    EDMUNetDenoiser,
    PretrainedVPTeacher,
    VPUNetDenoiser,
    prediction_from_x0,
    sigma_to_t,
    sigmas_from_alphas_cumprod,
    t_to_sigma,
    x0_from_prediction,
)

PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]


def linear_scheduler(prediction_type: str = "epsilon") -> DDPMScheduler:
    return DDPMScheduler(
        beta_start=1e-4, beta_end=0.02, prediction_type=prediction_type, clip_sample=False
    )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_prediction_x0_round_trip(prediction_type: str) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    sigma = torch.logspace(-2, 1.5, 6, dtype=torch.float64).view(-1, 1, 1, 1)
    x = x0 + sigma * torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64)
    prediction = prediction_from_x0(x0, x, sigma, prediction_type)
    torch.testing.assert_close(x0_from_prediction(prediction, x, sigma, prediction_type), x0)


def test_unknown_prediction_type() -> None:
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="'flow'"):
        x0_from_prediction(x, x, torch.ones(1, 1, 1, 1), "flow")


def test_sigma_t_round_trip_and_reference_points() -> None:
    sigmas = sigmas_from_alphas_cumprod(linear_scheduler().alphas_cumprod)
    t = torch.linspace(0, 999, 2001)
    torch.testing.assert_close(sigma_to_t(t_to_sigma(t, sigmas), sigmas), t, atol=1e-3, rtol=0)
    # docs/method.md §2/§5: σ_init = 2.5 is t ≈ 440; the loss range t ∈ [38, 712) is σ ≈ 0.137 … 13.1.
    assert abs(sigma_to_t(torch.tensor(2.5), sigmas).item() - 440) < 2
    assert sigmas[38].item() == pytest.approx(0.137, abs=0.002)
    assert sigmas[712].item() == pytest.approx(13.1, abs=0.1)
    integer_t = torch.arange(1000).float()
    torch.testing.assert_close(sigma_to_t(sigmas, sigmas), integer_t, atol=1e-3, rtol=0)


def test_sigma_space_noising_matches_ddpm_add_noise() -> None:
    scheduler = linear_scheduler()
    sigmas = sigmas_from_alphas_cumprod(scheduler.alphas_cumprod)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(5, 1, 8, 8, generator=g), torch.randn(5, 1, 8, 8, generator=g)
    t = torch.tensor([0, 38, 440, 712, 999])
    sigma = sigmas[t].view(-1, 1, 1, 1)
    x_t_sigma_space = (x0 + sigma * eps) / (1 + sigma**2).sqrt()
    torch.testing.assert_close(
        x_t_sigma_space, scheduler.add_noise(x0, eps, t), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_vp_denoiser_matches_ddpm_scheduler_x0(prediction_type: str) -> None:
    """At integer timesteps the adapter's x0_hat equals DDPMScheduler.step's pred_original_sample."""
    scheduler = linear_scheduler(prediction_type)
    unet = tiny_unet(num_class_embeds=10).eval()
    denoiser = VPUNetDenoiser(unet, scheduler, prediction_type)
    g = torch.Generator().manual_seed(2)
    labels = torch.tensor([3])
    for t in (38, 440, 712):
        x0, eps = torch.randn(1, 1, 8, 8, generator=g), torch.randn(1, 1, 8, 8, generator=g)
        x_t = scheduler.add_noise(x0, eps, torch.tensor([t]))
        sigma = denoiser.sigmas[t]
        with torch.no_grad():
            output = unet(x_t, torch.tensor([t]), class_labels=labels).sample
            expected = scheduler.step(output, t, x_t).pred_original_sample
            x0_hat = denoiser(x_t * (1 + sigma**2).sqrt(), sigma, labels)
        torch.testing.assert_close(x0_hat, expected, atol=2e-4, rtol=1e-4)


def test_edm_preconditioning_is_exact_for_gaussian_data() -> None:
    """For data ~ N(0, σ_data²) the exact denoiser is c_skip·x, i.e. a raw network that outputs 0."""
    unet = tiny_unet(num_class_embeds=None)
    torch.nn.init.zeros_(unet.conv_out.weight)
    torch.nn.init.zeros_(unet.conv_out.bias)
    denoiser = EDMUNetDenoiser(unet, sigma_data=0.5)
    x = torch.randn(4, 1, 8, 8)
    sigma = torch.tensor([0.01, 0.5, 2.0, 40.0])
    exact = 0.25 / (sigma**2 + 0.25)
    torch.testing.assert_close(denoiser(x, sigma, None), exact.view(-1, 1, 1, 1) * x)


def test_pretrained_teacher_loads_folder(tmp_path) -> None:
    path = save_tiny_teacher(tmp_path / "t", prediction_type="v_prediction")
    teacher = PretrainedVPTeacher(str(path))
    assert teacher.prediction_type == "v_prediction"
    assert teacher.num_classes == 10 and teacher.sample_shape == (1, 8, 8)
    assert not teacher.unet.training
    x0 = teacher(torch.randn(2, 1, 8, 8), torch.tensor([0.5, 3.0]), torch.tensor([1, 2]))
    assert x0.shape == (2, 1, 8, 8) and x0.dtype == torch.float32


def test_pretrained_teacher_null_class_and_guidance(tmp_path) -> None:
    path = save_tiny_teacher(tmp_path / "t", num_class_embeds=11)
    (path / "sfd.json").write_text('{"num_classes": 10, "null_class": 10}')
    teacher = PretrainedVPTeacher(str(path))
    assert teacher.num_classes == 10 and teacher.null_class == 10
    x, sigma, labels = torch.randn(2, 1, 8, 8), torch.tensor([1.0, 1.0]), torch.tensor([4, 5])
    with torch.no_grad():
        cond, null = teacher(x, sigma, labels), teacher(x, sigma, torch.tensor([10, 10]))
        # Tolerance for float reassociation (batched vs separate calls), amplified by the scale.
        torch.testing.assert_close(
            teacher.guided(x, sigma, labels, 3.0), null + 3 * (cond - null), rtol=1e-3, atol=1e-3
        )
    dropped = teacher.drop_condition(labels, torch.tensor([True, False]))
    assert dropped.tolist() == [10, 5]


def test_guidance_without_null_class_is_an_error(tiny_teacher_dir) -> None:
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    with pytest.raises(ValueError, match="no null condition"):
        teacher.guided(torch.zeros(1, 1, 8, 8), 1.0, torch.tensor([0]), 2.0)


def test_missing_teacher_path_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SFDConfigError, match="does-not-exist"):
        PretrainedVPTeacher(str(tmp_path / "does-not-exist"))
