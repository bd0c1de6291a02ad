"""The method: conditions, σ sampling, the SFD losses, the one-step generator and `SFDModule`.

Everything here is a function of σ-space denoisers (`sfd.teachers`); nothing here knows
timesteps, alphas_cumprod, Lightning's CLI, exports or evaluation.
"""

from sfd.core.checkpoint_files import load_checkpoint_safely
from sfd.core.conditions import (
    ClassConditions,
    ConditionBatch,
    ConditionPreview,
    ConditionSampler,
    NudityConditions,
    PromptConditions,
    TextCondition,
)
from sfd.core.ddim import ddim_sigmas, ddim_trajectory, sample_ddim
from sfd.core.generator import OneStepGenerator, generator_from_checkpoint
from sfd.core.losses import LossTerms, fake_score_loss, generator_loss
from sfd.core.module import SFDModule, default_adam
from sfd.core.sigma import (
    LogitNormalTime,
    LogNormalSigma,
    LogUniformSigma,
    SigmaSampler,
    UniformTime,
    UniformTimestepSigma,
)

__all__ = [
    "ClassConditions",
    "ConditionBatch",
    "ConditionPreview",
    "ConditionSampler",
    "LogNormalSigma",
    "LogitNormalTime",
    "LogUniformSigma",
    "LossTerms",
    "NudityConditions",
    "OneStepGenerator",
    "PromptConditions",
    "SFDModule",
    "SigmaSampler",
    "TextCondition",
    "UniformTime",
    "UniformTimestepSigma",
    "ddim_sigmas",
    "ddim_trajectory",
    "default_adam",
    "fake_score_loss",
    "generator_from_checkpoint",
    "generator_loss",
    "load_checkpoint_safely",
    "sample_ddim",
]
