"""Monitoring callbacks on the manual-optimisation module: gradient norms are the ones clipping
sees (unscaled, before clipping, of the stepped network only), throughput counts the images of
an SFD iteration, and Lightning's LearningRateMonitor names both optimizers."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins.precision import MixedPrecision

from sfd.core.conditions import ClassConditions
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.teachers import PretrainedVPTeacher
from sfd.training.callbacks import GradientNorms, SFDThroughputMonitor


class MemoryLogger(Logger):
    """Keeps every logged metric as (step, key, value)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, str, float]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.rows += [(step, k, float(v)) for k, v in metrics.items()]

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        return None

    def values(self, key: str) -> list[float]:
        return [v for _, k, v in self.rows if k == key]


class RecordsClipping(SFDModule):
    """Records the gradient norm of the stepped optimizer's parameters where clipping happens."""

    clip_norms: list[tuple[int, float]]

    def clip_gradients(self, optimizer: Any, *args: Any, **kwargs: Any) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        index = [o.optimizer for o in self.optimizers()].index(optimizer)
        self.clip_norms.append((index, float(norm)))
        super().clip_gradients(optimizer, *args, **kwargs)


@pytest.fixture()
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(teacher_dir: Path, callbacks: list, steps: int, **trainer_kwargs) -> tuple:
    sgd = partial(torch.optim.SGD, lr=1e-2)
    module = RecordsClipping(
        PretrainedVPTeacher(str(teacher_dir)),
        ClassConditions(forget=0, override=1),
        UniformTimestepSigma(38, 712),
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        batch_size=3,
        fake_optimizer=sgd,
        generator_optimizer=partial(torch.optim.SGD, lr=2e-2),
        ema_decay=None,
        fake_grad_clip=1e-3,  # clips hard: a norm read after clipping would be tiny
        generator_grad_clip=1e-3,
    )
    module.clip_norms = []
    logger = MemoryLogger()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=logger,
        log_every_n_steps=1,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module)
    return module, logger


def test_gradient_norms_are_unscaled_and_before_clipping(tiny_teacher_dir, one_thread) -> None:
    # 16-mixed with a real GradScaler on CPU: a norm read before unscaling would be 256x larger.
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    plugins = [MixedPrecision("16-mixed", "cpu", scaler=scaler)]
    module, logger = run(tiny_teacher_dir, [GradientNorms()], steps=3, plugins=plugins)
    expected = {
        name: [norm for index, norm in module.clip_norms if index == i]
        for i, name in enumerate(("fake_score", "generator"))
    }
    for name, norms in expected.items():
        logged = logger.values(f"grad_norm/{name}")
        assert len(logged) == 3 == len(norms)
        assert min(norms) > 1e-3 * 100  # far above what clipping by 1e-3 leaves
        torch.testing.assert_close(torch.tensor(logged), torch.tensor(norms), rtol=1e-5, atol=0)


def test_gradient_norm_names_must_match_the_optimizers(tiny_teacher_dir, one_thread) -> None:
    from sfd.errors import SFDConfigError

    with pytest.raises(SFDConfigError, match="optimizer_names"):
        run(tiny_teacher_dir, [GradientNorms(optimizer_names=("generator",))], steps=1)


def test_throughput_counts_sfd_images_and_lr_monitor_names_both(tiny_teacher_dir, one_thread):
    callbacks = [SFDThroughputMonitor(window_size=2), LearningRateMonitor("step")]
    _, logger = run(tiny_teacher_dir, callbacks, steps=4)
    # 2 images (remain + forget) × batch 3 per iteration.
    assert logger.values("train/samples") == [6.0, 12.0, 18.0, 24.0]
    assert logger.values("train/batches") == [1.0, 2.0, 3.0, 4.0]
    rates = logger.values("train/device/samples_per_sec")
    iterations = logger.values("train/device/batches_per_sec")
    assert len(rates) == 3 and all(r > 0 for r in rates)  # from the 2nd iteration (window 2)
    for rate, per_iteration in zip(rates, iterations, strict=True):
        assert rate == pytest.approx(6 * per_iteration)
    assert set(logger.values("lr-SGD")) == {1e-2}  # the fake score's optimizer comes first
    assert set(logger.values("lr-SGD-1")) == {2e-2}


def test_throughput_window_must_hold_two_iterations() -> None:
    from sfd.errors import SFDConfigError

    with pytest.raises(SFDConfigError, match="window_size"):
        SFDThroughputMonitor(window_size=1)


def test_flat_run_keys_for_prompt_conditions(sd_teacher) -> None:
    from sd_fixtures import celebrity_conditions

    from sfd.training.callbacks import flat_run_keys

    module = SFDModule(sd_teacher, celebrity_conditions(), UniformTimestepSigma(20, 980))
    keys = flat_run_keys(module)
    assert keys["forget"] == "Brad Pitt, angelina jolie"
    assert keys["override"] == "a middle aged man, a middle aged woman"
    assert keys["teacher"] == sd_teacher.pipeline
    assert keys["teacher_class"] == "StableDiffusionTeacher"
    assert keys["conditions"] == "PromptConditions"
