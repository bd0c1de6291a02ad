"""Score Forgetting Distillation: data-free unlearning of classes and concepts in diffusion models.

The public API is importable from here (`from sfd import SFDModule, ClassConditions, ...`). Each
name is imported on first use, so `import sfd` (and the `sfd` command's `--help`) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    # the method
    "SFDModule": "sfd.core.module",
    "AdversarialSettings": "sfd.core.adversarial_settings",
    "ClassConditions": "sfd.core.conditions",
    "PromptConditions": "sfd.core.conditions",
    "NudityConditions": "sfd.core.conditions",
    "ConditionSampler": "sfd.core.conditions",
    "TextCondition": "sfd.core.conditions",
    "UniformTimestepSigma": "sfd.core.sigma",
    "LogNormalSigma": "sfd.core.sigma",
    "LogUniformSigma": "sfd.core.sigma",
    "LogitNormalTime": "sfd.core.sigma",
    "UniformTime": "sfd.core.sigma",
    "SigmaSampler": "sfd.core.sigma",
    "OneStepGenerator": "sfd.core.generator",
    "generator_from_checkpoint": "sfd.core.generator",
    # teachers
    "Denoiser": "sfd.teachers",
    "PretrainedVPTeacher": "sfd.teachers",
    "PretrainedEDMTeacher": "sfd.teachers",
    "StableDiffusionTeacher": "sfd.teachers",
    "StableDiffusionXLTeacher": "sfd.teachers",
    "StableDiffusionLoRAFakeScore": "sfd.teachers",
    "SD3Teacher": "sfd.teachers",
    "FluxTeacher": "sfd.teachers",
    # exports
    "OneStepPipeline": "sfd.pipelines",
    "OneStepTextPipeline": "sfd.pipelines",
    "OneStepSDXLPipeline": "sfd.pipelines",
    "PretrainedOneStepGenerator": "sfd.pipelines",
    "export_checkpoint": "sfd.pipelines",
    "load_generator": "sfd.pipelines",
    "load_pipeline": "sfd.pipelines",
    "save_generator": "sfd.pipelines",
    # training with a plain lightning.Trainer
    "AtomicCheckpointIO": "sfd.training.checkpoint_io",
    "find_resume_checkpoint": "sfd.training.resume",
    "AlternatingDDPStrategy": "sfd.training.strategies",
    "ResumableWandbLogger": "sfd.training.loggers",
    "SampleGrids": "sfd.training.callbacks",
    "GradientNorms": "sfd.training.callbacks",
    "SFDThroughputMonitor": "sfd.training.callbacks",
    "ForgettingCurve": "sfd.eval.forgetting_curve",
    "IterationProgressBar": "sfd.training.progress",
    "quiet_design_warnings": "sfd.training.progress",
    # errors
    "SFDConfigError": "sfd.errors",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sfd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_PUBLIC[name]), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
