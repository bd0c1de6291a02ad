"""ESD, Erasing Concepts from Diffusion Models (Gandikota et al., ICCV 2023), on any σ-space teacher.

A copy D_θ of the frozen teacher D_φ is fine-tuned so that, for the forget condition c_f, it
predicts what the teacher predicts *without* the condition pushed away from c_f by a negative
guidance scale η:

    ε_target = ε_φ(x, ∅) − η·(ε_φ(x, c_f) − ε_φ(x, ∅))
    ⇔ x0_target = D_φ(x, ∅) − η·(D_φ(x, c_f) − D_φ(x, ∅))   (the same x, so the same combination)

which is the teacher's classifier-free guidance at scale −η. The input x is where a DDIM
trajectory of the model being fine-tuned, conditioned on c_f, stands after a random number of its
steps, as in the ESD reference. The null condition is the teacher's null class (a class-conditional
teacher trained with label dropout) or the empty prompt (Stable Diffusion with `PromptConditions`,
ESD's own setting). The result is a multi-step model, sampled like the teacher.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sfd.baselines.common import (
    TRAIN_PARAMETERS,
    TeacherCopyModule,
    eps_mse,
    select_trainable,
    stream,
)
from sfd.core.conditions import ConditionSampler
from sfd.core.ddim import ddim_sigmas, ddim_trajectory
from sfd.errors import SFDConfigError, check_count, check_number
from sfd.teachers.base import Denoiser


def esd_target(teacher: Denoiser, x: Tensor, sigma: Tensor, cond: Any, eta: float) -> Tensor:
    """The ESD target x0_target = D_φ(x, ∅) − η·(D_φ(x, c_f) − D_φ(x, ∅)) (no gradient).

    Args:
        teacher: the frozen original denoiser (with a null condition).
        x: noisy samples, (B, C, H, W).
        sigma: their noise levels, (B,).
        cond: the forget conditions c_f.
        eta: the negative guidance scale η (ESD's default 1.0).

    Returns:
        the target, (B, C, H, W), float32.
    """
    with torch.no_grad():
        return teacher.guided(x, sigma, cond, -eta)


def esd_loss(x0_student: Tensor, target: Tensor, sigma: Tensor) -> Tensor:
    """ESD's ε-space MSE between the fine-tuned prediction and the target, per sample (B,)."""
    return eps_mse(x0_student, target, sigma)


class ESDModule(TeacherCopyModule):
    """Fine-tune a copy of the teacher with the ESD loss on forget conditions only.

    Args:
        teacher: the frozen original D_φ; it needs a null condition (a null class, or the empty
            prompt of a text teacher).
        conditions: draws the forget conditions (`ClassConditions` or `PromptConditions`;
            remain and override conditions are not used by ESD).
        negative_guidance: η (ESD: 1.0).
        lr: Adam learning rate (ESD: 1e-5 on Stable Diffusion).
        batch_size: forget samples per step (ESD: 1).
        ddim_steps: steps n of the trajectory whose random intermediate point is the loss input
            (ESD: 50).
        sample_guidance: guidance scale of that trajectory (ESD's start_guidance: 3 on Stable
            Diffusion; 1 samples the plain class-conditional model).
        train_parameters: "all", "xattn" (cross-attention only, ESD-x), "noxattn" (ESD-u) or
            "class_embedding" (the class-label embedding only, the class-model counterpart of
            ESD-x).
        grad_clip: clip the gradient norm to this value (None: no clipping, as ESD).
        seed: seed of the noise, step counts and conditions (each step depends only on the seed
            and the iteration).
        steps_per_epoch: iterations that make one Lightning epoch.
    """

    def __init__(
        self,
        teacher: Denoiser,
        conditions: ConditionSampler,
        negative_guidance: float = 1.0,
        lr: float = 1e-5,
        batch_size: int = 1,
        ddim_steps: int = 50,
        sample_guidance: float = 1.0,
        train_parameters: str = "all",
        grad_clip: float | None = None,
        seed: int = 0,
        steps_per_epoch: int = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["teacher", "conditions"])
        self.automatic_optimization = False
        self.check_settings(
            negative_guidance, lr, batch_size, ddim_steps, sample_guidance, train_parameters,
            grad_clip, steps_per_epoch,
        )  # fmt: skip
        conditions.check(teacher.num_classes)
        conditions.bind(teacher)
        self.conditions = conditions
        self.register_buffer(
            "sigmas", ddim_sigmas(teacher.sigma_table, ddim_steps), persistent=False
        )
        probe = conditions.sample(1, torch.Generator().manual_seed(0)).forget
        try:
            teacher.null_condition(probe)
        except ValueError as error:
            raise SFDConfigError(
                f"ESD needs a teacher with a null condition (a null class, trained with label "
                f"dropout); {type(teacher).__name__} has none"
            ) from error
        self.copy_teacher(teacher)
        self.trainable = select_trainable(self.student, train_parameters)

    @staticmethod
    def check_settings(
        negative_guidance: float = 1.0,
        lr: float = 1e-5,
        batch_size: int = 1,
        ddim_steps: int = 50,
        sample_guidance: float = 1.0,
        train_parameters: str = "all",
        grad_clip: float | None = None,
        steps_per_epoch: int = 1000,
    ) -> None:
        """Raise `SFDConfigError` for a setting no ESD run can use (before any teacher is loaded)."""
        check_number("negative_guidance", negative_guidance, low=0)
        check_number("lr", lr, low=0, low_open=True)
        check_number("sample_guidance", sample_guidance)
        if grad_clip is not None:
            check_number("grad_clip", grad_clip, low=0, low_open=True)
        for name, count in (
            ("batch_size", batch_size),
            ("ddim_steps", ddim_steps),
            ("steps_per_epoch", steps_per_epoch),
        ):
            check_count(name, count)
        if train_parameters not in TRAIN_PARAMETERS:
            raise SFDConfigError(
                f"train_parameters={train_parameters!r} is not allowed; choose from {TRAIN_PARAMETERS}"
            )

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        hp = self.hparams
        rng = stream(hp.seed, self.global_step, 0, self.device)
        cond = self.conditions.sample(hp.batch_size, rng).forget
        # Where the fine-tuned model's own trajectory for c_f stands after `steps` of its steps.
        steps = int(torch.randint(hp.ddim_steps, (1,), generator=rng, device=rng.device))
        z = torch.randn(
            (hp.batch_size, *self.teacher.sample_shape), generator=rng, device=rng.device
        )
        self.student.eval()
        with torch.no_grad():
            x = ddim_trajectory(self.student, z, cond, self.sigmas[: steps + 1], hp.sample_guidance)
        self.student.train()
        sigma = self.sigmas[steps].expand(hp.batch_size)  # (B,)

        target = esd_target(self.teacher, x, sigma, cond, hp.negative_guidance)
        loss = esd_loss(self.student(x, sigma, cond), target, sigma).mean()

        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if hp.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._trainable_parameters(), hp.grad_clip)
        optimizer.step()
        self.log("esd/loss", loss.detach(), prog_bar=True, batch_size=hp.batch_size)
        self.log("esd/sigma", sigma[0], batch_size=hp.batch_size)
        return loss.detach()

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self._trainable_parameters(), lr=self.hparams.lr)
