"""diffusers pipelines of exported one-step generators, and export / loading."""

from sfd.pipelines.io import (
    PIPELINE_FOR_KIND,
    PretrainedOneStepGenerator,
    export_checkpoint,
    load_generator,
    load_pipeline,
    save_generator,
)
from sfd.pipelines.one_step import OneStepPipeline
from sfd.pipelines.one_step_text import OneStepTextPipeline

__all__ = [
    "PIPELINE_FOR_KIND",
    "OneStepPipeline",
    "OneStepTextPipeline",
    "PretrainedOneStepGenerator",
    "export_checkpoint",
    "load_generator",
    "load_pipeline",
    "save_generator",
]
