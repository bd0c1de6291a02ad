"""SalUn, saliency unlearning (Fan et al., ICLR 2024), data-free, on any σ-space teacher.

1. **Weight saliency.** The gradient of the diffusion loss on forget samples, summed over the
   forget set, marks the weights that matter most for the forget class: the `share` of weights
   with the largest |gradient| form the mask; all others stay bit-identical to the teacher.
2. **Masked fine-tuning with relabelled forget samples** plus a remain term:

       L = mean ‖ε_θ(x_f + σε, c_f) − sg ε_θ(x_f + σε, c_o)‖² + λ_r · mean ‖ε_θ(x_r + σε, c_r) − ε‖²

   i.e. the model's prediction for the forget condition is pulled to its own prediction for a
   substitute label c_o (SalUn's DDPM "random label" variant uses the next class, which is the
   override of `ClassConditions(forget=f, override=f+1)`; `override="random"` draws one per
   sample; for prompts it is the override prompt), while ordinary denoising on remain samples
   keeps the rest.

**Data-free here:** SalUn trains on real forget and remain images. This implementation has none:
before training, the frozen teacher generates `forget_samples` images of the forget conditions
and `remain_samples` of the remain conditions (deterministic DDIM), and these stand in for the
real images. Their cost counts as SalUn's training time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from sfd.baselines.common import TeacherCopyModule, eps_mse, stream
from sfd.baselines.sampling import sample_pool
from sfd.core.conditions import ConditionSampler
from sfd.errors import SFDConfigError, check_count, check_number
from sfd.teachers.base import Denoiser


def saliency_mask(
    network: nn.Module, forget_losses: Iterable[Callable[[], Tensor]], share: float
) -> dict[str, Tensor]:
    """SalUn's hard weight-saliency mask: the `share` of weights with the largest |Σ gradient|.

    Args:
        network: the network whose trainable parameters are ranked.
        forget_losses: one callable per forget batch, each returning that batch's scalar loss
            (gradients are summed over the batches before the absolute value, as SalUn does).
        share: the fraction of weights to keep trainable, in (0, 1]; exactly
            int(share · number of weights) are kept (ties broken by position).

    Returns:
        {parameter name: bool mask of its shape}, True where the weight may change.
    """
    check_number("share", share, low=0, high=1, low_open=True)
    params = {name: p for name, p in network.named_parameters() if p.requires_grad}
    gradients = {name: torch.zeros_like(p) for name, p in params.items()}
    for loss_of_batch in forget_losses:
        network.zero_grad(set_to_none=True)
        loss_of_batch().backward()
        for name, p in params.items():
            if p.grad is not None:
                gradients[name] += p.grad
    network.zero_grad(set_to_none=True)
    saliency = torch.cat([g.abs().flatten() for g in gradients.values()])  # (N,)
    keep = int(share * saliency.numel())
    flat = torch.zeros(saliency.numel(), dtype=torch.bool, device=saliency.device)
    # A stable descending sort ranks equal saliencies by position, so the count is exact.
    order = torch.sort(saliency, descending=True, stable=True).indices
    flat[order[:keep]] = True
    masks, start = {}, 0
    for name, g in gradients.items():
        masks[name] = flat[start : start + g.numel()].view_as(g)
        start += g.numel()
    return masks


class SalUnModule(TeacherCopyModule):
    """Saliency-masked fine-tuning of a teacher copy, on the teacher's own samples (data-free).

    Args:
        teacher: the frozen original D_φ (its copy is fine-tuned).
        conditions: remain / forget / override conditions (`ClassConditions`, `PromptConditions`).
        share: fraction of weights the saliency mask keeps trainable (SalUn: 0.5).
        lr: Adam learning rate (SalUn on CIFAR-10: 1e-4).
        betas: Adam betas (SalUn: (0.9, 0.999)).
        batch_size: forget samples and remain samples per step, each (SalUn: 128).
        lambda_remain: weight λ_r of the remain term, both terms per-pixel means. SalUn's
            CIFAR-10 α = 1e-3 weighs a per-image *sum* of 3,072 pixels against a per-pixel mean,
            ≈ 3 in these units.
        forget_samples: teacher samples of the forget conditions (the stand-in forget set).
        remain_samples: teacher samples of the remain conditions (the stand-in remain set).
        ddim_steps: DDIM steps of the teacher's samples.
        sample_guidance: guidance scale of the teacher's samples (1: none).
        grad_clip: gradient-norm clipping before masking (SalUn: 1.0; None: none).
        seed: seed of the samples, noise and batches.
        steps_per_epoch: iterations that make one Lightning epoch.
    """

    def __init__(
        self,
        teacher: Denoiser,
        conditions: ConditionSampler,
        share: float = 0.5,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        batch_size: int = 64,
        lambda_remain: float = 3.0,
        forget_samples: int = 256,
        remain_samples: int = 512,
        ddim_steps: int = 50,
        sample_guidance: float = 1.0,
        grad_clip: float | None = 1.0,
        seed: int = 0,
        steps_per_epoch: int = 1000,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["teacher", "conditions"])
        self.automatic_optimization = False
        self.check_settings(
            share, lr, betas, batch_size, lambda_remain, forget_samples, remain_samples,
            ddim_steps, sample_guidance, grad_clip, steps_per_epoch,
        )  # fmt: skip
        conditions.check(teacher.num_classes)
        conditions.bind(teacher)
        self.conditions = conditions
        self.copy_teacher(teacher)
        self.masks: dict[str, Tensor] = {}
        self.pool: dict[str, Any] = {}

    @staticmethod
    def check_settings(
        share: float = 0.5,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.999),
        batch_size: int = 64,
        lambda_remain: float = 3.0,
        forget_samples: int = 256,
        remain_samples: int = 512,
        ddim_steps: int = 50,
        sample_guidance: float = 1.0,
        grad_clip: float | None = 1.0,
        steps_per_epoch: int = 1000,
    ) -> None:
        """Raise `SFDConfigError` for a setting no SalUn run can use (before any teacher is loaded)."""
        check_number("share", share, low=0, high=1, low_open=True)
        check_number("lr", lr, low=0, low_open=True)
        for index, beta in enumerate(betas):
            check_number(f"betas[{index}]", beta, low=0, high=1, high_open=True)
        check_number("lambda_remain", lambda_remain, low=0)
        check_number("sample_guidance", sample_guidance)
        if grad_clip is not None:
            check_number("grad_clip", grad_clip, low=0, low_open=True)
        for name, count in (
            ("batch_size", batch_size),
            ("forget_samples", forget_samples),
            ("remain_samples", remain_samples),
            ("ddim_steps", ddim_steps),
            ("steps_per_epoch", steps_per_epoch),
        ):
            check_count(name, count)

    # --- before training: the stand-in data set and the saliency mask ---------------------------

    def on_fit_start(self) -> None:
        if not self.pool:
            self.pool = self.teacher_samples()
        if not self.masks:
            self.masks = saliency_mask(self.student, self._mask_losses(), self.hparams.share)

    def teacher_samples(self) -> dict[str, Any]:
        """The teacher's DDIM samples standing in for the forget and remain sets.

        Returns:
            {"forget": x_f (N_f, C, H, W), "forget_cond", "override_cond", "remain": x_r
            (N_r, C, H, W), "remain_cond"}.
        """
        hp = self.hparams
        rng = stream(hp.seed, 0, 1, self.device)
        forget = self.conditions.sample(hp.forget_samples, rng)
        remain = self.conditions.sample(hp.remain_samples, rng).remain

        def chunks(cond: Any, n: int) -> list[Any]:
            return [cond[i : i + hp.batch_size] for i in range(0, n, hp.batch_size)]

        def draw(cond: Any, n: int) -> Tensor:
            return sample_pool(
                self.teacher, chunks(cond, n), hp.ddim_steps, rng, hp.sample_guidance
            )

        return {
            "forget": draw(forget.forget, hp.forget_samples),
            "forget_cond": forget.forget,
            "override_cond": forget.override,
            "remain": draw(remain, hp.remain_samples),
            "remain_cond": remain,
        }

    def _mask_losses(self) -> list[Callable[[], Tensor]]:
        """The diffusion loss on each forget batch, true forget conditions, random σ."""
        hp = self.hparams
        rng = stream(hp.seed, 0, 2, self.device)
        table = self.teacher.sigma_table
        losses = []
        for start in range(0, hp.forget_samples, hp.batch_size):
            x0 = self.pool["forget"][start : start + hp.batch_size]
            cond = self.pool["forget_cond"][start : start + hp.batch_size]
            sigma = self._draw_sigma(len(x0), rng, table)
            noise = torch.randn(x0.shape, generator=rng, device=rng.device)

            def loss(
                x0: Tensor = x0, cond: Any = cond, sigma: Tensor = sigma, noise: Tensor = noise
            ) -> Tensor:
                x = x0 + sigma.view(-1, 1, 1, 1) * noise
                return eps_mse(self.student(x, sigma, cond), x0, sigma).mean()

            losses.append(loss)
        return losses

    # --- training --------------------------------------------------------------------------------

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        hp = self.hparams
        rng = stream(hp.seed, self.global_step, 0, self.device)
        forget_term = self.forget_loss(rng)
        remain_term = self.remain_loss(rng)
        loss = forget_term + hp.lambda_remain * remain_term

        optimizer = self.optimizers()
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        params = dict(self.student.named_parameters())
        if hp.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(list(params.values()), hp.grad_clip)
        for name, mask in self.masks.items():  # only salient weights move
            if params[name].grad is not None:
                params[name].grad.mul_(mask)
        optimizer.step()
        self.log_dict(
            {"salun/forget": forget_term.detach(), "salun/remain": remain_term.detach()},
            batch_size=hp.batch_size,
        )
        self.log("salun/loss", loss.detach(), prog_bar=True, batch_size=hp.batch_size)
        return loss.detach()

    def forget_loss(self, rng: torch.Generator) -> Tensor:
        """‖ε_θ(x_f + σε, c_f) − sg ε_θ(x_f + σε, c_o)‖², averaged (relabelled forget samples)."""
        index, _, sigma, x = self._noised_batch("forget", rng)
        with torch.no_grad():
            substitute = self.student(x, sigma, self.pool["override_cond"][index])
        return eps_mse(
            self.student(x, sigma, self.pool["forget_cond"][index]), substitute, sigma
        ).mean()

    def remain_loss(self, rng: torch.Generator) -> Tensor:
        """The ordinary denoising loss on the teacher's remain samples."""
        index, x0, sigma, x = self._noised_batch("remain", rng)
        return eps_mse(self.student(x, sigma, self.pool["remain_cond"][index]), x0, sigma).mean()

    def _noised_batch(
        self, role: str, rng: torch.Generator
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """A random batch of the `role` ("forget" / "remain") samples at random noise levels.

        Returns:
            (pool indices (B,), x0, σ (B,), x = x0 + σε).
        """
        pool = self.pool[role]
        index = torch.randint(
            len(pool), (self.hparams.batch_size,), generator=rng, device=rng.device
        )
        x0 = pool[index]
        sigma = self._draw_sigma(len(index), rng, self.teacher.sigma_table)
        x = x0 + sigma.view(-1, 1, 1, 1) * torch.randn(x0.shape, generator=rng, device=rng.device)
        return index, x0, sigma, x

    @staticmethod
    def _draw_sigma(n: int, rng: torch.Generator, table: Tensor | None) -> Tensor:
        """σ_t at DDPM timesteps t uniform over the whole schedule (the DDPM training loss)."""
        if table is None:
            raise SFDConfigError("SalUn needs a teacher with a discrete (VP) noise schedule")
        t = torch.randint(len(table), (n,), generator=rng, device=rng.device)
        return table.to(rng.device)[t]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Plain Adam without weight decay: a weight whose gradient is always zero never moves.
        return torch.optim.Adam(
            self.student.parameters(), lr=self.hparams.lr, betas=self.hparams.betas
        )
