"""Rank-zero and monitoring callbacks: sample grids, gradient norms, throughput, the logged config.

Learning rates are Lightning's own `LearningRateMonitor` (configs/wandb.yaml).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback, ThroughputMonitor
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import grad_norm
from PIL import Image
from torch.optim import Optimizer
from typing_extensions import override

from sfd.core.generator import training_record
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


class GradientNorms(Callback):
    """Logs each network's total gradient norm before clipping (`grad_norm/<optimizer name>`).

    Lightning's `grad_norm` computes the norms; what stays here is choosing the parameters: one
    SFD iteration steps two optimizers, and the network of the other one still holds its
    gradients of the previous update, so the norm is taken over the stepped network only (named
    like the module's attribute). Lightning calls callbacks' `on_before_optimizer_step` after the
    backward pass, after the distributed gradient average and after a 16-mixed gradient scaler
    unscaled the gradients, and before the module's own hook, which clips them.

    Args:
        optimizer_names: the module attributes the optimizers train, in `configure_optimizers`
            order; also the metric names.
        norm_type: the p of the p-norm.
        per_parameter: also log every parameter's norm (`grad_<p>_norm/<name>`; many keys).
    """

    def __init__(
        self,
        optimizer_names: tuple[str, ...] = ("fake_score", "generator"),
        norm_type: float = 2.0,
        per_parameter: bool = False,
    ) -> None:
        self.optimizer_names = tuple(optimizer_names)
        self.norm_type = norm_type
        self.per_parameter = per_parameter

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        missing = [name for name in self.optimizer_names if not hasattr(pl_module, name)]
        if len(trainer.optimizers) != len(self.optimizer_names) or missing:
            raise SFDConfigError(
                f"GradientNorms optimizer_names={list(self.optimizer_names)} must name the "
                f"network of each of the module's {len(trainer.optimizers)} optimizers"
            )

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: Any, optimizer: Optimizer
    ) -> None:
        index = next(i for i, opt in enumerate(trainer.optimizers) if opt is optimizer)
        name = self.optimizer_names[index]
        norms = grad_norm(getattr(pl_module, name), self.norm_type)
        total = norms.pop(f"grad_{float(self.norm_type)}_norm_total", None)
        if total is None:
            return  # no gradients (e.g. a skipped loss term)
        pl_module.log(f"grad_norm/{name}", total, on_step=True)
        if self.per_parameter:
            pl_module.log_dict({f"{k}/{name}": v for k, v in norms.items()}, on_step=True)


class SFDThroughputMonitor(ThroughputMonitor):
    """Lightning's `ThroughputMonitor`, counting the images one SFD iteration generates.

    A batch here is only an iteration index, so the sample count comes from the module:
    `images_per_sample` (remain + forget = 2) × `model.batch_size` per device. Logged as
    `train/device/samples_per_sec`, `train/device/batches_per_sec` (iterations/s),
    `train/samples_per_sec` (all devices, when there are several), averaged over
    `window_size` iterations, plus the running `train/samples`, `train/batches`, `train/time`.
    SFD declares no FLOPs per batch, so Lightning's request for them is not repeated.

    Args:
        images_per_sample: generated images per batch element.
        window_size: iterations the rates are averaged over (the first rates appear then).
    """

    def __init__(self, images_per_sample: int = 2, window_size: int = 50) -> None:
        if window_size < 2:
            raise SFDConfigError(f"SFDThroughputMonitor window_size={window_size} must be >= 2")
        super().__init__(batch_size_fn=self._images_per_batch, window_size=window_size)
        self.images_per_sample = images_per_sample
        self._per_batch = 0

    def _images_per_batch(self, batch: Any) -> int:
        return self._per_batch

    @override
    def setup(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        self._per_batch = self.images_per_sample * int(pl_module.hparams.batch_size)
        super().setup(trainer, pl_module, stage)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, *args: Any
    ) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flops_per_batch.*")
            super().on_train_batch_end(trainer, pl_module, outputs, batch, *args)


def flat_run_keys(pl_module: Any) -> dict[str, str]:
    """What the run forgets, maps to and distils from, as flat strings wandb can filter on.

    Args:
        pl_module: the `SFDModule`.

    Returns:
        {"forget", "override", "teacher", "teacher_class", "conditions"}.
    """
    record = training_record(pl_module)
    conditions = record["conditions"]

    def joined(values: Any) -> str:
        return ", ".join(str(v) for v in values) if isinstance(values, list) else str(values)

    if conditions.get("concepts"):
        forget = joined(list(conditions["concepts"]))
        override = joined(list(conditions["concepts"].values()))
    elif conditions.get("keywords"):
        forget, override = joined(conditions["keywords"]), "the bare subject"
    else:
        forget = joined(conditions.get("forget", ""))
        override = joined(conditions.get("override", ""))
    return {
        "forget": forget,
        "override": override,
        "teacher": str(record["teacher"]["source"]),
        "teacher_class": record["teacher"]["class"],
        "conditions": conditions["class"],
    }


class LoggedSaveConfigCallback(SaveConfigCallback):
    """Saves the resolved config.yaml beside the run (as Lightning does) and logs it to wandb:
    the whole config under `config`, plus flat `forget`, `override`, `teacher`, `teacher_class`
    and `conditions` keys to filter and group runs by in the wandb UI."""

    @override
    def save_config(self, trainer: pl.Trainer, pl_module: Any, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        flat = flat_run_keys(pl_module)
        for logger in loggers:
            logger.log_hyperparams({"config": self.config.as_dict(), **flat})
