"""`OneStepPipeline`: a diffusers pipeline that samples a class-conditional one-step generator.

A stock multi-step pipeline cannot run a SiD/SFD generator (it takes sqrt(1−ā)·z at one fixed
timestep and returns x0), so exported generators come with this pipeline. The folder it saves is
ordinary diffusers: `model_index.json`, `unet/` (config.json + safetensors) and, for VP
generators, `scheduler/`.
"""

from typing import Any

import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel
from diffusers.image_processor import VaeImageProcessor
from torch import Tensor

from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.images import to_unit_numpy
from sfd.teachers.base import Denoiser
from sfd.teachers.unet import EDMUNetDenoiser, VPUNetDenoiser
from sfd.teachers.vp import VPDenoiser, sigma_to_t

PARAMETERIZATIONS = ("vp", "edm")
# model_index.json entry that holds a pipeline's own settings where stock diffusers pipelines skip
# them silently (diffusers ignores config keys that start with "_"); see `lift_settings`.
SETTINGS_KEY = "_one_step"
PARAMETERIZATION_OF_KIND = {VPUNetDenoiser.kind: "vp", EDMUNetDenoiser.kind: "edm"}


def as_own_class(loaded: Any, cls: type) -> Any:
    """`load_config`'s result with an export's `_class_name` naming `cls` itself.

    An export names its standalone pipeline file in diffusers' custom-pipeline list form,
    `["one_step_pipeline", "OneStepPipeline"]`, so that plain `DiffusionPipeline.from_pretrained`
    loads it without sfd; sfd's own class, asked directly, loads the folder as itself.
    """
    config = loaded[0] if isinstance(loaded, tuple) else loaded
    if isinstance(config.get("_class_name"), list):
        config["_class_name"] = cls.__name__
    return loaded


def lift_settings(config_dict: dict[str, Any]) -> dict[str, Any]:
    """A pipeline config with the entries of its private `SETTINGS_KEY` block at the top level."""
    return {**config_dict, **config_dict.get(SETTINGS_KEY, {})}


def network_timestep(denoiser: Denoiser, sigma: float) -> float:
    """What the network's timestep input receives at noise level σ, computed as the denoiser does.

    Args:
        denoiser: a VP denoiser (t(σ) on its table, log-σ interpolated) or an EDM UNet
            (c_noise = ln(σ)/4).
        sigma: the noise level.

    Returns:
        the timestep, a float32 value as a Python float.
    """
    sigma_tensor = torch.tensor([sigma], dtype=torch.float32)
    if isinstance(denoiser, VPDenoiser):
        return float(sigma_to_t(sigma_tensor, denoiser.sigmas.cpu())[0])
    if isinstance(denoiser, EDMUNetDenoiser):
        return float((sigma_tensor.log() / 4)[0])
    raise SFDConfigError(f"{type(denoiser).__name__} has no network timestep")


class OneStepPipeline(DiffusionPipeline):
    """Class-conditional one-step sampling: x0 = D_θ(σ_init·z, σ_init, class_labels).

    Args:
        unet: the generator network.
        scheduler: the VP noise schedule the network was trained with (None for EDM networks).
        sigma_init: the generator's input noise level.
        parameterization: "vp" (DDPM network + scheduler) or "edm" (EDM preconditioning).
        prediction_type: the VP network's output type ("epsilon", "v_prediction", "sample").
        num_classes: number of class labels.
        null_class: the unconditional label, if any.
        sigma_data: σ_data of EDM preconditioning.
        timestep: the network's timestep input at σ_init (recorded for other loaders; this
            pipeline works in σ).
    """

    model_cpu_offload_seq = "unet"
    _optional_components = ["scheduler"]  # EDM generators need no schedule

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
        if parameterization not in PARAMETERIZATIONS:
            raise SFDConfigError(
                f"parameterization {parameterization!r} is not supported; allowed: {PARAMETERIZATIONS}"
            )
        if parameterization == "vp" and scheduler is None:
            raise SFDConfigError("a 'vp' one-step pipeline needs its scheduler")
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

    @classmethod
    def load_config(cls, *args: Any, **kwargs: Any) -> Any:
        return as_own_class(super().load_config(*args, **kwargs), cls)

    @classmethod
    def from_generator(cls, generator: OneStepGenerator) -> "OneStepPipeline":
        """Wrap a trained generator (its networks are shared, not copied)."""
        denoiser = generator.denoiser
        spec = denoiser.spec()
        if spec["kind"] not in PARAMETERIZATION_OF_KIND:
            raise SFDConfigError(
                f"OneStepPipeline cannot hold a {spec['kind']!r} generator; "
                f"it holds {sorted(PARAMETERIZATION_OF_KIND)}"
            )
        parameterization = PARAMETERIZATION_OF_KIND[spec["kind"]]
        scheduler = DDPMScheduler.from_config(spec["scheduler"]) if "scheduler" in spec else None
        return cls(
            denoiser.unet,
            scheduler,
            sigma_init=generator.sigma_init,
            parameterization=parameterization,
            prediction_type=spec.get("prediction_type", "epsilon"),
            num_classes=spec["num_classes"],
            null_class=spec["null_class"],
            sigma_data=spec.get("sigma_data", 0.5),
            timestep=network_timestep(denoiser, generator.sigma_init),
        )

    @property
    def generator(self) -> OneStepGenerator:
        """The σ-space one-step generator over this pipeline's UNet (weights shared)."""
        config = self.config
        if config.parameterization == "vp":
            denoiser = VPUNetDenoiser(
                self.unet,
                self.scheduler,
                config.prediction_type,
                config.num_classes,
                config.null_class,
            )
        else:
            denoiser = EDMUNetDenoiser(
                self.unet, config.sigma_data, config.num_classes, config.null_class
            )
        return OneStepGenerator(denoiser.to(self.unet.device), config.sigma_init).eval()

    @torch.no_grad()
    def __call__(
        self,
        class_labels: list[int] | Tensor,
        generator: torch.Generator | None = None,
        latents: Tensor | None = None,
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
            bad = labels[(labels < 0) | (labels >= num_classes)][0].item()
            raise SFDConfigError(f"class label {bad} is outside 0..{num_classes - 1}")
        one_step = self.generator
        if latents is None:
            shape = (len(labels), *one_step.sample_shape)
            latents = torch.randn(
                shape, generator=generator, device=generator.device if generator else device
            )
        images = one_step(latents.to(device), labels)  # (B, C, H, W) in [-1, 1]
        if output_type == "pt":  # diffusers' meaning: the image processor's [0, 1]
            output: Any = VaeImageProcessor.denormalize(images)
        else:
            array = to_unit_numpy(images)
            output = array if output_type == "np" else self.numpy_to_pil(array)
        return ImagePipelineOutput(images=output) if return_dict else (output,)
