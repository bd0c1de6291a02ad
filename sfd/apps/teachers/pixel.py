"""Training a class-conditional DDPM teacher on real labelled images (`sfd teacher`).

The teacher is a diffusers `UNet2DModel` with ε-prediction on the linear-β schedule
(1e-4 → 0.02, T = 1000), trained with the plain DDPM loss E‖ε̂(x_t, t, y) − ε‖². It is saved the way
`DDPMPipeline.save_pretrained` writes it, plus `sfd.json`, so `sfd fit` loads it as
`sfd.teachers.PretrainedVPTeacher`.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel
from lightning.pytorch.utilities.seed import isolate_rng
from torch import Tensor
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from sfd.apps.data.images import DIGITS, load_images, train_heldout_split
from sfd.apps.teachers.checks import check_output_dir, check_teacher_settings
from sfd.errors import SFDConfigError
from sfd.folders import write_folder_atomically
from sfd.images import LabelledImages, from_uint8
from sfd.teachers.unet import SFD_CONFIG_NAME
from sfd.training.parameter_bytes import parameter_count
from sfd.training.progress import IterationProgressBar

DEFAULT_BLOCK_OUT_CHANNELS = (32, 64)

# T of the DDPM schedule the teachers sfd trains have unless told otherwise: the schedule of the
# demos' teachers (`train_teacher`, the text teachers' `make_text_scheduler`), which the demos
# check t_init against up front
DEFAULT_TIMESTEPS = 1000


def make_scheduler(
    num_train_timesteps: int = DEFAULT_TIMESTEPS, beta_start: float = 1e-4, beta_end: float = 0.02
) -> DDPMScheduler:
    """The DDPM noise schedule of the teachers: linear β, ε-prediction."""
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=beta_start,
        beta_end=beta_end,
        beta_schedule="linear",
        prediction_type="epsilon",
        clip_sample=True,
    )


class DDPMTeacherModule(pl.LightningModule):
    """A class-conditional DDPM ε-prediction UNet trained on real images.

    Args:
        num_classes: number of real classes K (linked from the data by `sfd teacher`).
        image_shape: (C, H, W) of the images (linked from the data by `sfd teacher`).
        block_out_channels: UNet channels per resolution level.
        layers_per_block: ResNet blocks per level.
        attention: self-attention blocks at the lowest resolution.
        norm_num_groups: GroupNorm groups (must divide every channel count).
        null_class: add an unconditional class K for classifier-free guidance.
        label_dropout: share of labels replaced by the null class during training (with
            `null_class` only).
        lr: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_steps: linear learning-rate warm-up; then cosine decay to 10 % at max_steps.
        ema_decay: decay of the weights' exponential moving average, which is what gets
            exported (None: export the raw weights).
        num_train_timesteps: T of the DDPM schedule.
        beta_start: β_1 of the linear schedule.
        beta_end: β_T of the linear schedule.
    """

    @classmethod
    def check_setting(cls, name: str, value: Any) -> None:
        """An optimizer setting (lr, weight_decay) checked alone, the others at their defaults
        (`check_teacher_settings`): how a configuration error names the allowed range of a value
        the parser rejects as no number ("nan", "inf", a word). Other settings pass.

        Raises:
            SFDConfigError: `value` is outside the setting's range, naming both.
        """
        if name in ("lr", "weight_decay"):
            parameters = inspect.signature(cls.__init__).parameters.values()
            defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
            check_teacher_settings({**defaults, name: value}, {})

    def __init__(
        self,
        num_classes: int,
        image_shape: tuple[int, int, int],
        block_out_channels: tuple[int, ...] = DEFAULT_BLOCK_OUT_CHANNELS,
        layers_per_block: int = 1,
        attention: bool = True,
        norm_num_groups: int = 8,
        null_class: bool = False,
        label_dropout: float = 0.1,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        warmup_steps: int = 100,
        ema_decay: float | None = 0.999,
        num_train_timesteps: int = DEFAULT_TIMESTEPS,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if num_classes < 1:
            raise SFDConfigError(f"num_classes={num_classes} must be at least 1")
        if any(channels % norm_num_groups for channels in block_out_channels):
            raise SFDConfigError(
                f"norm_num_groups={norm_num_groups} must divide every entry of "
                f"block_out_channels={tuple(block_out_channels)}"
            )
        if not 0.0 <= label_dropout < 1.0:
            raise SFDConfigError(f"label_dropout={label_dropout} must lie in [0, 1)")
        if ema_decay is not None and not 0.0 < ema_decay < 1.0:
            raise SFDConfigError(f"ema_decay={ema_decay} must lie in (0, 1), or be null")
        channels, height, width = image_shape
        levels = len(block_out_channels)
        if height % 2 ** (levels - 1) or width % 2 ** (levels - 1):
            raise SFDConfigError(
                f"images of {height}×{width} cannot be halved {levels - 1} times for "
                f"block_out_channels={tuple(block_out_channels)}; use fewer levels"
            )
        down = ["DownBlock2D"] * levels
        up = ["UpBlock2D"] * levels
        if attention:
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        self.num_classes = num_classes
        self.null_class = num_classes if null_class else None
        self.label_dropout = label_dropout
        self.ema_decay = ema_decay
        self.unet = UNet2DModel(
            sample_size=(height, width) if height != width else height,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=tuple(block_out_channels),
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            attention_head_dim=8,
            num_class_embeds=num_classes + (1 if null_class else 0),
        )
        self.ema_unet: UNet2DModel | None = None
        if ema_decay is not None:
            self.ema_unet = copy.deepcopy(self.unet).requires_grad_(False)
        self.scheduler = make_scheduler(num_train_timesteps, beta_start, beta_end)
        alphas_cumprod = self.scheduler.alphas_cumprod.float()
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt(), persistent=False)
        self.register_buffer(
            "sqrt_one_minus_alphas_cumprod", (1 - alphas_cumprod).sqrt(), persistent=False
        )

    def diffusion_loss(self, x0: Tensor, labels: Tensor) -> Tensor:
        """The DDPM ε-prediction loss at uniformly drawn timesteps.

        Args:
            x0: real images in [-1, 1], (B, C, H, W).
            labels: class labels, (B,).

        Returns:
            the mean squared ε error, a scalar.
        """
        batch = x0.shape[0]
        t = torch.randint(0, len(self.sqrt_alphas_cumprod), (batch,), device=x0.device)  # (B,)
        noise = torch.randn_like(x0)
        scale = self.sqrt_alphas_cumprod[t].reshape(-1, 1, 1, 1)
        spread = self.sqrt_one_minus_alphas_cumprod[t].reshape(-1, 1, 1, 1)
        x_t = scale * x0 + spread * noise  # (B, C, H, W)
        if self.null_class is not None and self.label_dropout > 0:
            drop = torch.rand(batch, device=x0.device) < self.label_dropout
            labels = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        eps_hat = self.unet(x_t, t, class_labels=labels).sample
        return F.mse_loss(eps_hat.float(), noise)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x0, labels = batch
        loss = self.diffusion_loss(x0, labels)
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema_unet is None or self.ema_decay is None:
            return
        step = self.global_step
        # Warm-up of the decay: early weights are far from the optimum and should not linger.
        decay = min(self.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, live in zip(self.ema_unet.parameters(), self.unet.parameters(), strict=True):
                ema.lerp_(live, 1 - decay)

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.AdamW(
            self.unet.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        total = self.trainer.max_steps  # -1 when training is bounded by epochs: no decay
        warmup = max(1, self.hparams.warmup_steps)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            if total <= warmup:
                return 1.0
            progress = min((step - warmup) / (total - warmup), 1.0)
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def export_unet(self) -> UNet2DModel:
        """The network to ship: the EMA weights if kept, else the trained ones."""
        return self.ema_unet if self.ema_unet is not None else self.unet


class TeacherDataModule(pl.LightningDataModule):
    """Real labelled images for teacher training: the training part of a stratified split.

    Args:
        source: "digits", a labelled .npz, or CIFAR-10's python archive / folder.
        heldout_fraction: share of each class kept aside for evaluation (never trained on).
        split_seed: seed of the split (the demo and `sfd eval` use the same split).
        batch_size: images per optimizer step.
        steps_per_epoch: batches in one epoch (default: the trainer's max_steps, so one progress
            bar covers the whole run).
        seed: seed of the batch order.
        horizontal_flip: random mirror images (default: what the source allows: CIFAR yes,
            digits and .npz no).
    """

    def __init__(
        self,
        source: str = DIGITS,
        heldout_fraction: float = 0.2,
        split_seed: int = 0,
        batch_size: int = 64,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        horizontal_flip: bool | None = None,
    ) -> None:
        super().__init__()
        train, _ = train_heldout_split(load_images(source), heldout_fraction, split_seed)
        self._init_from(train, batch_size, steps_per_epoch, seed, horizontal_flip)
        self.source = source

    @classmethod
    def from_images(
        cls,
        train: LabelledImages,
        batch_size: int = 64,
        steps_per_epoch: int | None = None,
        seed: int = 0,
        horizontal_flip: bool | None = None,
    ) -> TeacherDataModule:
        """A data module over already loaded training images (no split)."""
        module = cls.__new__(cls)
        pl.LightningDataModule.__init__(module)
        module._init_from(train, batch_size, steps_per_epoch, seed, horizontal_flip)
        module.source = "images"
        return module

    def _init_from(
        self,
        train: LabelledImages,
        batch_size: int,
        steps_per_epoch: int | None,
        seed: int,
        horizontal_flip: bool | None,
    ) -> None:
        if batch_size < 1:
            raise SFDConfigError(f"batch_size={batch_size} must be at least 1")
        if steps_per_epoch is not None and steps_per_epoch < 1:
            raise SFDConfigError(f"steps_per_epoch={steps_per_epoch} must be at least 1, or null")
        if len(train) == 0:
            raise SFDConfigError("the teacher's training set is empty")
        self.train_images = train
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.horizontal_flip = train.horizontal_flip if horizontal_flip is None else horizontal_flip

    @property
    def num_classes(self) -> int:
        return self.train_images.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.train_images.image_shape

    def train_dataloader(self) -> DataLoader:
        steps = self.steps_per_epoch
        if steps is None:
            max_steps = self.trainer.max_steps if self.trainer is not None else -1
            steps = (
                max_steps if max_steps > 0 else math.ceil(len(self.train_images) / self.batch_size)
            )
        dataset = TensorDataset(self.train_images.images, self.train_images.labels)
        # Without replacement, num_samples beyond N chains fresh permutations: every image is
        # seen once before any is seen twice.
        sampler = RandomSampler(
            dataset,
            num_samples=steps * self.batch_size,
            generator=torch.Generator().manual_seed(self.seed),
        )
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, drop_last=True)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> tuple[Tensor, Tensor]:
        images, labels = batch
        x0 = from_uint8(images)  # (B, C, H, W) in [-1, 1]
        if self.horizontal_flip and self.trainer is not None and self.trainer.training:
            mirror = torch.rand(x0.shape[0], device=x0.device) < 0.5
            x0 = torch.where(mirror.reshape(-1, 1, 1, 1), x0.flip(3), x0)
        return x0, labels


# --- writing the diffusers folder --------------------------------------------------------------


def save_teacher(
    module: DDPMTeacherModule, output_dir: str | Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write the teacher as `DDPMPipeline.save_pretrained` + `sfd.json`, atomically.

    Args:
        module: the trained module (its EMA weights are exported when it kept them).
        output_dir: the folder to create or replace (an earlier teacher folder or empty).
        extra: more entries for sfd.json (training settings).

    Returns:
        the folder.
    """
    output_dir = check_output_dir(output_dir)
    unet = copy.deepcopy(module.export_unet()).to("cpu").eval()
    scheduler = DDPMScheduler.from_config(module.scheduler.config)
    sfd_config = {
        "num_classes": module.num_classes,
        "null_class": module.null_class,
        "image_shape": list(module.hparams.image_shape),
        "parameters": parameter_count(unet),
        "ema": module.ema_unet is not None,
        "global_step": module.global_step,
        **(extra or {}),
    }

    def write(staging: Path) -> None:
        pipeline = DDPMPipeline(unet=unet, scheduler=scheduler)
        pipeline.save_pretrained(staging, safe_serialization=True)
        (staging / SFD_CONFIG_NAME).write_text(json.dumps(sfd_config, indent=2) + "\n")

    return write_folder_atomically(output_dir, write)


