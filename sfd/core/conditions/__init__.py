"""What a data-free SFD batch is made of: remain, forget and override conditions (docs/method.md §3).

`base` holds the sampler interface, `classes` the class-label sampler, `text` the prompt samplers
and `text_condition` `TextCondition`, the batch type of text-conditioned denoisers.
"""

from sfd.core.conditions.base import (
    GUIDED_ROLES,
    ConditionBatch,
    ConditionPreview,
    ConditionSampler,
)
from sfd.core.conditions.classes import ClassConditions, ClassEmbeddingCondition
from sfd.core.conditions.text import (
    NudityConditions,
    PromptConditions,
    read_prompt_file,
    replace_concept,
)
from sfd.core.conditions.text_condition import TextCondition

__all__ = [
    "GUIDED_ROLES",
    "ClassConditions",
    "ClassEmbeddingCondition",
    "ConditionBatch",
    "ConditionPreview",
    "ConditionSampler",
    "NudityConditions",
    "PromptConditions",
    "TextCondition",
    "read_prompt_file",
    "replace_concept",
]
