"""What a data-free SFD batch is made of: remain, forget and override conditions (docs/method.md §3).

`base` holds the sampler interface, `classes` the class-label sampler, `text` the prompt samplers
and `TextCondition`, the batch type of text-conditioned denoisers.
"""

from sfd.core.conditions.base import ConditionBatch, ConditionPreview, ConditionSampler
from sfd.core.conditions.classes import ClassConditions
from sfd.core.conditions.text import (
    NudityConditions,
    PromptConditions,
    TextCondition,
    read_prompt_file,
    replace_concept,
)

__all__ = [
    "ClassConditions",
    "ConditionBatch",
    "ConditionPreview",
    "ConditionSampler",
    "NudityConditions",
    "PromptConditions",
    "TextCondition",
    "read_prompt_file",
    "replace_concept",
]
