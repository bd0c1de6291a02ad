"""Which checkpoint `sfd fit --ckpt_path last` continues from, and whether it is this run's.

A checkpoint written by the CLI records the run's configuration (`RUN_CONFIG_KEY`): everything
but the step budget and what only observes the run (callbacks, progress bar, logging interval).
`--ckpt_path last` resumes only a checkpoint whose record matches, so two runs that share a
folder never continue each other.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from sfd.core.checkpoint_files import newest_checkpoint
from sfd.errors import SFDConfigError

# Lightning's names: ModelCheckpoint(save_last=True) writes last.ckpt (last-v1.ckpt, ... when
# names collide); the SLURM requeue signal handler writes hpc_ckpt_<n>.ckpt in default_root_dir.
CHECKPOINT_FOLDER = "checkpoints"  # every run's checkpoints: <default_root_dir>/checkpoints/


def find_resume_checkpoint(trainer: pl.Trainer, announce: bool = True) -> str | None:
    """The newest `last*.ckpt` or `hpc_ckpt_*.ckpt` of this run, or None for a fresh start.

    Lightning's own `ckpt_path="last"` looks only in the current logger version's folder, which
    a restarted job has not written yet, and ignores the checkpoint saved on SLURM's pre-timeout
    signal. This searches the whole run: `default_root_dir`, every logger's save_dir and every
    `ModelCheckpoint` dirpath, recursively, and returns the most recently written file.

    Args:
        trainer: the (not yet fitted) trainer of the run.
        announce: log which checkpoint it is (or that there is none).

    Returns:
        the checkpoint path, or None if the run has none yet.
    """
    newest = newest_checkpoint(run_folders(trainer))
    if announce:
        announce_resume(newest)
    return newest


def announce_resume(path: str | None) -> None:
    """Log what `--ckpt_path last` resolved to."""
    if path is None:
        rank_zero_info("--ckpt_path last: this run has no checkpoint yet; starting from scratch")
    else:
        rank_zero_info(f"--ckpt_path last: resuming from {path}")


def run_folders(trainer: pl.Trainer) -> set[Path]:
    """The folders a run writes to: default_root_dir, the loggers' and checkpoints' folders."""
    roots = {Path(trainer.default_root_dir)}
    roots |= {Path(logger.save_dir) for logger in trainer.loggers if logger.save_dir}
    roots |= {
        Path(callback.dirpath)
        for callback in trainer.checkpoint_callbacks
        if isinstance(callback, ModelCheckpoint) and callback.dirpath
    }
    return roots


# --- the run's identity ----------------------------------------------------------------------

RUN_CONFIG_KEY = "sfd_run_config"  # checkpoint entry: {"hash": ..., "config": {...}}
# Settings a restart may change: the step budget, where the run folder is, and what only
# observes the run.
RESTART_TRAINER_KEYS = (
    "default_root_dir",
    "max_steps",
    "max_epochs",
    "max_time",
    "min_steps",
    "min_epochs",
    "callbacks",
    "enable_progress_bar",
    "enable_model_summary",
    "log_every_n_steps",
)
RESTART_KEYS = ("config", "ckpt_path", "weights_only", "subcommand")  # how it was started


def run_identity(config: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved run configuration that must not change across restarts.

    Args:
        config: the resolved configuration of the subcommand (as a plain dict).

    Returns:
        {"hash": sha256 of the identity, "config": the identity, JSON-ready}.
    """
    identity = {k: v for k, v in config.items() if k not in RESTART_KEYS}
    if isinstance(identity.get("trainer"), Mapping):
        trainer = identity["trainer"]
        identity["trainer"] = {k: v for k, v in trainer.items() if k not in RESTART_TRAINER_KEYS}
    identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return {"hash": digest, "config": identity}