def one_device_trainer(
    accelerator: str, max_steps: int, progress: bool, root_dir: Path
) -> pl.Trainer:
    """The `Trainer` of a plain model fit (teacher, VAE): one device, one epoch of `max_steps`
    batches (a single progress bar), no logger, no checkpoints."""
    return pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=max_steps,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        callbacks=[IterationProgressBar()] if progress else None,  # sfd's one progress style
        default_root_dir=str(root_dir),
    )


def train_teacher(
    train: LabelledImages,
    output_dir: str | Path,
    *,
    max_steps: int = 3000,
    batch_size: int = 64,
    lr: float = 2e-3,
    block_out_channels: tuple[int, ...] = DEFAULT_BLOCK_OUT_CHANNELS,
    null_class: bool = False,
    seed: int = 0,
    accelerator: str = "auto",
    progress: bool = True,
    ema_decay: float | None = 0.999,
    label_dropout: float = 0.1,
) -> Path:
    """Train a class-conditional DDPM teacher with a Lightning Trainer and save it for `sfd fit`.

    Args:
        train: the real training images (the held-out split stays out).
        output_dir: the folder to write (`unet/`, `scheduler/`, `model_index.json`, `sfd.json`).
        max_steps: optimizer steps.
        batch_size: images per step.
        lr: peak AdamW learning rate (warm-up, then cosine decay).
        block_out_channels: UNet channels per resolution level (the default is a 0.7 M-parameter
            UNet for 8×8 images); GroupNorm uses gcd(8, channels...) groups.
        null_class: add an unconditional class K for classifier-free guidance.
        seed: seed of the weights, batches, noise and timesteps.
        accelerator: Lightning accelerator ("auto", "cpu", "gpu", ...).
        progress: show a progress bar.
        ema_decay: EMA decay of the exported weights (None: raw weights).
        label_dropout: share of labels replaced by the null class (with `null_class`).

    Returns:
        output_dir.
    """
    if max_steps < 1:
        raise SFDConfigError(f"max_steps={max_steps} must be at least 1")
    output_dir = check_output_dir(output_dir)
    with isolate_rng():
        pl.seed_everything(seed, verbose=False)
        data = TeacherDataModule.from_images(train, batch_size, seed=seed)
        module = DDPMTeacherModule(
            train.num_classes,
            train.image_shape,
            block_out_channels=tuple(block_out_channels),
            # Up to 8 GroupNorm groups, as many as divide every level's channels.
            norm_num_groups=math.gcd(8, *block_out_channels),
            null_class=null_class,
            label_dropout=label_dropout,
            lr=lr,
            ema_decay=ema_decay,
        )
        trainer = one_device_trainer(accelerator, max_steps, progress, output_dir.parent)
        trainer.fit(module, datamodule=data)
    extra = {"batch_size": batch_size, "lr": lr, "seed": seed, "train_size": len(train)}
    if train.class_names is not None:
        extra["class_names"] = list(train.class_names)
    return save_teacher(module, output_dir, extra)
