"""diffusers pipelines of exported one-step generators, and export / loading.

An exported folder's model_index.json names the standalone pipeline file it carries in diffusers'
custom-pipeline form (`["one_step_pipeline", "OneStepPipeline"]`), so it loads without `sfd`
through `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`; `load_pipeline` and
the classes' own `from_pretrained` load it as sfd's classes. Importing this package also registers
both classes with diffusers, so that `DiffusionPipeline.from_pretrained` resolves folders written
before the list form (a plain `_class_name`), which diffusers looks up by name in its own namespace.
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
from sfd.pipelines.one_step_sdxl import OneStepSDXLPipeline
from sfd.pipelines.one_step_text import OneStepTextPipeline


def register_with_diffusers() -> None:
    """Make the exported pipeline classes resolvable by name from diffusers' namespace."""
    for cls in (OneStepPipeline, OneStepTextPipeline, OneStepSDXLPipeline):
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
    "OneStepSDXLPipeline",
    "OneStepTextPipeline",
    "PretrainedOneStepGenerator",
    "export_checkpoint",
    "load_generator",
    "load_pipeline",
    "register_with_diffusers",
    "save_generator",
]
