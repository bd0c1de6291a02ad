"""Text-to-image models under evaluation: a σ-space denoiser with its text encoder and decoder.

`TextToImage` is what the concept metrics and the soft-prompt attack see: prompts are encoded by
the model's own tokenizer and text encoder (`PromptEncoder`), z is denoised by a one-step
generator or by the teacher under DDIM, and latents are decoded by the VAE (pixel models decode
by identity). Every step is differentiable when called with gradients enabled, so the attack can
optimise through it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sfd.core.conditions import TextCondition
from sfd.core.ddim import ddim_trajectory, sampler_sigmas
from sfd.core.generator import OneStepGenerator
from sfd.teachers.base import Denoiser
from sfd.teachers.flow import FlowDenoiser, FlowTransformerDenoiser
from sfd.teachers.stable_diffusion import encode_with


class PromptEncoder:
    """A model's tokenizer and frozen text encoder, with a cache of encoded prompts.

    Args:
        tokenizer: the pipeline's tokenizer.
        text_encoder: the pipeline's text encoder.
    """

    def __init__(self, tokenizer: Any, text_encoder: nn.Module) -> None:
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder.requires_grad_(False).eval()
        self._cache: dict[str, Tensor] = {}

    def encode(self, prompts: list[str]) -> Tensor:
        """Hidden states of prompts, (N, L, D), float32 on the CPU (each prompt encoded once)."""
        missing = [p for p in dict.fromkeys(prompts) if p not in self._cache]
        if missing:
            for prompt, embeds in zip(missing, self.encode_new(missing), strict=True):
                self._cache[prompt] = embeds.float().cpu()
        return torch.stack([self._cache[p] for p in prompts])

    def encode_new(self, prompts: list[str]) -> Tensor:
        """Encode prompts without the cache: the masked last hidden states (Stable Diffusion)."""
        return encode_with(self.tokenizer, self.text_encoder, prompts)

    def condition(self, prompts: list[str], negative_prompt: str = "") -> TextCondition:
        """Prompts against one negative prompt (default the empty prompt) as a `TextCondition`."""
        embeds = self.encode([*prompts, negative_prompt])
        negative = embeds[-1].expand_as(embeds[:-1])  # (B, L, D)
        return TextCondition(embeds[:-1], negative, tuple(prompts))


class FlowPromptEncoder(PromptEncoder):
    """A flow pipeline's prompt encoding: the stock pipeline's `encode_prompt` via its family's
    denoiser (`encode_with_pipeline`: packed sequence + pooled embeddings).

    `tokenizer` / `text_encoder` are the family's sequence encoder (SD3's T5 slot, Flux's T5),
    the one the soft-prompt attack appends learned tokens to.

    Args:
        pipeline: a stock flow pipeline object holding the text encoders (no transformer needed).
        denoiser: the family's denoiser (its `max_sequence_length` and encoding convention).
    """

    def __init__(self, pipeline: Any, denoiser: FlowTransformerDenoiser) -> None:
        tokenizer_name, encoder_name = denoiser.sequence_encoder
        super().__init__(getattr(pipeline, tokenizer_name), getattr(pipeline, encoder_name))
        self.pipeline = pipeline
        self.denoiser = denoiser

    @torch.no_grad()
    def encode_new(self, prompts: list[str]) -> Tensor:
        return self.denoiser.encode_with_pipeline(self.pipeline, prompts)


@dataclass
class TextToImage:
    """A text-to-image model: prompts -> images in [-1, 1].

    Attributes:
        name: what it is, for the protocol ("one-step generator", "DDIM 25 steps").
        nfe: UNet evaluations per image (a guided evaluation counts once).
        latent_shape: (c, h, w) of the noise z.
        guidance_scale: classifier-free guidance scale (1: none).
        denoise: (z (B, c, h, w), condition) -> x0 latents; differentiable.
        decode: latents -> images (B, C, H, W) in [-1, 1]; differentiable.
        encoder: the model's prompt encoder.
        network: the denoiser that is fine-tuned when the model is (the revival test), or None.
        rebuild: network -> the same model around another denoiser (a fine-tuned copy).
        sigma_init: a one-step generator's noise level; None for a multi-step sampler.
        encode_images: images in [-1, 1] -> the latents the network denoises (identity in
            pixel space).
    """

    name: str
    nfe: int
    latent_shape: tuple[int, int, int]
    guidance_scale: float
    denoise: Callable[[Tensor, TextCondition], Tensor]
    decode: Callable[[Tensor], Tensor]
    encoder: PromptEncoder
    network: Denoiser | None = None
    rebuild: Callable[[Denoiser], TextToImage] | None = None
    sigma_init: float | None = None
    encode_images: Callable[[Tensor], Tensor] = lambda images: images

    def images(self, z: Tensor, cond: TextCondition) -> Tensor:
        """Generate images in [-1, 1] (B, C, H, W), float32."""
        return self.decode(self.denoise(z, cond)).float()


def vae_decoder(vae: nn.Module | None) -> Callable[[Tensor], Tensor]:
    """Latents -> images through a diffusers `AutoencoderKL` (its scaling and shift factors), or
    identity."""
    if vae is None:
        return lambda x0: x0
    vae.requires_grad_(False).eval()
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # SD3 / Flux VAEs: latents shifted

    def decode(x0: Tensor) -> Tensor:
        return vae.decode((x0 / scaling + shift).to(vae.dtype)).sample.float()

    return decode


def vae_encoder(vae: nn.Module | None) -> Callable[[Tensor], Tensor]:
    """Images in [-1, 1] -> scaled latents (posterior means) through a VAE, or identity."""
    if vae is None:
        return lambda images: images
    scaling = vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None) or 0.0  # SD3 / Flux VAEs

    @torch.no_grad()
    def encode(images: Tensor) -> Tensor:
        return (vae.encode(images.to(vae.dtype)).latent_dist.mean.float() - shift) * scaling

    return encode


def one_step_text_model(
    generator: OneStepGenerator,
    encoder: PromptEncoder,
    decode: Callable[[Tensor], Tensor],
    guidance_scale: float = 1.0,
    name: str = "one-step generator",
    encode_images: Callable[[Tensor], Tensor] | None = None,
) -> TextToImage:
    """x0 = D_θ(x(z), σ_init, c) (guided if `guidance_scale` != 1): one UNet evaluation, x(z) the
    denoiser's `generator_input` (σ_init·z; (1 + σ_init)·z for flow models)."""
    generator.requires_grad_(False).eval()
    denoiser, sigma = generator.denoiser, generator.sigma_init
    encode = encode_images or vae_encoder(None)

    def denoise(z: Tensor, cond: TextCondition) -> Tensor:  # the generator's own input map
        return denoiser.guided(denoiser.generator_input(z, sigma), sigma, cond, guidance_scale)

    def rebuild(network: Denoiser) -> TextToImage:
        return one_step_text_model(
            OneStepGenerator(network, sigma), encoder, decode, guidance_scale, name, encode
        )

    return TextToImage(
        f"{name} (sigma_init={sigma:g}, guidance {guidance_scale:g})",
        1,
        generator.sample_shape,
        guidance_scale,
        denoise,
        decode,
        encoder,
        denoiser,
        rebuild,
        sigma,
        encode,
    )


