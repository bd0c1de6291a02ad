"""What every forgetting method hands to evaluation, whatever its loss: the network to sample.

A forgetting method is a `LightningModule` fitted by a `Trainer`. Afterwards `unlearned(module)`
says what to evaluate: a one-step generator (SFD, distillation; sampled directly, 1 network
evaluation per image) or a denoiser that still needs a multi-step sampler (ESD, SalUn, Retrain;
sampled with the teacher's sampler, DDIM).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sfd.core.generator import OneStepGenerator
from sfd.core.module import SFDModule
from sfd.teachers.base import Denoiser


@dataclass
class Unlearned:
    """The result of a forgetting method.

    Attributes:
        network: a `OneStepGenerator` (sampled in one evaluation) or a `Denoiser` (sampled with
            a multi-step sampler, as the teacher is).
    """

    network: OneStepGenerator | Denoiser

    @property
    def one_step(self) -> bool:
        """Whether the network is a one-step generator."""
        return isinstance(self.network, OneStepGenerator)


@runtime_checkable
class ForgettingMethod(Protocol):
    """A `LightningModule` that removes classes or concepts: `Trainer.fit` it, then ask `unlearned()`."""

    def unlearned(self) -> Unlearned:
        """The network to evaluate now (also during training, for forgetting curves)."""
        ...


def unlearned(module: object) -> Unlearned:
    """The network to evaluate of any forgetting module: SFD's (EMA) generator or a baseline's.

    Args:
        module: an `SFDModule` or a module implementing `ForgettingMethod`.

    Returns:
        what to sample.
    """
    if isinstance(module, SFDModule):
        return Unlearned(module.export_generator)
    if isinstance(module, ForgettingMethod):
        return module.unlearned()
    raise TypeError(f"{type(module).__name__} is neither an SFDModule nor a ForgettingMethod")
