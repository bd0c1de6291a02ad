"""A self-contained diffusers pipeline for an exported class-conditional one-step generator.

`sfd export` copies this file verbatim into every class-conditional export as
`one_step_pipeline.py`, so that the folder loads where `sfd` is not installed:

    DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)

(the folder's model_index.json names this file and class: `["one_step_pipeline",
"OneStepPipeline"]`, diffusers' form for a custom pipeline shipped with the weights).

It imports only torch and diffusers, and computes exactly what `sfd.pipelines.OneStepPipeline`
computes (tested bit for bit): x0 = D_θ(σ_init·z, σ_init, class_labels) in one UNet evaluation,
with the network's timestep read from the folder's config.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.image_processor import VaeImageProcessor


class OneStepPipeline(DiffusionPipeline):
    """Class-conditional one-step sampling of a SiD/SFD-distilled `UNet2DModel`.

    Args:
        unet: the generator network.
        scheduler: the VP training schedule (None for EDM networks; unused here, kept for the
            folder's layout).
        sigma_init: the generator's input noise level σ_init.
        parameterization: "vp" (DDPM network) or "edm" (EDM preconditioning).
        prediction_type: the VP network's output ("epsilon", "v_prediction", "sample").
        num_classes: number of class labels.
        null_class: the unconditional label, if any.
        sigma_data: σ_data of EDM preconditioning.
        timestep: what the network's timestep input receives: t(σ_init) for VP networks,
            ln(σ_init)/4 for EDM networks.
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["scheduler"]

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        # model_index.json names this file and class (["one_step_pipeline", "OneStepPipeline"]);
        # asked directly, this class loads the folder as itself.
        loaded = super().load_config(*args, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        if isinstance(config.get("_class_name"), list):
            config["_class_name"] = cls.__name__
        return loaded

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: DDPMScheduler | None = None,
        sigma_init: float = 2.5,
        parameterization: str = "vp",
        prediction_type: str = "epsilon",
        num_classes: int | None = None,
        null_class: int | None = None,
        sigma_data: float = 0.5,
        timestep: float | None = None,
    ) -> None:
        super().__init__()
        if timestep is None:
            raise ValueError("the folder's model_index.json records no generator timestep")
        self.register_modules(unet=unet, scheduler=scheduler)
        self.register_to_config(
            sigma_init=sigma_init,
            parameterization=parameterization,
            prediction_type=prediction_type,
            num_classes=num_classes,
            null_class=null_class,
            sigma_data=sigma_data,
            timestep=timestep,
        )

    def _x0(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """x0_hat of the network at σ_init for σ-space input x = σ_init·z, (B, C, H, W)."""
        config = self.config
        batch = x.shape[0]
        sigma = torch.full(
            (batch, 1, 1, 1), config.sigma_init, dtype=torch.float32, device=x.device
        )
        timestep = torch.full((batch,), config.timestep, dtype=torch.float32, device=x.device)
        dtype = self.unet.dtype
        if config.parameterization == "edm":
            sd2 = config.sigma_data**2
            c_skip = sd2 / (sigma**2 + sd2)
            c_out = sigma * config.sigma_data / (sigma**2 + sd2).sqrt()
            c_in = (sigma**2 + sd2).rsqrt()
            raw = self.unet((c_in * x).to(dtype), timestep, class_labels=labels).sample
            return c_skip * x.float() + c_out * raw.float()
        scale = (1 + sigma**2).rsqrt()  # x_t = sqrt(ā)·x, ā = 1/(1 + σ²)
        prediction = self.unet((x * scale).to(dtype), timestep, class_labels=labels).sample.float()
        x = x.float()
        if config.prediction_type == "epsilon":
            return x - sigma * prediction
        if config.prediction_type == "v_prediction":
            eps_hat = scale * prediction + (sigma * scale) * scale * x
            return x - sigma * eps_hat
        return prediction

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int] | torch.Tensor,
        generator: torch.Generator | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
    ) -> ImagePipelineOutput | tuple[Any]:
        """Generate one image per class label in a single network evaluation.

        Args:
            class_labels: labels, (B,).
            generator: random stream for z (ignored when `latents` is given).
            latents: the noise z ~ N(0, I) itself, (B, C, H, W).
            output_type: "pil", "np" (B, H, W, C in [0, 1]) or "pt" (B, C, H, W in [0, 1]), as
                the stock pipelines (diffusers' image processor's `postprocess`).
            return_dict: return an `ImagePipelineOutput` rather than a tuple.

        Returns:
            the images.
        """
        device = self.unet.device
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=device).reshape(-1)
        num_classes = self.config.num_classes
        if num_classes is not None and ((labels < 0) | (labels >= num_classes)).any():
            raise ValueError(f"class labels must lie in 0..{num_classes - 1}")
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if latents is None:
            shape = (len(labels), self.unet.config.in_channels, height, width)
            latents = torch.randn(
                shape, generator=generator, device=generator.device if generator else device
            )
        x = self.config.sigma_init * latents.to(device)
        unet_labels = None if self.unet.config.num_class_embeds is None else labels
        images = self._x0(x, unet_labels).float()  # (B, C, H, W) in [-1, 1]
        if output_type == "pt":  # diffusers' meaning: the image processor's [0, 1]
            output: Any = VaeImageProcessor.denormalize(images)
        else:
            array = ((images.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
            output = array if output_type == "np" else self.numpy_to_pil(array)
        return ImagePipelineOutput(images=output) if return_dict else (output,)
