"""The Stable Diffusion adapter: real CLIP tokenizer, the DDPM x0 formula, negative-prompt guidance."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from sd_fixtures import NEGATIVE

from sfd.core.conditions import TextCondition
from sfd.errors import SFDConfigError
from sfd.teachers.stable_diffusion import StableDiffusionTeacher

pytestmark = pytest.mark.usefixtures("single_thread")


def test_tokenizer_is_the_real_clip_vocabulary(sd_teacher) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(sd_teacher.pipeline, subfolder="tokenizer")
    assert len(tokenizer) == 49408
    # CLIP's published token ids: <|startoftext|> a photo of a cat <|endoftext|>
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoiser_matches_the_ddpm_x0_formula(sd_dirs, prediction_type) -> None:
    teacher = StableDiffusionTeacher(str(sd_dirs[prediction_type]))
    assert teacher.prediction_type == prediction_type
    alphas = DDPMScheduler.from_pretrained(sd_dirs[prediction_type], subfolder="scheduler")
    alpha_bar = alphas.alphas_cumprod[torch.tensor([20, 625])].view(-1, 1, 1, 1)
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    embeds = torch.randn(2, 77, 32)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps  # DDPM forward process
    unet = UNet2DConditionModel.from_pretrained(sd_dirs[prediction_type], subfolder="unet")
    out = unet(x_t, torch.tensor([20, 625]), encoder_hidden_states=embeds).sample
    if prediction_type == "epsilon":
        expected = (x_t - (1 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()
    else:
        expected = alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * out
    sigma = ((1 - alpha_bar) / alpha_bar).sqrt().view(-1)
    with torch.no_grad():
        x0_hat = teacher(x_t / alpha_bar.sqrt(), sigma, TextCondition(embeds, embeds))
    torch.testing.assert_close(x0_hat, expected.detach(), rtol=1e-4, atol=1e-4)


def test_guidance_uses_the_negative_prompt_as_null(sd_teacher) -> None:
    torch.manual_seed(1)
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 3.0])
    prompt, negative = sd_teacher.encode_prompts(["a cat", "a dog", NEGATIVE])[[0, 1, 2, 2]].split(
        2
    )
    cond = TextCondition(prompt, negative)
    with torch.no_grad():
        guided = sd_teacher.guided(x, sigma, cond, 4.5)
        d_cond = sd_teacher(x, sigma, TextCondition(prompt, prompt))
        d_null = sd_teacher(x, sigma, TextCondition(negative, negative))
    # One batched UNet call (2B) against two separate ones: float results depend on the batch
    # and the kernel the CPU picks, and the guidance scale amplifies that (~1e-5 · 10); a wrong
    # null condition is off by O(0.1).
    torch.testing.assert_close(guided, d_null + 4.5 * (d_cond - d_null), rtol=1e-3, atol=1e-3)
    dropped = sd_teacher.drop_condition(cond, torch.tensor([True, False]))
    assert torch.equal(dropped.prompt_embeds[0], negative[0])
    assert torch.equal(dropped.prompt_embeds[1], prompt[1])


def test_missing_pipeline_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SFDConfigError, match="cannot load the scheduler config"):
        StableDiffusionTeacher(str(tmp_path / "nowhere"))
    with pytest.raises(SFDConfigError, match="attention='flash'"):
        StableDiffusionTeacher(str(tmp_path / "nowhere"), attention="flash")