def ddim_text_model(
    teacher: Denoiser,
    num_steps: int,
    encoder: PromptEncoder,
    decode: Callable[[Tensor], Tensor],
    guidance_scale: float = 1.0,
    encode_images: Callable[[Tensor], Tensor] | None = None,
) -> TextToImage:
    """The teacher under its own deterministic guided sampler, `num_steps` NFE: DDIM (η = 0,
    trailing spacing) for a VP model, the flow Euler sampler for a flow-matching one.

    The sampler is `sfd.core.ddim.ddim_trajectory` (in σ-space the flow Euler step is the DDIM
    step; `sampler_sigmas` picks the levels, the denoiser the start), without `sample_ddim`'s
    no-grad guard, so the attack can differentiate through a short sampler.
    """
    sigmas = sampler_sigmas(teacher, num_steps)
    teacher.requires_grad_(False).eval()

    encode = encode_images or vae_encoder(None)

    def denoise(z: Tensor, cond: TextCondition) -> Tensor:
        return ddim_trajectory(teacher, z, cond, sigmas, guidance_scale)  # (B, c, h, w)

    def rebuild(network: Denoiser) -> TextToImage:
        return ddim_text_model(network, num_steps, encoder, decode, guidance_scale, encode)

    if isinstance(teacher, FlowDenoiser):
        shift = getattr(teacher, "sampler_shift", 1.0)
        name = f"flow Euler {num_steps} steps (shift {shift:g}, guidance {guidance_scale:g})"
    else:
        name = f"DDIM {num_steps} steps (eta=0, trailing spacing, guidance {guidance_scale:g})"
    return TextToImage(
        name,
        num_steps,
        teacher.sample_shape,
        guidance_scale,
        denoise,
        decode,
        encoder,
        teacher,
        rebuild,
        None,
        encode,
    )
