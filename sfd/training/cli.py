"""LightningCLI wiring shared by the training commands (`sfd fit`, `sfd teacher`).

`RunCLI` is what both commands add to LightningCLI: one-line errors for bad values, checked run
folders, checkpoints read safely and checked against the model before Lightning loads them,
`--ckpt_path last` that finds the run's newest checkpoint and refuses another run's, atomic
checkpoint writes, one progress bar over the whole run, and nothing left behind when a command
fails before its first iteration. `SFDLightningCLI` is `sfd fit`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentError
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import CheckpointIO
from lightning.pytorch.strategies import Strategy
from lightning.pytorch.utilities import rank_zero_info

from sfd.core import guards
from sfd.core.adversarial import check_adversarial_settings
from sfd.core.checkpoint_files import DEFAULT_ROOT_DIR, load_checkpoint_safely
from sfd.core.module import SFDModule
from sfd.errors import SFDConfigError, check_integer
from sfd.folders import NewPaths, check_writable_folder
from sfd.teachers.adapter_settings import check_adapter_settings
from sfd.training.callbacks import LoggedSaveConfigCallback
from sfd.training.checkpoint_io import AtomicCheckpointIO, remove_stale_temp_files
from sfd.training.config_errors import one_line
from sfd.training.config_files import check_config_files
from sfd.training.fsdp import check_fsdp_config
from sfd.training.loggers import ResumableWandbLogger
from sfd.training.memory import budget_setting, check_run_memory
from sfd.training.progress import IterationProgressBar, quiet_design_warnings
from sfd.training.resume import (
    CHECKPOINT_FOLDER,
    RunConfigStamp,
    announce_resume,
    check_same_run,
    find_resume_checkpoint,
    run_folders,
    run_identity,
)
from sfd.training.strategies import AlternatingDDPStrategy

__all__ = ["AlternatingDDPStrategy", "RunCLI", "SFDLightningCLI", "sfd_lightning_cli"]

LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")  # resolved by Lightning, not files
FOLDER_KEYS = ("default_root_dir", "save_dir", "dirpath", "root_dir")  # where a run writes
# jsonargparse raises instead of printing usage and exiting, so a bad value becomes one line.
ONE_LINE_PARSER = {"exit_on_error": False, "fit": {"exit_on_error": False}}


def sfd_lightning_cli(args: list[str], run: bool = True) -> LightningCLI:
    """Run (or only build, with run=False) the LightningCLI of `SFDModule`.

    Args:
        args: command line after `sfd`, e.g. ["fit", "-c", "configs/tiny.yaml"].
        run: run the subcommand; with False, `args` must not name one.

    Returns:
        the LightningCLI (its `.model`, `.trainer` and `.config`).
    """
    check_config_files(args)
    with warnings.catch_warnings():
        # `args` is how the `sfd` console script hands over its command line, on purpose.
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        quiet_design_warnings()
        return SFDLightningCLI(
            SFDModule,
            args=args,
            run=run,
            trainer_defaults={"default_root_dir": DEFAULT_ROOT_DIR},
            save_config_callback=LoggedSaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            auto_configure_optimizers=False,
            parser_kwargs={**ONE_LINE_PARSER, "prog": "sfd"},
        )


class RunCLI(LightningCLI):
    """LightningCLI with the behaviour every sfd training command shares (see the module doc)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._new_paths = NewPaths()
        self._progress = _IterationSeen()
        self._checkpoint: tuple[str, dict[str, Any]] | None = None  # read by _parse_ckpt_path
        self._identity: dict[str, Any] = {}
        try:
            super().__init__(*args, **kwargs)
        except ArgumentError as error:
            self._remove_new_paths()
            raise SFDConfigError(one_line(error)) from error
        except ValueError as error:
            self._remove_new_paths()
            mistake = _user_mistake_inside(error)
            if mistake is None:
                raise
            raise mistake from error
        except BaseException:
            # A failure before the first iteration leaves nothing behind; a crash later keeps
            # the run's checkpoints and logs.
            self._remove_new_paths()
            raise

    # --- hooks for the concrete commands ----------------------------------------------------------

    def check_config(self, config: Mapping[str, Any]) -> None:
        """Refuse settings that cannot work with this command (raise `SFDConfigError`)."""

    def checkpoint_kind_error(self, checkpoint: Mapping[str, Any]) -> str | None:
        """Why `checkpoint` is not one of this command's checkpoints, or None if it is."""
        return None

    # --- LightningCLI stages ------------------------------------------------------------------

    def _parse_ckpt_path(self) -> None:
        # Lightning reads an explicit checkpoint here to take its hyperparameters; read it
        # first, safely, so that a bad file is one clear error rather than a traceback.
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if path and str(path) not in LIGHTNING_CKPT_NAMES:
            self._checkpoint = (str(path), self._read_checkpoint(path, "--ckpt_path"))
        super()._parse_ckpt_path()

    def _set_seed(self) -> None:
        # Lightning seeds right after parsing and logs "Seed set to N"; sfd seeds once the
        # settings and folders are checked (`before_instantiate_classes`), so that the line
        # never precedes an error.
        return None

    def _seed_after_checks(self) -> None:
        LightningCLI._set_seed(self)

    def before_instantiate_classes(self) -> None:
        config = self._subcommand_config()
        self.check_config(config)
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

    def _subcommand_config(self) -> dict[str, Any]:
        config = self.config[self.subcommand] if self.subcommand else self.config
        return config.as_dict()

    def _remove_new_paths(self) -> None:
        if not self._progress.seen:
            self._new_paths.remove()


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
    stored = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}
    expected = {k: v for k, v in model_state.items() if not k.startswith("teacher.")}
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


