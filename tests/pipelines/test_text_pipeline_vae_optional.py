"""OneStepTextPipeline with and without a VAE: export, reload bit-identically, decode as the VAE."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers.image_processor import VaeImageProcessor
from text_fixtures import save_tiny_bert, save_tiny_text_teacher

from sfd.core.generator import OneStepGenerator
from sfd.pipelines.io import load_pipeline, save_generator
from sfd.pipelines.one_step_text import OneStepTextPipeline
from sfd.teachers import StableDiffusionTeacher


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-pipelines")
    bert = save_tiny_bert(root / "bert")
    return {
        "pixels": save_tiny_text_teacher(root / "pixels", bert, vae=False),
        "latents": save_tiny_text_teacher(root / "latents", bert, vae=True),
    }


@pytest.mark.parametrize("space", ["pixels", "latents"])
def test_export_and_reload_bit_identical(teachers, space, tmp_path, single_thread):
    teacher = StableDiffusionTeacher(str(teachers[space]))
    generator = OneStepGenerator(teacher, sigma_init=2.5)
    out = save_generator(generator, tmp_path / "export")
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "OneStepTextPipeline"
    assert (index["vae"][1] is None) == (space == "pixels")
    assert (out / "vae").is_dir() == (space == "latents")
    first = OneStepTextPipeline.from_generator(generator)
    reloaded = load_pipeline(out)
    for name in ("unet", "text_encoder") + (("vae",) if space == "latents" else ()):
        ours, theirs = getattr(first, name).state_dict(), getattr(reloaded, name).state_dict()
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    z = torch.randn(2, *teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    prompts = ["the number 7", "a handwritten digit one"]
    images = [
        p(prompts, latents=z, output_type="pt", guidance_scale=2.0).images
        for p in (first, reloaded)
    ]
    assert torch.equal(images[0], images[1])
    latents = reloaded(prompts, latents=z, output_type="latent").images
    if space == "pixels":
        assert images[0].shape == (2, 1, 8, 8)
        plain = reloaded(prompts, latents=z, output_type="pt").images
        # no VAE: x0 is the image, in "pt" as diffusers' image processor returns it ([0, 1])
        assert torch.equal(plain, VaeImageProcessor().postprocess(latents, output_type="pt"))
        assert torch.equal(reloaded.model_images(latents), latents)
    else:
        assert images[0].shape == (2, 1, 16, 16)
        vae = reloaded.vae
        with torch.no_grad():  # the oracle: diffusers' own decode of latents / scaling_factor
            expected = vae.decode(latents / vae.config.scaling_factor).sample
        torch.testing.assert_close(
            reloaded(prompts, latents=z, output_type="pt").images,
            VaeImageProcessor().postprocess(expected, output_type="pt"),
        )
