"""The call of sfd's one-step text-to-image pipelines: prompts -> condition -> one evaluation -> images.

Shared by the Stable Diffusion pipeline (`OneStepTextPipeline`) and the flow pipelines
(`sfd.pipelines.one_step_flow`), which provide `generator` (the σ-space one-step generator over
their network), `encode(prompts, negative_prompts)` (a `TextCondition`) and `decode_latents`.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ImagePipelineOutput
from diffusers.image_processor import VaeImageProcessor
from torch import Tensor

from sfd.errors import SFDConfigError
from sfd.images import to_unit_numpy


def check_negative_prompt(negative_prompt: Any, guidance_scale: float) -> None:
    """Refuse a negative prompt at classifier-free guidance scale 1, where the guided output is
    the conditional branch alone and the negative prompt never acts (`sfd sample` asks before the
    generator loads)."""
    if negative_prompt is not None and guidance_scale == 1.0:
        raise SFDConfigError(
            "negative_prompt has no effect at guidance_scale 1.0; "
            "give a guidance_scale != 1 or no negative prompt"
        )


class OneStepTextSampling:
    """`__call__` of a one-step text-to-image pipeline (a mixin before the diffusers class)."""

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Generate `num_images_per_prompt` images per prompt in one UNet evaluation each.

        Args:
            prompt: one prompt or a list of P prompts.
            negative_prompt: replaces the empty prompt as guidance null condition (one, or one
                per prompt); only meaningful with guidance_scale != 1.
            num_images_per_prompt: images per prompt (B = P · this).
            guidance_scale: classifier-free guidance scale; 1 (default) evaluates the distilled
                generator as trained, in one evaluation.
            generator: random stream for z (ignored when `latents` is given).
            latents: the noise z ~ N(0, I) itself, (B, C, h, w).
            output_type: "pil", "np" (B, H, W, 3 in [0, 1]), "pt" (B, 3, H, W in [0, 1], as
                the stock pipelines return it) or "latent" (the x0 latents).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.

        Returns:
            the images, prompt-major (all images of prompt 0 first).
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            raise SFDConfigError("no prompt given")
        if num_images_per_prompt < 1:
            raise SFDConfigError(f"num_images_per_prompt={num_images_per_prompt} must be >= 1")
        check_negative_prompt(negative_prompt, guidance_scale)
        negatives = [negative_prompt or ""] * len(prompts)
        if isinstance(negative_prompt, list):
            if len(negative_prompt) != len(prompts):
                raise SFDConfigError(
                    f"{len(negative_prompt)} negative prompts for {len(prompts)} prompts"
                )
            negatives = list(negative_prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
        device = self.device
        cond = self.encode(prompts, negatives).to(device)
        one_step = self.generator
        if latents is None:
            latents = torch.randn(
                (len(prompts), *one_step.sample_shape),
                generator=generator,
                device=generator.device if generator is not None else device,
            )
        z = latents.to(device=device, dtype=torch.float32)
        sigma = one_step.sigma_init
        x = one_step.denoiser.generator_input(z, sigma)
        x0 = one_step.denoiser.guided(x, sigma, cond, guidance_scale)  # (B, C, h, w)
        if output_type == "latent":
            output: Any = x0
        else:
            images = self.model_images(x0)
            if output_type == "pt":  # diffusers' meaning: the image processor's [0, 1]
                output = VaeImageProcessor.denormalize(images)
            else:
                array = to_unit_numpy(images)
                output = array if output_type == "np" else self.numpy_to_pil(array)
        return ImagePipelineOutput(images=output) if return_dict else (output,)

    def model_images(self, x0: Tensor) -> Tensor:
        """The images of `output_type="latent"`'s x0 in model space, [-1, 1] (B, C, H, W) float32:
        VAE-decoded, or x0 itself for a pixel-space generator (no VAE). sfd's own evaluation
        saves these (`output_type="pt"` is diffusers' [0, 1])."""
        return x0.float() if getattr(self, "vae", None) is None else self.decode_latents(x0)