class SFDLightningCLI(RunCLI):
    """`sfd fit`: `RunCLI` over `SFDModule`, with no `--data` group (SFD uses no data)."""

    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(self.trainer_class, "trainer")
        defaults = {f"trainer.{k}": v for k, v in self.trainer_defaults.items() if k != "callbacks"}
        parser.set_defaults(defaults)
        parser.add_lightning_class_args(self._model_class, "model", subclass_mode=False)

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        data = [a for a in args or [] if a == "--data" or a.startswith(("--data.", "--data="))]
        if data:
            raise SFDConfigError(
                f"{data[0]}: sfd fit takes no data (an SFD batch is only conditions and noise, "
                "drawn by model.conditions); remove the --data options"
            )
        super().parse_arguments(parser, args)

    def check_config(self, config: Mapping[str, Any]) -> None:
        trainer = config.get("trainer") or {}
        if trainer.get("gradient_clip_val") is not None:
            raise SFDConfigError(
                f"trainer.gradient_clip_val={trainer['gradient_clip_val']} cannot work: SFD "
                "optimises manually (two optimizers per iteration) and Lightning clips only "
                "automatic optimisation; set model.fake_grad_clip / model.generator_grad_clip instead "
                "(each network's gradient elements clipped to ±value; null: no clipping)"
            )
        if trainer.get("gradient_clip_algorithm") is not None:
            raise SFDConfigError(
                f"trainer.gradient_clip_algorithm={trainer['gradient_clip_algorithm']!r} cannot "
                "work with SFD's manual optimisation; model.fake_grad_clip / model.generator_grad_clip "
                "clip by value"
            )
        accumulate = trainer.get("accumulate_grad_batches")
        if accumulate not in (None, 1):
            raise SFDConfigError(
                f"trainer.accumulate_grad_batches={accumulate} cannot work with SFD's manual "
                "optimisation; raise model.batch_size (or trainer.devices) instead"
            )
        check_model_settings(config.get("model") or {})
        check_fsdp_config(config)
        budget_setting()  # a bad SFD_DEVICE_MEMORY_GIB is refused before the teacher loads

    def before_fit(self) -> None:
        # The estimate of the run's memory per device, and a run that cannot fit refused, before
        # any checkpoint is read or anything is written.
        check_run_memory(self.model, self.trainer)
        super().before_fit()

    def checkpoint_kind_error(self, checkpoint: Mapping[str, Any]) -> str | None:
        if not any(key.startswith("generator.") for key in checkpoint["state_dict"]):
            return "is not an SFD training checkpoint (it holds no generator weights)"
        return None

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        config = self._get(self.config_init, "trainer", default={})
        logger = config.get("logger")
        if isinstance(logger, ResumableWandbLogger) and logger.save_dir is None:
            # wandb files, its run id and the checkpoints live in the run folder by default.
            kwargs.setdefault("logger", logger.in_folder(config["default_root_dir"]))
        trainer = super().instantiate_trainer(**kwargs)
        one_checkpoint_folder(trainer)
        return trainer