def check_same_run(checkpoint: Mapping[str, Any], identity: Mapping[str, Any], path: str) -> None:
    """Raise `SFDConfigError` unless `checkpoint` was written by the run `identity` describes.

    Args:
        checkpoint: the loaded checkpoint.
        identity: `run_identity` of the current configuration.
        path: the checkpoint file, for the message.
    """
    advice = (
        "use a new trainer.default_root_dir for a new run, or pass the file itself as "
        "--ckpt_path to resume from it anyway"
    )
    stored = checkpoint.get(RUN_CONFIG_KEY)
    if not isinstance(stored, Mapping) or "hash" not in stored:
        raise SFDConfigError(
            f"--ckpt_path last found {path!r}, which records no run configuration (it was not "
            f"written by this command); {advice}"
        )
    if stored["hash"] == identity["hash"]:
        return
    changes = differences(stored.get("config", {}), identity["config"])
    raise SFDConfigError(
        f"--ckpt_path last found {path!r}, written by a run with another configuration "
        f"({changes}; only the step budget may change on resume); {advice}"
    )


def resumed_model_settings(
    checkpoint: Mapping[str, Any], merged: Mapping[str, Any], restored: tuple[str, ...] = ()
) -> Any:
    """The model settings a resume from `checkpoint` trains with: `merged` (the run's settings with
    the checkpoint's hyperparameters put over them, as Lightning does) and, for `restored` (model
    settings that are no hyperparameters but whose state the checkpoint brings back, e.g. the
    optimizers, learning rates included), the values of the run that wrote it
    (`RUN_CONFIG_KEY`, when it records them). Every other setting (the teacher, conditions, σ
    sampler: nothing of them is checkpointed) trains as the command gives it."""
    resumed = dict(_plain(merged))
    recorded = ((checkpoint.get(RUN_CONFIG_KEY) or {}).get("config") or {}).get("model")
    if isinstance(recorded, Mapping):
        resumed |= {key: recorded[key] for key in restored if key in recorded}
    return resumed


def check_same_model(given: Any, resumed: Any, path: str, linked: tuple[str, ...] = ()) -> None:
    """Refuse resuming the checkpoint file `path` under other model settings than its own.

    Lightning resumes a checkpoint file with the model settings saved in it (its
    hyperparameters, put over the command line's) and with its optimizer states, so a
    `--model.*` setting that differs from the checkpoint's would be dropped without a word, and
    the run would train otherwise than its command says (adversarial SFD's attack pool, too, is
    the checkpoint's settings').

    Args:
        given: the run's model settings before the checkpoint's were put over them.
        resumed: the model settings it would train with (`resumed_model_settings`).
        path: the checkpoint file, for the message.
        linked: settings the command fills in from its data (not the user's to give).

    Raises:
        SFDConfigError: naming every differing setting, with both values.
    """
    given, resumed = _plain(given), _plain(resumed)
    for key in linked:
        given.pop(key, None)
        resumed.pop(key, None)
    if given == resumed:
        return
    changes = differences(resumed, given, "model.")
    raise SFDConfigError(
        f"--ckpt_path {path!r} was trained with other model settings ({changes}); a checkpoint "
        "resumes with its own, so give the checkpoint's settings, or start a new run"
    )


def differences(old: Any, new: Any, prefix: str = "") -> str:
    """Every setting that differs between two configurations, as "key: old there, new now; ..."
    (nested keys dotted)."""
    return "; ".join(f"{key}: {a!r} there, {b!r} now" for key, a, b in _differing(old, new, prefix))


def _differing(old: Any, new: Any, prefix: str) -> list[tuple[str, Any, Any]]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        found = []
        for key in sorted(set(old) | set(new), key=str):
            if old.get(key) != new.get(key):
                found += _differing(old.get(key), new.get(key), f"{prefix}{key}.")
        return found
    return [(prefix.rstrip(".") or "config", old, new)]


def _plain(config: Any) -> Any:
    """A configuration as JSON values (tuples as lists, paths and classes as strings)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


class RunConfigStamp(Callback):
    """Writes the run's `run_identity` into every checkpoint (`RUN_CONFIG_KEY`).

    Args:
        identity: `run_identity` of the run's resolved configuration.
    """

    def __init__(self, identity: Mapping[str, Any]) -> None:
        self.identity = dict(identity)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        checkpoint[RUN_CONFIG_KEY] = self.identity
