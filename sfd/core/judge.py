"""A data-free judge of forgetting: the frozen teacher as an implicit classifier (docs/method.md §8).

A generator sample x for the forget condition c_f is *judged forget* when the teacher denoises it
better under c_f than under its override c_o:

    e(x, c) = mean over levels σ_l and draws ε_ld of ‖D(x + σ_l·ε_ld, σ_l, c) − x‖² / σ_l²  (per pixel)
    judged forget  ⇔  e(x, c_f) < e(x, c_o)

(the ε-space denoising error, a Monte-Carlo bound of −log p(x | c) up to terms that do not depend
on c, compared between two conditions: a diffusion classifier restricted to the pair that matters).
Every draw is fixed by a seed, so successive probes of a changing generator differ only by the
generator. Nothing here needs a classifier or a real image; it works for every teacher and
condition sampler. The remain drift is the RMS distance of the generator's remain samples on fixed
noise to the same samples at a reference time (the start of the run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sfd.core.conditions import ConditionBatch, ConditionSampler
from sfd.errors import SFDConfigError, check_count, check_number
from sfd.teachers.base import Denoiser

DEFAULT_SIGMAS = (
    0.4,
    0.8,
    1.6,
)  # where the condition decides the denoiser's answer (data in [-1, 1])


def check_judge_settings(num_samples: int, sigmas: Any, draws: int) -> tuple[float, ...]:
    """Validate the judge's settings (one line naming the bad value); the levels as floats."""
    check_count("num_samples", num_samples)
    check_count("draws", draws)
    levels = tuple(sigmas) if isinstance(sigmas, (list, tuple)) else (sigmas,)
    if not levels:
        raise SFDConfigError("sigmas=[] must name at least one noise level")
    return tuple(check_number("sigmas", s, low=0, low_open=True) for s in levels)


def to_device(cond: Any, device: torch.device) -> Any:
    """A condition batch (label tensor or text condition) on `device`."""
    return cond.to(device)


@dataclass
class JudgeDraws:
    """The fixed draws of every probe of a run.

    Attributes:
        conditions: N remain, forget and override conditions.
        z_forget: generator noise of the forget samples, (N, C, H, W).
        z_remain: generator noise of the remain samples, (N, C, H, W).
        sigmas: the noise level of each judge draw, (K,) (each level repeated `draws` times).
        noise: the judge's noise, (K, N, C, H, W).
    """

    conditions: ConditionBatch
    z_forget: Tensor
    z_remain: Tensor
    sigmas: Tensor
    noise: Tensor

    @classmethod
    def draw(
        cls,
        conditions: ConditionSampler,
        shape: tuple[int, ...],
        num_samples: int,
        sigmas: tuple[float, ...],
        draws: int,
        seed: int,
        device: torch.device | str = "cpu",
    ) -> JudgeDraws:
        """Draw everything from `seed` on the CPU (identical on every machine), then move it."""
        generator = torch.Generator().manual_seed(seed)
        batch = conditions.sample(num_samples, generator)
        z_forget = torch.randn((num_samples, *shape), generator=generator)
        z_remain = torch.randn((num_samples, *shape), generator=generator)
        levels = torch.tensor(sigmas, dtype=torch.float32).repeat_interleave(draws)  # (K,)
        noise = torch.randn((len(levels), num_samples, *shape), generator=generator)
        device = torch.device(device)
        moved = ConditionBatch(*(to_device(c, device) for c in vars(batch).values()))
        return cls(
            moved, z_forget.to(device), z_remain.to(device), levels.to(device), noise.to(device)
        )


@torch.no_grad()
def denoising_error(teacher: Denoiser, x: Tensor, cond: Any, draws: JudgeDraws) -> Tensor:
    """e(x, c): the teacher's ε-space denoising error of each sample, averaged over the draws, (N,)."""
    total = torch.zeros(x.shape[0], device=x.device)
    for sigma, eps in zip(draws.sigmas, draws.noise, strict=True):
        x0_hat = teacher(x + sigma * eps, sigma, cond)
        total += (x0_hat - x.float()).square().flatten(1).mean(1) / sigma.square()
    return total / len(draws.sigmas)


@torch.no_grad()
def judged_forget(
    teacher: Denoiser, x: Tensor, forget: Any, override: Any, draws: JudgeDraws
) -> Tensor:
    """Whether the teacher judges each sample x (N, C, H, W) to be of `forget` rather than
    `override` (boolean, (N,)): `judged_forget_among` with the one rival."""
    return judged_forget_among(teacher, x, forget, [override], draws)


@torch.no_grad()
def judged_forget_among(
    teacher: Denoiser, x: Tensor, forget: Any, rivals: list[Any], draws: JudgeDraws
) -> Tensor:
    """Whether the teacher denoises each sample x (N, C, H, W) better under `forget` than under
    every one of `rivals` (the teacher as a diffusion classifier over them all; boolean, (N,))."""
    error = denoising_error(teacher, x, forget, draws)
    return error < torch.stack([denoising_error(teacher, x, c, draws) for c in rivals]).amin(0)


@torch.no_grad()
def forget_rate(
    teacher: Denoiser,
    generator: Any,
    draws: JudgeDraws,
    attacked: Any | None = None,
    sampled: str = "forget",
) -> float:
    """The share of the generator's samples the teacher judges forget (0..1).

    Args:
        teacher: the frozen teacher.
        generator: the generator under judgement.
        draws: the fixed draws.
        attacked: None, or (condition, forget, rivals), N rows each: the generator then draws
            under `condition` (e.g. a forget condition with an attacker's soft prompt,
            `AdversarialTraining.probe_conditions`) and each sample is judged forget only where
            its plain `forget` condition beats every rival (a list of conditions: the override
            and remain conditions; one condition: the override alone).
        sampled: without `attacked`, "forget": of its forget-condition samples; "override": of
            its samples for the override conditions, on the same noise: the judge's floor, how
            often it reads what the generator makes for the override as the forget concept (0
            where the two are well apart; on pairs the teacher itself confuses, what a generator
            that draws the override exactly for the forget condition is judged).
    """
    if sampled not in ("forget", "override") or (attacked is not None and sampled != "forget"):
        raise ValueError(
            f"sampled={sampled!r}: 'forget' or 'override' (only 'forget' with attacked)"
        )
    conds = draws.conditions
    # the plain judge: the samples for `sampled`, forget against its override
    condition, forget, rivals = attacked or (getattr(conds, sampled), conds.forget, conds.override)
    x = generator(draws.z_forget, condition)
    rivals = rivals if isinstance(rivals, list) else [rivals]
    return float(judged_forget_among(teacher, x, forget, rivals, draws).float().mean())


@torch.no_grad()
def remain_samples(generator: Any, draws: JudgeDraws) -> Tensor:
    """The generator's remain samples on the fixed noise, (N, C, H, W), float32."""
    return generator(draws.z_remain, draws.conditions.remain).float()


def remain_drift(samples: Tensor, reference: Tensor) -> float:
    """RMS distance per element between remain samples and their reference (data units)."""
    return float((samples - reference).square().mean().sqrt())
