"""Pixel-space diffusers `UNet2DModel` teachers: a VP (DDPM) adapter and an EDM-preconditioned one."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import DDPMScheduler, SchedulerMixin, UNet2DModel
from torch import Tensor, nn

from sfd.errors import SFDConfigError, check_number
from sfd.hub import check_hub_source
from sfd.teachers.base import (
    GUIDANCE_SCALES,
    Denoiser,
    check_scales_need_null,
    pretrained_source,
)
from sfd.teachers.vp import VPDenoiser

SFD_CONFIG_NAME = (
    "sfd.json"  # beside unet/ and scheduler/: num_classes, null_class, parameterisation
)


class ClassConditionalUNet(Denoiser):
    """Shared class-label plumbing of the UNet2DModel adapters (labels (B,) int64; optional null class)."""

    unet: UNet2DModel

    def _init_classes(self, num_classes: int | None, null_class: int | None) -> None:
        embeds = self.unet.config.num_class_embeds
        if num_classes is None:
            num_classes = None if embeds is None else embeds - (null_class is not None)
        if embeds is not None and num_classes is not None and num_classes > embeds:
            raise SFDConfigError(
                f"num_classes={num_classes} exceeds the UNet's num_class_embeds={embeds}"
            )
        if null_class is not None and (embeds is None or not 0 <= null_class < embeds):
            raise SFDConfigError(
                f"null_class={null_class} is not a class embedding of the UNet "
                f"(num_class_embeds={embeds})"
            )
        self.num_classes = num_classes
        self.null_class = null_class
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        self.sample_shape = (self.unet.config.in_channels, height, width)

    @property
    def has_null_condition(self) -> bool:
        return self.null_class is not None

    @classmethod
    def check_before_loading(cls, settings: Mapping[str, Any], module: Mapping[str, Any]) -> None:
        """A local folder's null class (the teacher's null_class, else its sfd.json's) against the
        module's guidance scales: without one, a scale other than 1 is refused before loading."""
        super().check_before_loading(settings, module)
        path = settings.get("pretrained_model_name_or_path")
        if path is None or not Path(str(path)).is_dir():
            return  # a hub id (or a network given as an object): checked once the model exists
        null_class = settings.get("null_class")
        if null_class is None:
            null_class = read_sfd_config(str(path)).get("null_class")
        scales = {name: module[name] for name in GUIDANCE_SCALES if module.get(name) is not None}
        check_scales_need_null(scales, cls.__name__, null_class is not None)

    def null_condition(self, cond: Any) -> Tensor:
        if self.null_class is None:
            return super().null_condition(cond)
        return torch.full_like(getattr(cond, "labels", cond), self.null_class)

    def drop_condition(self, cond: Any, drop: Tensor) -> Any:
        if not hasattr(cond, "class_embeds"):
            return super().drop_condition(cond, drop)
        return cond.dropped(drop, self.null_condition(cond))  # dropped rows: the null label

    def class_embedding_table(self) -> Tensor | None:
        layer = self.unet.class_embedding
        return layer.weight if isinstance(layer, nn.Embedding) else None

    def _labels(self, cond: Tensor | None) -> Tensor | None:
        return None if self.unet.config.num_class_embeds is None else cond

    def _run_unet(self, x: Tensor, timestep: Tensor, cond: Any) -> Any:
        """The UNet on class labels, or on learned class embeddings where a condition carries
        them (`class_embeds`, see `Denoiser.class_embedding_table`)."""
        embeds = getattr(cond, "class_embeds", None)
        if embeds is None:
            return self.unet(x, timestep, class_labels=self._labels(cond))
        if self.class_embedding_table() is None:
            raise SFDConfigError(
                "this UNet has no class-embedding table, so a class embedding cannot replace a label"
            )
        active = cond.active.reshape(-1, 1)

        def replace(_layer: nn.Module, _inputs: Any, output: Tensor) -> Tensor:
            return torch.where(active, embeds.to(output.dtype), output)

        handle = self.unet.class_embedding.register_forward_hook(replace)
        try:
            return self.unet(x, timestep, class_labels=cond.labels)
        finally:
            handle.remove()

    def _class_spec(self) -> dict[str, Any]:
        return {
            "unet": dict(self.unet.config),
            "num_classes": self.num_classes,
            "null_class": self.null_class,
        }


