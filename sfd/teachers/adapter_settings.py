"""The settings of the shared-base mode (`model.adapters`): adapter kind, rank, α, layers, base dtype.

`sfd.teachers.adapters` builds the adapters from them; `sfd.teachers.adapter_io` saves, loads and
merges them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoKrConfig, LoraConfig, PeftConfig

from sfd.errors import SFDConfigError, check_number

GENERATOR_ADAPTER = "generator"
FAKE_SCORE_ADAPTER = "fake_score"
EMA_ADAPTER = "ema"
ADAPTER_KINDS = ("lora", "dora", "lokr")
BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Linear and convolution layers of diffusers UNets and transformers: attention projections,
# feed-forward layers, the residual blocks' convolutions and time embeddings. Names match as
# PEFT matches them (the module name or its last components); absent ones are skipped.
DEFAULT_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
)
# Default α per unit of rank (α = 4 r, the update scaled by 4). Adam moves each factor's entries by
# about the learning rate per step whatever α is, so LoRA's update (α/r)·B·A grows slower than a full
# weight under the same optimizer at α = r; α/r scales the adapters' effective learning rate. 16 r
# trained stage 2 from the teacher fastest (digits demo, 200 iterations: remain FID 6.8x the
# teacher's at α = r, 4.5x at 4r, 3.5x at 8r, 3.1x at 16r), but diverged in the demo's stage 1 (600
# iterations at the generator's lr 3e-4: the losses jump at ~400 and the generator's FID goes from
# 2.4x to 68x; docs/results/shared_base_stage1.md). 4 r keeps the per-weight step of LoRA near a
# full copy's: stage 1 ends at 1.10x (6.66x at 16 r; full copies 0.97x), docs/results/shared_base.md.
# Stage 2 needs a faster fake score than full copies' (the demos' sfd_digits_stage2_shared_base.yaml):
# docs/results/shared_base_stage2.md.
ALPHA_PER_RANK = 4


@dataclass
class AdapterSettings:
    """The shared-base mode of `SFDModule` (`model.adapters`; null: full copies).

    Args:
        rank: adapter rank r (LoRA / DoRA rank, LoKr rank).
        alpha: scaling α (the update is scaled by α/r); default `ALPHA_PER_RANK` · r (4 r):
            with Adam, α/r multiplies the adapters' effective learning rate.
        kind: "lora", "dora" (weight-decomposed LoRA) or "lokr" (Kronecker product).
        targets: names of the layers to adapt (PEFT's `target_modules`); default
            `DEFAULT_TARGETS`, those the teacher has.
        base_dtype: "float32" or "bfloat16": the dtype of the frozen base weights.
        gradient_checkpointing: recompute the network's blocks in the backward pass (diffusers
            networks). The teacher's own `gradient_checkpointing` (on in the family presets)
            turns it on too: either way through the shared base's adapter-aware function.
        seed: seed of the adapters' random initialisation (LoRA's A, LoKr's w1).
        start_from: a folder of saved adapters (`save_adapters`; e.g. a demo's stage 1) to start
            the generator, its EMA and the fake score from; None: the identity (the teacher).
    """

    rank: int = 16
    alpha: float | None = None
    kind: str = "lora"
    targets: list[str] | None = None
    base_dtype: str = "float32"
    gradient_checkpointing: bool = False
    seed: int = 0
    start_from: str | None = None

    def __post_init__(self) -> None:
        check_adapter_settings(asdict(self))

    def resolved_alpha(self) -> float:
        """α with its default filled in."""
        return float(self.alpha if self.alpha is not None else ALPHA_PER_RANK * self.rank)

    def resolved_targets(self) -> list[str]:
        """The layer names PEFT is asked to adapt, with the default filled in."""
        return list(self.targets or DEFAULT_TARGETS)

    def described(self) -> dict[str, Any]:
        """The settings with defaults filled in (kind, rank, alpha, targets, ...): the training
        record's and the model card's "adapters"."""
        return asdict(self) | {"alpha": self.resolved_alpha(), "targets": self.resolved_targets()}

    def peft_config(self) -> PeftConfig:
        """The PEFT config of one adapter."""
        alpha = self.resolved_alpha()
        targets = self.resolved_targets()
        if self.kind == "lokr":
            return LoKrConfig(r=self.rank, alpha=alpha, target_modules=targets)
        return LoraConfig(
            r=self.rank,
            lora_alpha=alpha,
            target_modules=targets,
            lora_dropout=0.0,
            use_dora=self.kind == "dora",
        )


def check_adapter_settings(
    settings: Mapping[str, Any] | None, prefix: str = "model.adapters."
) -> None:
    """Raise `SFDConfigError` (one line naming the setting) for a bad `model.adapters` value."""
    if settings is None:
        return
    rank = settings.get("rank", 16)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SFDConfigError(f"{prefix}rank={rank!r} must be an integer of at least 1")
    if settings.get("alpha") is not None:
        check_number(f"{prefix}alpha", settings["alpha"], low=0, low_open=True)
    kind = settings.get("kind", "lora")
    if kind not in ADAPTER_KINDS:
        raise SFDConfigError(f"{prefix}kind={kind!r} is not supported; allowed: {ADAPTER_KINDS}")
    dtype = settings.get("base_dtype", "float32")
    if dtype not in BASE_DTYPES:
        raise SFDConfigError(
            f"{prefix}base_dtype={dtype!r} is not supported; allowed: {tuple(BASE_DTYPES)}"
        )
    targets = settings.get("targets")
    if targets is not None and (
        not isinstance(targets, list | tuple)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise SFDConfigError(
            f"{prefix}targets={targets!r} must be a non-empty list of layer names (or null)"
        )
    start = settings.get("start_from")
    if start is not None and (not isinstance(start, str | Path) or not str(start)):
        raise SFDConfigError(
            f"{prefix}start_from={start!r} must be a folder of saved adapters (or null)"
        )
