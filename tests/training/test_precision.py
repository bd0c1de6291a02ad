"""Mixed precision on the manual-optimisation path: bf16-mixed fits on CPU, and with a gradient
scaler (16-mixed) both optimizers' gradients are unscaled before they are clipped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import SCRIPTS
from lightning.pytorch.plugins.precision import MixedPrecision

sys.path.insert(0, str(SCRIPTS))
from cluster_helpers import tiny_run_config, write_config  # noqa: E402

from sfd.cli import main  # noqa: E402
from sfd.core.conditions import ClassConditions  # noqa: E402
from sfd.core.module import SFDModule  # noqa: E402
from sfd.core.sigma import UniformTimestepSigma  # noqa: E402
from sfd.teachers import PretrainedVPTeacher  # noqa: E402


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """In-process fits use one thread, like the subprocess tests (the machine may be shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_bf16_mixed_fit_on_cpu(tiny_teacher_dir: Path, tmp_path: Path, one_thread: None) -> None:
    root = tmp_path / "run"
    config = tiny_run_config(tiny_teacher_dir, root, max_steps=2, checkpoint_every=2)
    config["trainer"]["precision"] = "bf16-mixed"
    assert main(["fit", "-c", str(write_config(tmp_path / "bf16.yaml", config))]) == 0
    [last] = root.rglob("last.ckpt")
    checkpoint = torch.load(last, weights_only=True)
    assert checkpoint["global_step"] == 2
    initial = PretrainedVPTeacher(str(tiny_teacher_dir)).state_dict()
    for prefix in ("generator.denoiser.", "fake_score."):
        weights = {
            k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)
        }
        assert all(v.dtype == torch.float32 for v in weights.values())  # fp32 master weights
        assert all(torch.isfinite(v).all() for v in weights.values())
        assert any(not torch.equal(weights[k], initial[k]) for k in initial), prefix


class ClipBeforeUnscale(SFDModule):
    """Control: clips right after backward, i.e. the still-scaled gradients."""

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        super().manual_backward(loss, *args, **kwargs)
        for p in self.parameters():
            if p.requires_grad and p.grad is not None:
                p.grad.clamp_(-self.hparams.fake_grad_clip, self.hparams.fake_grad_clip)


def update_norm(teacher_dir: Path, module_class: type[SFDModule], plugins: list[Any]) -> float:
    """Norm of the change of all trainable weights after one SGD iteration."""
    sgd = partial(torch.optim.SGD, lr=1e-2)
    module = module_class(
        PretrainedVPTeacher(str(teacher_dir)),
        ClassConditions(forget=0, override=1),
        UniformTimestepSigma(38, 712),
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        batch_size=2,
        fake_optimizer=sgd,
        generator_optimizer=sgd,
        ema_decay=None,
        fake_grad_clip=1.0,
        generator_grad_clip=1.0,
    )
    trainable = [p for name, p in module.named_parameters() if not name.startswith("teacher.")]
    before = [p.detach().clone() for p in trainable]
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=1,
        plugins=plugins,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    squares = sum(((p.detach() - b) ** 2).sum() for p, b in zip(trainable, before, strict=True))
    return float(squares.sqrt())


def test_gradient_scaler_unscales_before_clipping_for_both_optimizers(
    tiny_teacher_dir: Path, one_thread: None
) -> None:
    # 16-mixed with a real GradScaler on CPU (fp16 autocast) goes through the same precision
    # plugin calls as on a GPU. A scale of 256 keeps the tiny model's fp16 gradients finite.
    def scaled() -> list[Any]:
        scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
        return [MixedPrecision("16-mixed", "cpu", scaler=scaler)]

    reference = update_norm(tiny_teacher_dir, SFDModule, [])
    mixed = update_norm(tiny_teacher_dir, SFDModule, scaled())
    wrong = update_norm(tiny_teacher_dir, ClipBeforeUnscale, scaled())
    assert reference > 0
    assert abs(mixed / reference - 1) < 0.05  # same update up to fp16 rounding
    assert wrong / reference < 0.2  # clipping scaled gradients would shrink it ~256x
