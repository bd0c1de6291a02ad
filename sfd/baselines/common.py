"""Plumbing shared by the fine-tuning baselines: seeded streams, trainable parts, the ε-MSE,
setting checks and the Lightning side of fine-tuning a copy of a frozen teacher."""

from __future__ import annotations

import copy
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader

from sfd.baselines.method import Unlearned
from sfd.core.loop import IterationStream
from sfd.core.losses import eps_mse as eps_mse  # the ε-MSE of the baselines' losses
from sfd.core.module_hooks import TEACHER_PREFIX
from sfd.errors import SFDConfigError
from sfd.teachers.base import Denoiser

# Which weights a fine-tuning baseline may change (ESD's `train_method`, in diffusers names):
# "xattn" = the cross-attention (attn2) of text UNets, for one concept; "noxattn" = all but the
# cross-attention, time embedding and output layers, for concepts that are not tied to a word;
# "class_embedding" = the class-label embedding of class-conditional UNets, the pathway that reads
# the condition (the class-conditional counterpart of "xattn").
TRAIN_PARAMETERS = ("all", "xattn", "noxattn", "class_embedding")
NOXATTN_EXCLUDED = ("attn2.", "time_embedding.", "conv_norm_out.", "conv_out.")


def stream(seed: int, iteration: int, phase: int, device: torch.device) -> torch.Generator:
    """A random stream that depends only on (seed, iteration, phase), so a run is reproducible."""
    value = (seed * 1_000_003 + iteration) * 7 + phase
    return torch.Generator(device=device).manual_seed(value % (2**63))


def select_trainable(network: nn.Module, which: str) -> list[str]:
    """Make only the chosen parameters of `network` trainable; return their names.

    Args:
        network: the copy being fine-tuned.
        which: one of `TRAIN_PARAMETERS`.

    Returns:
        names (as in `named_parameters`) of the trainable parameters, in order.
    """
    if which not in TRAIN_PARAMETERS:
        raise SFDConfigError(
            f"train_parameters={which!r} is not allowed; choose from {TRAIN_PARAMETERS}"
        )
    chosen = []
    for name, param in network.named_parameters():
        if which == "all":
            keep = True
        elif which == "xattn":
            keep = "attn2." in name
        elif which == "class_embedding":
            keep = "class_embedding." in name
        else:
            keep = not any(part in name for part in NOXATTN_EXCLUDED)
        param.requires_grad_(keep)
        if keep:
            chosen.append(name)
    if not chosen:
        raise SFDConfigError(
            f"train_parameters={which!r} selects no weight of {type(network).__name__} "
            "('xattn' needs a text UNet with cross-attention, 'class_embedding' a class UNet)"
        )
    return chosen


class TeacherCopyModule(pl.LightningModule):
    """A baseline that fine-tunes `student`, a copy of the frozen original `teacher`.

    Subclasses call `copy_teacher` in their constructor and keep `steps_per_epoch` among their
    hyperparameters. This class supplies the rest: the result, the iteration stream, the teacher
    kept in eval mode, and checkpoints without the teacher (it is reloaded from its source).
    """

    teacher: Denoiser
    student: Denoiser

    def copy_teacher(self, teacher: Denoiser) -> None:
        """Freeze `teacher` and make a fully trainable copy of it the student."""
        self.teacher = teacher.requires_grad_(False).eval()
        self.student = copy.deepcopy(teacher).requires_grad_(True)

    def unlearned(self) -> Unlearned:
        """The fine-tuned denoiser (sampled with the teacher's multi-step sampler)."""
        return Unlearned(self.student)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(IterationStream(self.hparams.steps_per_epoch), batch_size=None)

    def train(self, mode: bool = True) -> TeacherCopyModule:
        super().train(mode)
        self.teacher.eval()  # frozen whatever Lightning toggles
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The frozen teacher is reloaded from its source, never stored.
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key, value in self.teacher.state_dict().items():
            state.setdefault(TEACHER_PREFIX + key, value)
