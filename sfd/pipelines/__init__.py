"""diffusers pipelines of exported one-step generators, and export / loading.

Importing this package registers `OneStepPipeline` and `OneStepTextPipeline` with diffusers, so
that `diffusers.DiffusionPipeline.from_pretrained(folder)` resolves the `_class_name` of an
exported folder's model_index.json (diffusers looks pipeline classes up by name in its own
namespace; it has no plug-in mechanism for pipelines of other libraries). Without `sfd`, a folder
loads through the standalone pipeline file it carries (`custom_pipeline=...`).
"""

import diffusers

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


def register_with_diffusers() -> None:
    """Make the exported pipeline classes resolvable by name from diffusers' namespace."""
    for cls in (OneStepPipeline, OneStepTextPipeline):
        existing = getattr(diffusers, cls.__name__, None)
        if existing is not None and existing is not cls:
            raise RuntimeError(
                f"diffusers {diffusers.__version__} already has a {cls.__name__}; "
                "sfd's pipeline class of that name would shadow it"
            )
        setattr(diffusers, cls.__name__, cls)


register_with_diffusers()

__all__ = [
    "PIPELINE_FOR_KIND",
    "OneStepPipeline",
    "OneStepTextPipeline",
    "PretrainedOneStepGenerator",
    "export_checkpoint",
    "load_generator",
    "load_pipeline",
    "register_with_diffusers",
    "save_generator",
]
