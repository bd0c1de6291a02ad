"""Rank-zero and monitoring callbacks: sample grids, throughput, learning rates, gradient norms."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from PIL import Image
from torch.optim import Optimizer
from typing_extensions import override

from sfd.errors import SFDConfigError
from sfd.images import image_grid, to_uint8

SAMPLES_FOLDER = "samples"  # PNG grids go to <default_root_dir>/samples/


class SampleGrids(Callback):
    """Every `every_n_steps` iterations, rank zero renders forget and remain grids at fixed seeds.

    The (EMA) generator renders the same noise each time, so successive grids show how the
    model changes. The rows are the condition sampler's `preview`, each captioned with its
    label (forget rows marked in red): with class conditions one row per class (all remain
    classes, all forget classes); with prompt samplers `num_conditions` distinct prompts drawn at
    `seed`. Tiles are upscaled to a visible size (`sfd.images.Grid`). Latent generators
    (4 channels) show their first three latent channels as RGB. Grids are logged to every `WandbLogger`
    (keys `samples/remain`, `samples/forget`) and written as PNGs under
    `<default_root_dir>/samples/`.

    Args:
        every_n_steps: iterations between grids (also rendered after the last iteration).
        num_per_condition: images per row.
        num_conditions: rows for condition samplers that are not class labels.
        seed: seed of the noise (and of drawn conditions).
    """

    def __init__(
        self,
        every_n_steps: int = 500,
        num_per_condition: int = 8,
        num_conditions: int = 4,
        seed: int = 0,
    ) -> None:
        for name, value in [
            ("every_n_steps", every_n_steps),
            ("num_per_condition", num_per_condition),
            ("num_conditions", num_conditions),
        ]:
            if value < 1:
                raise SFDConfigError(f"SampleGrids {name}={value} must be at least 1")
        self.every_n_steps = every_n_steps
        self.num_per_condition = num_per_condition
        self.num_conditions = num_conditions
        self.seed = seed
        self._last_rendered = -1

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.render(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.render(trainer, pl_module)

    def render(self, trainer: pl.Trainer, pl_module: Any) -> dict[str, Image.Image]:
        """Render and log the grids for the current step (rank zero only; once per step).

        Returns:
            {"remain": grid, "forget": grid} on rank zero, {} elsewhere.
        """
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._last_rendered:
            return {}
        self._last_rendered = step
        grids = self._grids(pl_module)
        folder = Path(trainer.default_root_dir) / SAMPLES_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        for kind, grid in grids.items():
            grid.save(folder / f"{kind}_step{step:07d}.png")
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            import wandb

            images = {
                f"samples/{kind}": wandb.Image(grid, caption=f"{kind}, step {step}")
                for kind, grid in grids.items()
            }
            for logger in wandb_loggers:
                logger.log_metrics(images, step=step)
        return grids

    @torch.no_grad()
    def _grids(self, pl_module: Any) -> dict[str, Image.Image]:
        generator = pl_module.export_generator
        device = pl_module.device
        rng = torch.Generator(device=device).manual_seed(self.seed)
        preview = pl_module.conditions.preview(self.num_per_condition, self.num_conditions, rng)
        rows = {"remain": len(preview.remain_labels), "forget": len(preview.forget_labels)}
        noise = torch.randn(
            (max(rows.values()) * self.num_per_condition, *generator.sample_shape),
            generator=rng,
            device=device,
        )
        was_training = generator.training
        generator.eval()
        grids = {}
        captions = {"remain": preview.remain_labels, "forget": preview.forget_labels}
        for kind, cond in (("remain", preview.remain), ("forget", preview.forget)):
            count = rows[kind] * self.num_per_condition
            x_g = generator(noise[:count], cond)  # (rows·num_per_condition, C, H, W)
            if x_g.shape[1] not in (1, 3):
                x_g = x_g[:, :3]  # latent models (no decoder here): first 3 channels as RGB
            grids[kind] = image_grid(
                to_uint8(x_g),
                rows=rows[kind],
                labels=list(captions[kind]),
                highlight=[kind == "forget"] * rows[kind],
            )
        generator.train(was_training)
        return grids


class TrainingMonitor(Callback):
    """Logs images/s, seconds per iteration, learning rates and gradient norms before clipping.

    Gradient norms are read in `on_before_optimizer_step`, which Lightning calls after the
    backward pass, after a 16-mixed gradient scaler has unscaled the gradients and after the
    distributed gradient average, but before the module clips them.

    Args:
        optimizer_names: metric names of the module's optimizers, in `configure_optimizers` order.
        images_per_sample: generated images per batch element (remain + forget = 2 for SFD).
    """

    def __init__(
        self,
        optimizer_names: tuple[str, ...] = ("fake_score", "generator"),
        images_per_sample: int = 2,
    ) -> None:
        self.optimizer_names = tuple(optimizer_names)
        self.images_per_sample = images_per_sample
        self._last_end: float | None = None

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if len(trainer.optimizers) != len(self.optimizer_names):
            raise SFDConfigError(
                f"TrainingMonitor optimizer_names={list(self.optimizer_names)} must name each of "
                f"the module's {len(trainer.optimizers)} optimizers"
            )
        self._last_end = None

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: Any, optimizer: Optimizer
    ) -> None:
        index = next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer)
        grads = [
            p.grad
            for group in optimizer.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not grads:
            return
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        pl_module.log(f"grad_norm/{self.optimizer_names[index]}", norm, on_step=True)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        for name, optimizer in zip(self.optimizer_names, trainer.optimizers, strict=True):
            pl_module.log(f"lr/{name}", float(optimizer.param_groups[0]["lr"]), on_step=True)
        now = time.perf_counter()
        if self._last_end is not None:
            seconds = now - self._last_end
            images = self.images_per_sample * pl_module.hparams.batch_size * trainer.world_size
            pl_module.log("throughput/seconds_per_iteration", seconds, on_step=True)
            pl_module.log("throughput/images_per_s", images / seconds, on_step=True)
        self._last_end = now


class LoggedSaveConfigCallback(SaveConfigCallback):
    """Saves the resolved config.yaml beside the run (as Lightning does) and logs it to wandb."""

    @override
    def save_config(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_hyperparams({"config": self.config.as_dict()})