class VPUNetDenoiser(ClassConditionalUNet, VPDenoiser):
    """A discrete VP (DDPM) `UNet2DModel` as a σ-space denoiser (k-diffusion style adapter).

    The σ table, t(σ) and the ε / v / x0 conversion come from `VPDenoiser`; this class only
    calls the network with class labels.

    Args:
        unet: the network; `num_class_embeds` makes it class-conditional.
        scheduler: the diffusers scheduler of the training schedule (gives ā_t; any scheduler
            whose config `DDPMScheduler.from_config` accepts).
        prediction_type: "epsilon", "v_prediction" or "sample".
        num_classes: number of real classes (default: num_class_embeds, minus the null class).
        null_class: label of the unconditional class used for guidance, if the model has one.
    """

    kind = "vp_unet"

    def __init__(
        self,
        unet: UNet2DModel,
        scheduler: SchedulerMixin,
        prediction_type: str = "epsilon",
        num_classes: int | None = None,
        null_class: int | None = None,
    ) -> None:
        super().__init__(dict(scheduler.config), prediction_type)
        self.unet = unet
        self._init_classes(num_classes, null_class)

    def predict(self, x_t: Tensor, timestep: Tensor, cond: Tensor | None) -> Tensor:
        return self._run_unet(x_t.to(self.network_dtype(self.unet)), timestep, cond).sample

    def spec(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            **self._class_spec(),
            "scheduler": self.scheduler_config,
            "prediction_type": self.prediction_type,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> VPUNetDenoiser:
        return cls(
            UNet2DModel.from_config(spec["unet"]),
            DDPMScheduler.from_config(spec["scheduler"]),
            spec["prediction_type"],
            spec["num_classes"],
            spec["null_class"],
        )


class EDMUNetDenoiser(ClassConditionalUNet):
    """An EDM-preconditioned `UNet2DModel` F: D(x, σ) = c_skip·x + c_out·F(c_in·x, c_noise) (Karras 2022).

    Args:
        unet: the raw network F (its timestep input receives c_noise = ln(σ)/4).
        sigma_data: the data standard deviation σ_data.
        num_classes: number of real classes (default: num_class_embeds, minus the null class).
        null_class: label of the unconditional class used for guidance, if the model has one.
    """

    kind = "edm_unet"

    def __init__(
        self,
        unet: UNet2DModel,
        sigma_data: float = 0.5,
        num_classes: int | None = None,
        null_class: int | None = None,
    ) -> None:
        super().__init__()
        check_number("sigma_data", sigma_data, low=0, low_open=True)
        self.unet = unet
        self.sigma_data = sigma_data
        self._init_classes(num_classes, null_class)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Tensor | None) -> Tensor:
        c_noise = sigma.log() / 4  # (B,)
        sigma = sigma.reshape(-1, 1, 1, 1)
        sd2 = self.sigma_data**2
        c_skip = sd2 / (sigma**2 + sd2)
        c_out = sigma * self.sigma_data / (sigma**2 + sd2).sqrt()
        c_in = (sigma**2 + sd2).rsqrt()
        raw = self._run_unet((c_in * x).to(self.network_dtype(self.unet)), c_noise, cond)
        return c_skip * x.float() + c_out * raw.sample.float()

    def spec(self) -> dict[str, Any]:
        return {"kind": self.kind, **self._class_spec(), "sigma_data": self.sigma_data}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> EDMUNetDenoiser:
        return cls(
            UNet2DModel.from_config(spec["unet"]),
            spec["sigma_data"],
            spec["num_classes"],
            spec["null_class"],
        )


# --- loading from a diffusers folder or hub id ---------------------------------------------------


