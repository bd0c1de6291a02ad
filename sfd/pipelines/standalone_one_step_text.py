"""A self-contained diffusers pipeline for an exported one-step Stable Diffusion generator.

`sfd export` copies this file verbatim into every text-to-image export as
`one_step_text_pipeline.py`, so that the folder loads where `sfd` is not installed:

    DiffusionPipeline.from_pretrained(folder, custom_pipeline="one_step_text_pipeline",
                                      trust_remote_code=True)

It imports only torch and diffusers, and computes exactly what `sfd.pipelines.OneStepTextPipeline`
computes (tested bit for bit): x0 = D_θ(σ_init·z, σ_init, text) in latent space in one UNet
evaluation, at the timestep recorded in the folder's config, decoded by the VAE.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor

ENCODE_BATCH = 32  # prompts per text-encoder call
SETTINGS_KEY = "_one_step"  # model_index.json: this pipeline's settings, which stock pipelines skip


class OneStepTextPipeline(DiffusionPipeline):
    """One-step text-to-image generation with a SiD/SFD-distilled Stable Diffusion UNet.

    Args:
        unet: the generator network.
        vae: the autoencoder that decodes latents to images (None: the UNet works on pixels).
        text_encoder: the CLIP text encoder.
        tokenizer: the CLIP tokenizer.
        scheduler: the one-step scheduler (unused here, kept for the folder's layout).
        sigma_init: the generator's input noise level σ_init.
        prediction_type: the UNet's output ("epsilon", "v_prediction", "sample").
        timestep: the UNet timestep t(σ_init) the generator was trained at.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["vae"]

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        # sigma_init, prediction_type and timestep sit in a private block of model_index.json,
        # which a stock StableDiffusionPipeline loading the same folder skips without a warning.
        settings = config_dict.get(SETTINGS_KEY, {})
        return super().extract_init_dict({**config_dict, **settings}, **kwargs)

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL | None,
        text_encoder: Any,
        tokenizer: Any,
        scheduler: Any,
        sigma_init: float = 2.5,
        prediction_type: str = "epsilon",
        timestep: float | None = None,
    ) -> None:
        super().__init__()
        if timestep is None:
            raise ValueError("the folder's model_index.json records no generator timestep")
        self.register_modules(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler
        )
        self.register_to_config(
            sigma_init=sigma_init, prediction_type=prediction_type, timestep=timestep
        )

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        """Last hidden states of the text encoder for padded prompts, (N, L, D) float32."""
        device = next(self.text_encoder.parameters()).device
        chunks = []
        for start in range(0, len(prompts), ENCODE_BATCH):
            tokens = self.tokenizer(
                prompts[start : start + ENCODE_BATCH],
                padding="max_length",
                max_length=self.tokenizer.model_max_length,
                truncation=True,
                return_tensors="pt",
            )
            chunks.append(self.text_encoder(tokens.input_ids.to(device))[0].float())
        return torch.cat(chunks)

    def _x0(self, x: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """x0_hat at σ_init for σ-space latents x = σ_init·z (B, 4, h, w) and embeddings (B, L, D)."""
        batch = x.shape[0]
        sigma = torch.full((batch, 1, 1, 1), self.config.sigma_init, device=x.device)
        timestep = torch.full((batch,), self.config.timestep, device=x.device)
        scale = (1 + sigma**2).rsqrt()  # x_t = sqrt(ā)·x, ā = 1/(1 + σ²)
        dtype = self.unet.dtype
        embeds = embeds.to(device=x.device, dtype=dtype)
        prediction = self.unet(
            (x * scale).to(dtype), timestep, encoder_hidden_states=embeds
        ).sample.float()
        x = x.float()
        if self.config.prediction_type == "epsilon":
            return x - sigma * prediction
        if self.config.prediction_type == "v_prediction":
            eps_hat = scale * prediction + (sigma * scale) * scale * x
            return x - sigma * eps_hat
        return prediction

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_images_per_prompt: int = 1,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Generate `num_images_per_prompt` images per prompt in one UNet evaluation each.

        Args:
            prompt: one prompt or a list of P prompts.
            negative_prompt: the guidance null condition (one, or one per prompt; default "").
            num_images_per_prompt: images per prompt (B = P · this).
            guidance_scale: classifier-free guidance scale; 1 evaluates the generator as trained.
            generator: random stream for z (ignored when `latents` is given).
            latents: the noise z ~ N(0, I) itself, (B, 4, h, w).
            output_type: "pil", "np" (B, H, W, 3 in [0, 1]), "pt" (B, 3, H, W in [0, 1], as
                diffusers' pipelines return it) or
                "latent" (the x0 latents).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.

        Returns:
            the images, prompt-major.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negatives = [negative_prompt or ""] * len(prompts)
        if isinstance(negative_prompt, list):
            negatives = list(negative_prompt)
        prompts = [p for p in prompts for _ in range(num_images_per_prompt)]
        negatives = [n for n in negatives for _ in range(num_images_per_prompt)]
        device = self.unet.device
        embeds = self._encode(prompts).to(device)  # (B, L, D)
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if latents is None:
            latents = torch.randn(
                (len(prompts), self.unet.config.in_channels, height, width),
                generator=generator,
                device=generator.device if generator is not None else device,
            )
        z = latents.to(device=device, dtype=torch.float32)
        x = self.config.sigma_init * z
        if guidance_scale == 1.0:
            x0 = self._x0(x, embeds)
        else:
            unique = list(dict.fromkeys(negatives))
            table = self._encode(unique).to(device)
            null = table[torch.tensor([unique.index(n) for n in negatives])]
            x0_cond, x0_null = self._x0(torch.cat([x, x]), torch.cat([embeds, null])).chunk(2)
            x0 = x0_null + guidance_scale * (x0_cond - x0_null)
        if output_type == "latent":
            output: Any = x0
        else:
            if self.vae is None:
                images = x0.float()
            else:
                scaling = self.vae.config.scaling_factor
                images = self.vae.decode((x0 / scaling).to(self.vae.dtype)).sample.float()
            if output_type == "pt":  # diffusers' meaning: the image processor's [0, 1]
                output = VaeImageProcessor.denormalize(images)
            else:
                array = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
                output = array if output_type == "np" else self.numpy_to_pil(array)
        return ImagePipelineOutput(images=output) if return_dict else (output,)
