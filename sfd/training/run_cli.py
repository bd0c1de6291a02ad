"""`RunCLI`: what every sfd training command (`sfd fit`, `sfd teacher`) adds to LightningCLI.

One-line errors for bad values, checked run folders, checkpoints read safely and checked against
the model before Lightning loads them, `--ckpt_path last` that finds the run's newest checkpoint and
refuses another run's, atomic checkpoint writes, one progress bar over the whole run, and nothing
left behind when a command fails before its first iteration. The commands are its subclasses:
`SFDLightningCLI` (cli.py) and the teacher command's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import Callback, ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_info

from sfd.core.checkpoint_files import load_checkpoint_safely
from sfd.core.module_hooks import TEACHER_PREFIX
from sfd.errors import SFDConfigError
from sfd.folders import NewPaths, check_writable_folder
from sfd.training.checkpoint_io import AtomicCheckpointIO, remove_stale_temp_files
from sfd.training.config_errors import callback_entries, checking_class, one_line
from sfd.training.config_files import attach_signed_values
from sfd.training.progress import IterationProgressBar
from sfd.training.resume import (
    RunConfigStamp,
    announce_resume,
    check_same_model,
    check_same_run,
    find_resume_checkpoint,
    resumed_model_settings,
    run_folders,
    run_identity,
)

RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"  # Lightning's "GPU available: ..."
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # resolved by Lightning, not files
FOLDER_KEYS = ("default_root_dir", "save_dir", "dirpath", "root_dir")  # where a run writes
# jsonargparse raises instead of printing usage and exiting, so a bad value becomes one line.
ONE_LINE_PARSER = {"exit_on_error": False, "fit": {"exit_on_error": False}}


class RunCLI(LightningCLI):
    """LightningCLI with the behaviour every sfd training command shares (see the module doc)."""

    # model settings the command fills in from its data at instantiation (`link_arguments`)
    LINKED_MODEL_KEYS: tuple[str, ...] = ()
    # model settings that are no hyperparameters but whose state a checkpoint restores
    RESTORED_MODEL_KEYS: tuple[str, ...] = ()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._new_paths = NewPaths()
        self._progress = _IterationSeen()
        self._checkpoint: tuple[str, dict[str, Any]] | None = None  # read by _parse_ckpt_path
        self._identity: dict[str, Any] = {}
        self._seed_line = ""  # "Seed set to N", said once the run starts
        self._held_lines = _HeldLines(RANK_ZERO_LOGGER)
        try:
            super().__init__(*args, **kwargs)
        except ArgumentError as error:
            self._remove_new_paths()
            raise SFDConfigError(one_line(error, getattr(self, "model_class", None))) from error
        except ValueError as error:
            self._remove_new_paths()
            mistake = _user_mistake_inside(error)
            if mistake is None:
                self._say_held_lines()  # a crash, not a refusal: what came before it is said
                raise
            raise mistake from error
        except BaseException:
            # A failure before the first iteration leaves nothing behind; a crash later keeps
            # the run's checkpoints and logs.
            self._remove_new_paths()
            self._say_held_lines()
            raise
        self._say_held_lines()  # run=False: no `before_fit` says them

    # --- hooks for the concrete commands ----------------------------------------------------------

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Refuse settings that cannot work with this command (raise `SFDConfigError`)."""

    def check_sources(self, config: Mapping[str, Any]) -> None:
        """Refuse what the files beside the weights (a teacher folder's configs) rule out, before
        the seed and before a weight is read (raise `SFDConfigError`)."""

    def checkpoint_kind_error(self, checkpoint: Mapping[str, Any]) -> str | None:
        """Why `checkpoint` is not one of this command's checkpoints, or None if it is."""
        return None

    # --- LightningCLI stages ------------------------------------------------------------------

    def parse_arguments(self, parser: Any, args: Any) -> None:
        # `--model.alpha -inf` as `--model.alpha=-inf`: the value reaches the setting's check
        attached = attach_signed_values(args) if isinstance(args, list) else args
        super().parse_arguments(parser, attached)

    def _parse_ckpt_path(self) -> None:
        # Lightning reads an explicit checkpoint here to take its hyperparameters; read it
        # first, safely, so that a bad file is one clear error rather than a traceback.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or str(path) in LIGHTNING_CKPT_NAMES:
            super()._parse_ckpt_path()
            return
        self._checkpoint = (str(path), self._read_checkpoint(path, "--ckpt_path"))
        given = _plain_dict(self.config[subcommand].get("model"))
        super()._parse_ckpt_path()  # the checkpoint's hyperparameters over the command line's
        resumed = resumed_model_settings(
            self._checkpoint[1],
            _plain_dict(self.config[subcommand].get("model")),
            self.RESTORED_MODEL_KEYS,
        )
        check_same_model(given, resumed, str(path), self.LINKED_MODEL_KEYS)

    def _set_seed(self) -> None:
        # Lightning seeds right after parsing and logs "Seed set to N"; sfd seeds once the
        # settings and folders are checked (`before_instantiate_classes`), before the classes are
        # built, and says so only once every check has passed (`before_fit`: the memory estimate
        # and the checkpoint need the built model), so that the line never precedes an error.
        return None

    def _seed_after_checks(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        requested = config.get("seed_everything")
        if requested is False:
            return
        given = None if requested is True else requested
        seed = seed_everything(given, workers=True, verbose=False)
        config["seed_everything"] = seed
        self._seed_line = f"Seed set to {seed}"

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        check_callback_settings(config)
        self.check_config(config)
        self.check_sources(config)
        folders = list(_run_folders_of(config))
        for name, folder in folders:
            check_writable_folder(folder, name)
        self._new_paths.watch([folder for _, folder in folders])
        self._identity = run_identity(config)
        self._seed_after_checks()

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        plugins = config.get("plugins")
        if not isinstance(plugins, list):
            plugins = [] if plugins is None else [plugins]
        strategy = config.get("strategy")
        has_io = any(isinstance(p, CheckpointIO) for p in plugins) or (
            isinstance(strategy, Strategy) and strategy._checkpoint_io is not None
        )
        if not has_io:
            kwargs.setdefault("plugins", [*plugins, AtomicCheckpointIO()])
        callbacks = config.get("callbacks") or []
        callbacks = list(callbacks) if isinstance(callbacks, list) else [callbacks]
        extra: list[Callback] = [RunConfigStamp(self._identity), self._progress]
        wants_bar = config.get("enable_progress_bar") is not False
        if wants_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
            extra.append(IterationProgressBar())
        kwargs.setdefault("callbacks", [*callbacks, *extra])
        with self._held_lines:  # "GPU available: ...": said once every check has passed
            return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        fit_config = self.config_init["fit"]
        requested = fit_config.get("ckpt_path")
        if requested == "last":
            path = find_resume_checkpoint(self.trainer, announce=False)
            if path is not None:
                checkpoint = self._read_checkpoint(path, "--ckpt_path last found")
                check_same_run(checkpoint, self._identity, path)
                self._checkpoint = (path, checkpoint)
            fit_config["ckpt_path"] = path
        if self._checkpoint is not None:
            path, checkpoint = self._checkpoint
            check_fits_model(checkpoint, self.model.state_dict(), path)
        self._checkpoint = None  # Lightning loads it again; do not hold two copies
        fit_config["weights_only"] = True  # never unpickle code, whatever torch's default
        self._say_held_lines()
        if requested == "last":
            announce_resume(fit_config["ckpt_path"])
        if self.trainer.is_global_zero:
            removed = remove_stale_temp_files(run_folders(self.trainer))
            if removed:
                rank_zero_info(
                    f"removed {len(removed)} unfinished checkpoint file(s) of earlier kills"
                )

    # --- helpers --------------------------------------------------------------------------------

    def _read_checkpoint(self, path: Any, what: str) -> dict[str, Any]:
        checkpoint = load_checkpoint_safely(path, what)
        reason = self.checkpoint_kind_error(checkpoint)
        if reason is not None:
            raise SFDConfigError(f"{what} {str(path)!r} {reason}")
        return checkpoint

    def _say_held_lines(self) -> None:
        """Say the seed line and the lines held back, once: when every check has passed, and
        before a crash that is no refusal (its lines belong in front of the traceback)."""
        if self._seed_line:
            rank_zero_info(self._seed_line)
            self._seed_line = ""
        self._held_lines.release()

    def _subcommand_config(self) -> dict[str, Any]:
        config = self.config[self.subcommand] if self.subcommand else self.config
        return config.as_dict()

    def _remove_new_paths(self) -> None:
        if not self._progress.seen:
            self._new_paths.remove()


class _HeldLines(logging.Filter):
    """Within: what a logger says is held back; `release` says it (once the checks have passed,
    so that a refusal is the only line its user sees)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.logger = logging.getLogger(name)
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False

    def __enter__(self) -> None:
        self.logger.addFilter(self)

    def __exit__(self, *exc: object) -> None:
        self.logger.removeFilter(self)

    def release(self) -> None:
        records, self.records = self.records, []
        for record in records:
            self.logger.handle(record)


class _IterationSeen(Callback):
    """Notes that the run has finished an iteration (from then on a failure keeps its files)."""

    def __init__(self) -> None:
        self.seen = False

    def on_train_batch_end(self, *args: Any) -> None:
        self.seen = True


def _run_folders_of(config: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(config key, folder) of every folder the trainer section names (root, loggers, ...)."""
    trainer = config.get("trainer") or {}
    root = trainer.get("default_root_dir")
    yield "trainer.default_root_dir", str(root) if root is not None else str(Path.cwd())
    for key, value in _walk(trainer, "trainer"):
        if key.rsplit(".", 1)[-1] in FOLDER_KEYS[1:] and isinstance(value, str):
            yield key, value


def check_callback_settings(config: Mapping[str, Any]) -> None:
    """Build sfd's own callbacks of the trainer section once, so that their checks refuse a bad
    setting before the seed, the folders or the teacher (their constructors only check and store).

    Args:
        config: the subcommand's parsed configuration (`trainer.callbacks`: class_path + init_args).
    """
    for entry in callback_entries(config):
        cls = checking_class(str(entry.get("class_path", "")))
        if cls is not None:
            cls(**(entry.get("init_args") or {}))


def _walk(node: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _walk(value, f"{prefix}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{prefix}[{index}]")
    else:
        yield prefix, node


def check_fits_model(
    checkpoint: Mapping[str, Any], model_state: Mapping[str, Any], path: str
) -> None:
    """Raise `SFDConfigError` unless the checkpoint's weights have the model's names and shapes.

    The frozen teacher (`teacher.*`) is never in an SFD checkpoint and is not compared.

    Args:
        checkpoint: the loaded checkpoint.
        model_state: the model's `state_dict()`.
        path: the checkpoint file, for the message.
    """
    stored = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith(TEACHER_PREFIX)}
    expected = {k: v for k, v in model_state.items() if not k.startswith(TEACHER_PREFIX)}
    start = f"--ckpt_path {path!r} does not fit this run's model"
    missing = sorted(set(expected) - set(stored))
    if missing:
        raise SFDConfigError(f"{start}: it lacks {missing[0]} ({len(missing)} tensors missing)")
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        raise SFDConfigError(
            f"{start}: it holds {unexpected[0]}, which the model has not "
            f"({len(unexpected)} such tensors)"
        )
    for key, value in expected.items():
        if tuple(stored[key].shape) != tuple(value.shape):
            raise SFDConfigError(
                f"{start} (another architecture): {key} is {tuple(stored[key].shape)} there "
                f"and {tuple(value.shape)} here"
            )


def _user_mistake_inside(error: BaseException) -> SFDConfigError | None:
    """The `SFDConfigError` a class raised while jsonargparse instantiated it (jsonargparse
    wraps it, e.g. in "Does not validate against any of the Union subtypes"), if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, SFDConfigError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _plain_dict(settings: Any) -> Any:
    """A jsonargparse namespace as a dict (anything else unchanged)."""
    return settings.as_dict() if hasattr(settings, "as_dict") else settings