def one_checkpoint_folder(trainer: Trainer) -> None:
    """Give every `ModelCheckpoint` without a dirpath `<default_root_dir>/checkpoints/`.

    Lightning's default is the logger's folder: `lightning_logs/version_<n>/checkpoints/` for
    CSV / TensorBoard, a new version on every restart, and `<project>/<run id>/checkpoints/` for
    wandb. One folder for every logger and every restart keeps a resumed run's newest `last.ckpt`
    where the first start wrote its own.

    Args:
        trainer: the trainer, before `fit`.
    """
    folder = os.path.realpath(Path(trainer.default_root_dir) / CHECKPOINT_FOLDER)
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = folder


def fit_summary(trainer: Trainer) -> list[str]:
    """What `sfd fit` prints when it ends: where the checkpoint is and how to export it.

    Args:
        trainer: the fitted trainer.

    Returns:
        the lines (none when the run wrote no checkpoint).
    """
    checkpoint = find_resume_checkpoint(trainer, announce=False)
    if checkpoint is None:
        return []
    root = Path(trainer.default_root_dir)
    inside = Path(checkpoint).is_relative_to(root.resolve())
    source = str(root) if inside else checkpoint
    output = f"{str(root).rstrip('/')}-generator" if inside else "GENERATOR_FOLDER"
    return [
        f"checkpoint: {checkpoint} (iteration {trainer.global_step})",
        f"export it: sfd export {source} {output}",
    ]


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


def check_model_settings(model: Mapping[str, Any]) -> None:
    """The checks `SFDModule` makes of its numbers and optimizer settings, run on the parsed
    `model` group before anything is built (so a demo refuses them before training a teacher)."""
    if not model:
        return
    guards.check_module_settings(AttributeDict(model))
    check_adapter_settings(model.get("adapters"))
    adversarial = model.get("adversarial")
    if isinstance(adversarial, Mapping):
        check_adversarial_settings(adversarial, "model.adversarial")
    for name in ("fake_optimizer", "generator_optimizer"):
        optimizer = model.get(name)
        if isinstance(optimizer, Mapping):
            for key, value in (optimizer.get("init_args") or {}).items():
                guards.check_optimizer_setting(f"model.{name}.init_args.{key}", value)
    for name in ("teacher", "fake_score", "generator"):  # a LoRA network's rank, before loading
        network = model.get(name)
        rank = (
            (network.get("init_args") or {}).get("rank") if isinstance(network, Mapping) else None
        )
        if rank is not None:
            check_integer(f"model.{name}.init_args.rank", rank, 1)


class _ParseOnlyCLI(SFDLightningCLI):
    def before_instantiate_classes(self) -> None:  # check the settings, touch no folder
        self.check_config(self._subcommand_config())
        self._seed_after_checks()

    def instantiate_classes(self) -> None:  # parse and type-check, load nothing
        return None


def parse_fit_config(args: list[str], one_line_errors: bool = False) -> Any:
    """Parse and type-check an `sfd fit` command line without instantiating anything.

    Args:
        args: e.g. ["-c", "configs/tiny.yaml", "--model.batch_size", "4"] (no subcommand).
        one_line_errors: raise a bad value as one `SFDConfigError` line naming the key, instead
            of jsonargparse's usage block and exit.

    Returns:
        the parsed jsonargparse namespace.
    """
    return _parse_only(args, one_line_errors).config


def build_from_fit_config(args: list[str]) -> tuple[SFDModule, dict[str, Any]]:
    """Parse an `sfd fit` command line and build its module, but not its `Trainer`.

    For programs that run `SFDModule` under a Trainer of their own (the digits demo): every
    model setting comes from the same parser and presets as `sfd fit`.

    Args:
        args: e.g. ["-c", preset, "--model.alpha", "1.0"] (no subcommand).

    Returns:
        (the module, the Trainer keyword arguments of the config, with its classes instantiated).
    """
    cli = _parse_only(args, one_line_errors=True)
    init = cli.parser.instantiate_classes(cli.config)
    return init["model"], dict(init["trainer"])


def _parse_only(args: list[str], one_line_errors: bool) -> _ParseOnlyCLI:
    if one_line_errors:
        check_config_files(args)
    kwargs: dict[str, Any] = {"parser_kwargs": {"exit_on_error": False}} if one_line_errors else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return _ParseOnlyCLI(
            SFDModule, args=args, run=False, auto_configure_optimizers=False, **kwargs
        )
