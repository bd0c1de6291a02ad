"""LightningCLI wiring of `sfd fit`: `SFDLightningCLI` over `SFDModule`, and the parse-only twin
that the demos use to build a module from the same presets and checks.

What every training command adds to LightningCLI (one-line errors, checked folders, safe
checkpoints, `--ckpt_path last`, ...) is `RunCLI`, in run_cli.py.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from sfd.core import guards
from sfd.core.adversarial_settings import AdversarialSettings, check_adversarial_settings
from sfd.core.attack_spaces import ROOM_KEY
from sfd.core.checkpoint_files import DEFAULT_ROOT_DIR
from sfd.core.conditions import ConditionSampler, PromptConditions
from sfd.core.module import SFDModule
from sfd.core.sigma import SigmaSampler
from sfd.errors import SFDConfigError, check_integer
from sfd.teachers.adapter_settings import check_adapter_settings
from sfd.teachers.base import Denoiser
from sfd.teachers.flow import FlowDenoiser
from sfd.teachers.text_encoder import check_token_room
from sfd.training.callbacks import LoggedSaveConfigCallback
from sfd.training.completion import PROBE_EVERY, UntilForgotten, check_rule_within
from sfd.training.config_errors import callback_entries, class_at
from sfd.training.config_files import check_adversarial_switch, check_config_files
from sfd.training.fsdp import check_fsdp_config
from sfd.training.loggers import ResumableWandbLogger
from sfd.training.memory import budget_setting, check_run_memory
from sfd.training.progress import quiet_design_warnings
from sfd.training.resume import CHECKPOINT_FOLDER, find_resume_checkpoint
from sfd.training.run_cli import ONE_LINE_PARSER, RunCLI
from sfd.training.strategies import AlternatingDDPStrategy
from sfd.training.trainer_settings import check_trainer_settings

__all__ = ["AlternatingDDPStrategy", "RunCLI", "SFDLightningCLI", "sfd_lightning_cli"]


def sfd_lightning_cli(args: list[str], run: bool = True) -> LightningCLI:
    """Run (or only build, with run=False) the LightningCLI of `SFDModule`.

    Args:
        args: command line after `sfd`, e.g. ["fit", "-c", "configs/tiny.yaml"].
        run: run the subcommand; with False, `args` must not name one.

    Returns:
        the LightningCLI (its `.model`, `.trainer` and `.config`).
    """
    check_config_files(args)
    check_adversarial_switch(args)
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


class SFDLightningCLI(RunCLI):
    """`sfd fit`: `RunCLI` over `SFDModule`, with no `--data` group (SFD uses no data)."""

    RESTORED_MODEL_KEYS = ("fake_optimizer", "generator_optimizer")  # their state: the checkpoint's

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
        check_trainer_settings(trainer)
        check_model_settings(config.get("model") or {})
        for entry in callback_entries(config):
            if class_at(str(entry.get("class_path", ""))) is UntilForgotten:
                rule = entry.get("init_args") or {}
                check_rule_within(trainer.get("max_steps"), rule.get("every_n", PROBE_EVERY))
        check_fsdp_config(config)
        budget_setting()  # a bad SFD_DEVICE_MEMORY_GIB is refused before the teacher loads

    def check_sources(self, config: Mapping[str, Any]) -> None:
        model = config.get("model") or {}
        teacher = model.get("teacher")
        if isinstance(teacher, Mapping):
            cls = class_at(str(teacher.get("class_path", "")))
            if cls is not None and issubclass(cls, Denoiser):
                cls.check_before_loading(teacher.get("init_args") or {}, model)
                negative = negative_setting(model.get("conditions"))
                if negative is not None:  # one guidance cannot use: refused before loading
                    cls.check_negative_prompt(teacher.get("init_args") or {}, model, *negative)
                check_adversarial_room(cls, teacher.get("init_args") or {}, model)
            sampler = model.get("sigma_sampler")
            if cls is not None and issubclass(cls, FlowDenoiser) and isinstance(sampler, Mapping):
                # a flow teacher has no discrete schedule: the sampler's own check, before loading
                sampler_class = class_at(str(sampler.get("class_path", "")))
                if sampler_class is not None and issubclass(sampler_class, SigmaSampler):
                    sampler_class(**(sampler.get("init_args") or {})).check(None)

    def before_fit(self) -> None:
        # The estimate of the run's memory per device, and a run that cannot fit refused, before
        # any checkpoint is read or anything is written.
        with self._held_lines:  # said with the rest once the checkpoint is checked too
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


def negative_setting(conditions: Any) -> tuple[str, tuple[str, ...]] | None:
    """The configured conditions' negative prompt (`ConditionSampler.negative_setting`): the
    setting that gives it and the roles that see it; None without one."""
    if not isinstance(conditions, Mapping):
        return None
    cls = class_at(str(conditions.get("class_path", "")))
    if cls is None or not issubclass(cls, ConditionSampler):
        return None
    return cls.negative_setting(conditions.get("init_args") or {})


def check_model_settings(model: Mapping[str, Any]) -> None:
    """The checks `SFDModule` makes of its numbers and optimizer settings, run on the parsed
    `model` group before anything is built (so a demo refuses them before training a teacher)."""
    if not model:
        return
    try:
        guards.check_module_settings(AttributeDict(model))
    except SFDConfigError as error:  # named as typed, as `one_line` names a value it rejects
        raise SFDConfigError(f"model.{error}") from error
    teacher = model.get("teacher")
    family = class_at(str(teacher.get("class_path", ""))) if isinstance(teacher, Mapping) else None
    if family is not None and issubclass(family, Denoiser):
        family.check_module_settings(model)  # e.g. a flow teacher's t_init, before it exists
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


def check_adversarial_room(
    teacher: type[Denoiser], settings: Mapping[str, Any], model: Mapping[str, Any]
) -> None:
    """Refuse model.adversarial.tokens that fit after not one forget prompt of the prompt
    conditions, with the teacher's tokenizer read alone (`Denoiser.prompt_tokenizer`), before the
    teacher, its text encoders or the prompts' embeddings load."""
    adversarial, conditions = model.get("adversarial"), model.get("conditions")
    if not isinstance(adversarial, Mapping) or not isinstance(conditions, Mapping):
        return
    sampler = class_at(str(conditions.get("class_path", "")))
    if sampler is None or not issubclass(sampler, PromptConditions):
        return
    found = teacher.prompt_tokenizer(settings)
    if found is None:
        return
    prompts = sampler(**(conditions.get("init_args") or {})).forget_prompts  # reads files only
    tokens = adversarial.get("tokens", AdversarialSettings.tokens)
    check_token_room(found[0], prompts, tokens, found[1], ROOM_KEY, shortest=True)


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
        check_adversarial_switch(args)
    kwargs: dict[str, Any] = {"parser_kwargs": {"exit_on_error": False}} if one_line_errors else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter.*")
        return _ParseOnlyCLI(
            SFDModule, args=args, run=False, auto_configure_optimizers=False, **kwargs
        )
