"""The up-front checks of teacher training (`sfd teacher`, `sfd teacher-text`, the demos' teachers):
each refuses a bad setting or folder with one `SFDConfigError` line before any work."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sfd.errors import SFDConfigError, check_number
from sfd.folders import check_writable_folder
from sfd.images import LabelledImages


def check_channels(name: str, channels: Any) -> None:
    """Refuse an empty list of channel counts, or one with a count below 1."""
    values = list(channels) if isinstance(channels, list | tuple) else None
    if (
        not values
        or not all(isinstance(c, int) and not isinstance(c, bool) for c in values)
        or min(values) < 1
    ):
        raise SFDConfigError(
            f"{name}={channels!r} must be a non-empty list of channel counts of at least 1, "
            "e.g. [32, 64]"
        )


def check_teacher_settings(model: Mapping[str, Any], trainer: Mapping[str, Any]) -> None:
    """The numeric settings of `sfd teacher` (`model.*`, `trainer.max_steps`), before any work.

    Args:
        model: the `model` group of the parsed configuration (`DDPMTeacherModule`'s arguments).
        trainer: its `trainer` group.
    """
    check_number("model.lr", model["lr"], low=0, low_open=True)
    check_number("model.weight_decay", model["weight_decay"], low=0)
    check_channels("model.block_out_channels", model["block_out_channels"])
    for name in ("layers_per_block", "norm_num_groups", "num_train_timesteps"):
        if model[name] < 1:
            raise SFDConfigError(f"model.{name}={model[name]} must be at least 1")
    if model["warmup_steps"] < 0:
        raise SFDConfigError(f"model.warmup_steps={model['warmup_steps']} must be at least 0")
    max_steps = trainer.get("max_steps")
    if max_steps is not None and max_steps != -1 and max_steps < 1:
        raise SFDConfigError(
            f"trainer.max_steps={max_steps} must be at least 1 (or -1: bounded by max_epochs)"
        )


def check_output_dir(output_dir: str | Path) -> Path:
    """Refuse an output folder that holds something other than an earlier teacher, or one that
    cannot be written."""
    output_dir = Path(output_dir)
    check_writable_folder(output_dir, "output_dir")
    if output_dir.exists() and not output_dir.is_dir():
        raise SFDConfigError(f"output_dir {str(output_dir)!r} exists and is not a folder")
    if (
        output_dir.is_dir()
        and any(output_dir.iterdir())
        and not (output_dir / "model_index.json").is_file()
    ):
        raise SFDConfigError(
            f"output_dir {str(output_dir)!r} is not empty and holds no earlier teacher; "
            "choose an empty or new folder"
        )
    return output_dir


def check_no_teacher_yet(output_dir: str | Path, overwrite: bool, option: str) -> None:
    """Refuse to train over a teacher already in `output_dir` (named by `option`), unless
    `overwrite` (the new teacher then replaces it once trained, atomically)."""
    if not overwrite and (Path(output_dir) / "model_index.json").is_file():
        raise SFDConfigError(
            f"{option} {str(output_dir)!r} already holds a teacher; --overwrite replaces it once "
            "the new one is trained, or choose a new folder"
        )


def single_class_warning(train: LabelledImages) -> str | None:
    """Why a teacher trained on `train` cannot be used by `sfd fit`, or None if it can.

    Forgetting needs a class to forget and at least one other class to keep (and to map it to).

    Args:
        train: the teacher's training images.

    Returns:
        the warning, or None when the images hold at least two classes.
    """
    present = sorted(int(c) for c in train.labels.unique())
    if len(present) >= 2:
        return None
    shown = present[0] if present else "none"
    return (
        f"the training images hold a single class ({shown}); a teacher of one class cannot "
        "be used by sfd fit, which needs a forget class and at least one class to keep"
    )