def read_sfd_config(path: str) -> dict[str, Any]:
    """The optional `sfd.json` of a local model folder (empty for hub ids and plain diffusers folders)."""
    file = Path(path) / SFD_CONFIG_NAME
    return json.loads(file.read_text()) if file.is_file() else {}


def load_unet(path: str, subfolder: str | None, revision: str | None = None) -> UNet2DModel:
    """`UNet2DModel.from_pretrained` with one clear error for a path that is neither a folder nor a hub id."""
    check_hub_source(path, "teacher")
    try:
        return UNet2DModel.from_pretrained(path, subfolder=subfolder, revision=revision)
    except (OSError, ValueError) as error:
        where = f"{path}/{subfolder}" if subfolder else path
        raise SFDConfigError(
            f"cannot load a UNet2DModel from {where!r}: expected a diffusers model folder "
            f"(config.json + *.safetensors) or a reachable hub id ({error.__class__.__name__})"
        ) from error


class PretrainedVPTeacher(VPUNetDenoiser):
    """A DDPM-style teacher loaded with diffusers' `from_pretrained` (local folder or hub id).

    The folder layout is the one `DDPMPipeline.save_pretrained` writes: `unet/` and `scheduler/`.

    Args:
        pretrained_model_name_or_path: local folder or hub id.
        subfolder: where the UNet lives inside it ("" or None for the folder itself).
        scheduler_subfolder: where the scheduler config lives (gives ā_t and the prediction type).
        prediction_type: override the scheduler's prediction type.
        num_classes: number of real classes (default: from sfd.json, else num_class_embeds).
        null_class: the unconditional class label (default: from sfd.json, else none).
        revision: hub revision.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        subfolder: str | None = "unet",
        scheduler_subfolder: str | None = "scheduler",
        prediction_type: str | None = None,
        num_classes: int | None = None,
        null_class: int | None = None,
        revision: str | None = None,
    ) -> None:
        arguments = dict(locals())  # the teacher's `source`
        path = pretrained_model_name_or_path
        extra = read_sfd_config(path)
        unet = load_unet(path, subfolder or None, revision)
        try:
            scheduler = DDPMScheduler.from_pretrained(
                path, subfolder=scheduler_subfolder or None, revision=revision
            )
        except (OSError, ValueError) as error:
            raise SFDConfigError(
                f"cannot load a scheduler config from {path!r} (subfolder "
                f"{scheduler_subfolder!r}): the teacher needs its noise schedule"
            ) from error
        super().__init__(
            unet,
            scheduler,
            prediction_type or scheduler.config.prediction_type,
            num_classes if num_classes is not None else extra.get("num_classes"),
            null_class if null_class is not None else extra.get("null_class"),
        )
        self.unet.eval()
        self.source = pretrained_source(PretrainedVPTeacher, arguments)


class PretrainedEDMTeacher(EDMUNetDenoiser):
    """An EDM-preconditioned `UNet2DModel` teacher loaded with diffusers' `from_pretrained`.

    Args:
        pretrained_model_name_or_path: local folder or hub id.
        subfolder: where the UNet lives inside it.
        sigma_data: σ_data of the preconditioning (default: from sfd.json, else 0.5).
        num_classes: number of real classes (default: from sfd.json, else num_class_embeds).
        null_class: the unconditional class label (default: from sfd.json, else none).
        revision: hub revision.
    """

    def __init__(
        self,
        pretrained_model_name_or_path: str,
        subfolder: str | None = "unet",
        sigma_data: float | None = None,
        num_classes: int | None = None,
        null_class: int | None = None,
        revision: str | None = None,
    ) -> None:
        arguments = dict(locals())  # the teacher's `source`
        path = pretrained_model_name_or_path
        extra = read_sfd_config(path)
        super().__init__(
            load_unet(path, subfolder or None, revision),
            sigma_data if sigma_data is not None else extra.get("sigma_data", 0.5),
            num_classes if num_classes is not None else extra.get("num_classes"),
            null_class if null_class is not None else extra.get("null_class"),
        )
        self.unet.eval()
        self.source = pretrained_source(PretrainedEDMTeacher, arguments)
