"""SFD runs under the harness's own `Trainer`, and the two-stage path (docs/method.md §5).

Stage 1 is plain distillation (both forget weights 0) from the teacher; its generator is the
"distilled without forgetting" model and, with its fake score, is cached by content hash like the
teacher. Stage 2 is SFD started from the stage-1 generator and fake score, with the ORIGINAL
teacher frozen: all three networks are `sfd fit` options (`model.generator`, `model.fake_score`,
`model.teacher`), so stage 2 is one more `sfd fit` command line.

In the shared-base mode (`model.adapters`) both stages train adapters of the one frozen teacher:
the cache holds the stage-1 generator's and fake score's adapters (`adapters/`), not the base,
and stage 2 starts its adapters from them (`model.adapters.start_from`).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from diffusers import DDPMPipeline, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.loggers import CSVLogger

from sfd.apps.harness.cache import cached_build, weights_fingerprint
from sfd.apps.harness.curve import TimedForgettingCurve
from sfd.apps.harness.phases import announce
from sfd.core.generator import OneStepGenerator, training_record
from sfd.core.module import SFDModule
from sfd.errors import SFDConfigError
from sfd.eval.forgetting_curve import ForgettingCurve
from sfd.folders import write_folder_atomically
from sfd.pipelines.io import load_generator, save_generator
from sfd.teachers.adapter_io import (
    read_adapters_record,
    save_adapters,
    saved_adapter_view,
    teacher_from_source,
)
from sfd.teachers.adapter_settings import FAKE_SCORE_ADAPTER, GENERATOR_ADAPTER
from sfd.teachers.adapters import ADAPTER_EMA
from sfd.teachers.sd3 import SD3Denoiser
from sfd.teachers.stable_diffusion import StableDiffusionDenoiser
from sfd.teachers.unet import SFD_CONFIG_NAME, VPUNetDenoiser
from sfd.training.cli import build_from_fit_config, parse_fit_config
from sfd.training.progress import IterationProgressBar

STAGE_ONE_RUN = "run.json"  # curve and seconds of the stage-1 run, beside its networks
STAGE_ONE_ADAPTERS = "adapters"  # a shared-base stage 1's folder of adapters (no base weights)
GENERATOR_CLASS = "sfd.pipelines.io.PretrainedOneStepGenerator"


def fit_module(
    module: pl.LightningModule,
    max_steps: int,
    log_dir: Path,
    progress: bool,
    callbacks: list[pl.Callback],
    trainer_config: dict[str, Any] | None = None,
) -> float:
    """Fit any forgetting module for `max_steps` iterations on one device; returns the seconds.

    Args:
        module: the module (its dataloader yields one epoch of `steps_per_epoch` iterations).
        max_steps: iterations.
        log_dir: where the CSV logs go.
        progress: show the progress bar.
        callbacks: extra callbacks (forgetting curves).
        trainer_config: other `Trainer` arguments (from an `sfd fit` configuration).

    Returns:
        the wall-clock seconds of `Trainer.fit`.
    """
    config = dict(trainer_config or {})
    given = [*(config.get("callbacks") or []), *callbacks]
    if progress and not any(isinstance(c, ProgressBar) for c in given):
        given.append(IterationProgressBar())  # sfd's one progress style
    trainer = pl.Trainer(
        **{
            "accelerator": "cpu",
            **config,
            "max_steps": max_steps,
            "max_epochs": 1,
            "devices": 1,
            "logger": CSVLogger(log_dir.parent, name=log_dir.name, version=""),
            "callbacks": given,
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "enable_progress_bar": progress,
            "log_every_n_steps": max(1, min(10, max_steps)),
            "default_root_dir": log_dir,
        }
    )
    clock = time.perf_counter()
    trainer.fit(module)
    return time.perf_counter() - clock


def train_sfd(
    args: list[str], callbacks: list[pl.Callback], log_dir: Path, progress: bool, seed: int = 0
) -> tuple[SFDModule, float, int]:
    """Build `SFDModule` from an `sfd fit` command line and fit it with the harness's Trainer.

    Returns:
        (the fitted module, seconds of the fit, iterations).
    """
    pl.seed_everything(seed, verbose=False)
    iterations = parse_fit_config(args, one_line_errors=True).trainer.max_steps
    # One epoch is the whole run: one progress bar.
    module, trainer_config = build_from_fit_config(
        [*args, "--model.steps_per_epoch", str(iterations)]
    )
    seconds = fit_module(module, iterations, log_dir, progress, callbacks, trainer_config)
    return module, seconds, iterations


FAKE_SCORE_CLASSES = {  # denoiser kind -> the teacher class that loads a `save_denoiser` folder
    VPUNetDenoiser.kind: "sfd.teachers.PretrainedVPTeacher",
    StableDiffusionDenoiser.kind: "sfd.teachers.StableDiffusionTeacher",
    SD3Denoiser.kind: "sfd.teachers.SD3Teacher",
}


def save_denoiser(
    denoiser: VPUNetDenoiser | StableDiffusionDenoiser | SD3Denoiser, folder: Path
) -> str:
    """Write a trained denoiser (a fake score, a fine-tuned teacher) as a folder a teacher class loads.

    A VP UNet denoiser gets the `DDPMPipeline` layout plus sfd.json (it loads with
    `PretrainedVPTeacher`, `sfd eval`, and in `sfd fit` as `model.fake_score` or
    `model.teacher`); a Stable Diffusion denoiser gets its `unet/` and `scheduler/` (it loads with
    `StableDiffusionTeacher` as `model.fake_score`; prompts are still encoded by the teacher's
    own text encoder); an SD3 denoiser gets its `transformer/` and `scheduler/` (it loads with
    `SD3Teacher` as `model.fake_score`, prompts likewise encoded by the teacher's pipeline).

    Args:
        denoiser: the network with its schedule.
        folder: an existing, empty folder.

    Returns:
        the class path that loads the folder (`FAKE_SCORE_CLASSES`).
    """
    if denoiser.kind not in FAKE_SCORE_CLASSES:  # e.g. SDXL: no teacher class loads a bare UNet
        raise SFDConfigError(
            f"cannot save a {type(denoiser).__name__}; savable denoiser kinds: "
            f"{sorted(FAKE_SCORE_CLASSES)}"
        )
    if isinstance(denoiser, StableDiffusionDenoiser):
        denoiser.unet.save_pretrained(folder / "unet", safe_serialization=True)
        scheduler = {**denoiser.scheduler_config, "prediction_type": denoiser.prediction_type}
        (folder / "scheduler").mkdir(exist_ok=True)
        (folder / "scheduler" / "scheduler_config.json").write_text(
            json.dumps(scheduler, indent=2) + "\n"
        )
        return FAKE_SCORE_CLASSES[denoiser.kind]
    if isinstance(denoiser, SD3Denoiser):
        denoiser.transformer.save_pretrained(folder / "transformer", safe_serialization=True)
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(denoiser.scheduler_config)
        scheduler.save_pretrained(folder / "scheduler")
        return FAKE_SCORE_CLASSES[denoiser.kind]
    scheduler = DDPMScheduler.from_config(denoiser.scheduler_config)
    DDPMPipeline(unet=denoiser.unet, scheduler=scheduler).save_pretrained(
        folder, safe_serialization=True
    )
    config = {"num_classes": denoiser.num_classes, "null_class": denoiser.null_class}
    (folder / SFD_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return FAKE_SCORE_CLASSES[denoiser.kind]


@dataclass
class StageOne:
    """The cached stage-1 (distillation) networks and what their run recorded.

    Attributes:
        folder: the cache folder.
        cached: whether it was reused.
        seconds: training seconds of the run that built it (a `TimedForgettingCurve`'s own
            evaluations left out).
        iterations: its iterations.
        curve: its forgetting curve ({iteration, seconds, ua, remain_accuracy} points).
        description: what the cache key covers.
        fake_score_class: the teacher class that loads its fake score (`save_denoiser`).
        adapters: whether it holds adapters of the teacher (shared base) instead of networks.
    """

    folder: Path
    cached: bool
    seconds: float
    iterations: int
    curve: list[dict[str, float]] = field(default_factory=list)
    description: dict[str, Any] = field(default_factory=dict)
    fake_score_class: str = FAKE_SCORE_CLASSES[VPUNetDenoiser.kind]
    adapters: bool = False
    curve_classifier: str | None = None  # `weights_fingerprint` of the classifier that read `curve`

    @classmethod
    def load(
        cls, folder: Path, cached: bool = False, description: dict[str, Any] | None = None
    ) -> StageOne:
        """The stage-1 networks of a folder `save_stage_one` wrote."""
        record = json.loads((folder / STAGE_ONE_RUN).read_text())
        return cls(
            folder,
            cached,
            record["seconds"],
            record["iterations"],
            record["curve"],
            description or {},
            record.get("fake_score_class", FAKE_SCORE_CLASSES[VPUNetDenoiser.kind]),
            (folder / STAGE_ONE_ADAPTERS).is_dir(),
            record.get("curve_classifier"),
        )

    @property
    def generator_dir(self) -> Path:
        return self.folder / "generator"

    @property
    def fake_score_dir(self) -> Path:
        return self.folder / "fake_score"

    @property
    def adapters_dir(self) -> Path:
        return self.folder / STAGE_ONE_ADAPTERS

    def generator(self, teacher_dir: str | Path) -> OneStepGenerator:
        """The stage-1 generator (the distilled-without-forgetting model), in eval mode.

        Args:
            teacher_dir: the teacher folder stage 1 ran on (a shared-base stage 1 holds only
                adapters: its generator is the teacher reloaded from there with the adapter).
        """
        if not self.adapters:
            return load_generator(self.generator_dir)
        record = read_adapters_record(self.adapters_dir, "stage 1")
        source = record["base_source"]
        init_args = dict(source["init_args"]) | {"pretrained_model_name_or_path": str(teacher_dir)}
        teacher = teacher_from_source(source | {"init_args": init_args})
        view = saved_adapter_view(teacher, self.adapters_dir, GENERATOR_ADAPTER)
        return OneStepGenerator(view, record["sigma_init"], record["t_init"]).eval()

    def export_generator(self, teacher_dir: str | Path, target: Path) -> None:
        """Write the stage-1 generator as an exported generator folder (a shared base's merged)."""
        if self.adapters:
            save_generator(self.generator(teacher_dir), target, overwrite=True)
        else:
            copy_export(self.generator_dir, target)

    def stage_two_arguments(self) -> list[str]:
        """`sfd fit` options that start SFD from these networks (the teacher stays as given):
        a shared base's adapters from the stage-1 adapters."""
        if self.adapters:
            return ["--model.adapters.start_from", str(self.adapters_dir)]
        return [
            "--model.generator", GENERATOR_CLASS,
            "--model.generator.init_args.pretrained_model_name_or_path", str(self.generator_dir),
            "--model.fake_score", self.fake_score_class,
            "--model.fake_score.init_args.pretrained_model_name_or_path", str(self.fake_score_dir),
        ]  # fmt: skip


def stage_two_label(adapters: Any) -> str:
    """The demos' stage-2 phase label: full copies start from the stage-1 networks, a shared
    base's adapters (`model.adapters` set) from the stage-1 adapters."""
    if adapters is None:
        return "stage 2: SFD from the stage-1 generator and fake score"
    return "stage 2: SFD with adapters of the frozen teacher (shared base), from stage 1's"


def stage_one_description(
    teacher_key: str, args: list[str], conditions_key: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a stage-1 cache key covers (`stage_one`'s arguments): the teacher, the `sfd fit`
    model settings and iterations, and for adapters how their EMA averages (`ADAPTER_EMA`: a
    stage 1 cached while the EMA averaged each factor is not reused)."""
    config = parse_fit_config(args, one_line_errors=True)
    model = config.model.as_dict()
    # Stage 1 has no unlearning term (forget weights 0): the override's guidance trains nothing
    # there, and leaving it out keeps the keys of stage 1s cached before the setting existed.
    model.pop("override_guidance", None)
    model["teacher"]["init_args"]["pretrained_model_name_or_path"] = teacher_key
    model["conditions"].setdefault("init_args", {}).update(conditions_key or {})
    description = {"teacher": teacher_key, "model": model, "iterations": config.trainer.max_steps}
    if model.get("adapters") is not None:
        description["adapter_ema"] = ADAPTER_EMA
    return description


def stage_one(
    cache: Path,
    teacher_key: str,
    args: list[str],
    curve: TimedForgettingCurve | ForgettingCurve | None,
    log_dir: Path,
    progress: bool,
    seed: int,
    conditions_key: dict[str, Any] | None = None,
) -> StageOne:
    """Stage 1 from the cache, or distilled now and cached.

    Args:
        cache: the cache root.
        teacher_key: the teacher folder's cache name (its content hash).
        args: the stage-1 `sfd fit` command line (forget weights 0).
        curve: the run's forgetting curve (recorded in the cache), or None.
        log_dir: logs of the run.
        progress: progress bars.
        seed: seed of the run.
        conditions_key: condition settings the cache key records differently (e.g. a prompt
            file's content hash instead of its path, which differs between runs).

    Returns:
        the stage-1 networks.
    """
    description = stage_one_description(teacher_key, args, conditions_key)

    reader = None if curve is None else weights_fingerprint(curve.classifier)

    def build(folder: Path) -> None:
        callbacks = [] if curve is None else [curve]
        module, seconds, iterations = train_sfd(args, callbacks, log_dir, progress, seed)
        curve_points = curve.as_dicts() if curve else []
        seconds -= getattr(curve, "evaluation_seconds", 0.0)
        save_stage_one(module, folder, seconds, iterations, curve_points, reader)

    folder, cached = cached_build(cache, "stage1", description, build)
    return curve_read_by(StageOne.load(folder, cached, description), reader)


def curve_read_by(stage1: StageOne, reader: str | None) -> StageOne:
    """`stage1` with its cached forgetting curve left out unless the evaluation classifier
    `reader` (its `weights_fingerprint`) read it: the cache key covers what stage 1 trains, not the
    classifier that read its curve, and a curve read by another one (or by one not recorded)
    would sit beside numbers read by this one."""
    if not stage1.curve or stage1.curve_classifier == reader:
        return stage1
    announce(
        "sfd",
        "stage 1's cached forgetting curve was read by another evaluation classifier; it is left "
        "out (delete the cache entry to measure it again)",
    )
    return replace(stage1, curve=[], curve_classifier=None)


def save_stage_one(
    module: SFDModule,
    folder: Path,
    seconds: float,
    iterations: int,
    curve: list[dict[str, float]] | None = None,
    curve_classifier: str | None = None,
) -> None:
    """Write a distillation run as stage-1 networks: generator/, fake_score/ and run.json; a
    shared-base run as its adapters alone: adapters/ (the shipped generator's, under
    "generator", and the fake score's) and run.json.

    Args:
        module: the fitted module (forget weights 0).
        folder: an existing folder (empty, or holding an earlier save to replace).
        seconds: training seconds of the run.
        iterations: its iterations.
        curve: its forgetting curve points.
        curve_classifier: `weights_fingerprint` of the evaluation classifier that read them.
    """
    record: dict[str, Any] = {"seconds": seconds, "iterations": iterations}
    if curve_classifier is not None:
        record["curve_classifier"] = curve_classifier
    if module.adapters is not None:
        shipped = module.export_generator
        (folder / STAGE_ONE_ADAPTERS).mkdir(exist_ok=True)
        save_adapters(
            {GENERATOR_ADAPTER: shipped.denoiser, FAKE_SCORE_ADAPTER: module.fake_score},
            folder / STAGE_ONE_ADAPTERS,
            {
                "sigma_init": None if shipped.t_init is not None else shipped.sigma_init,
                "t_init": shipped.t_init,
                "training": training_record(module),
            },
        )
    else:
        save_generator(
            module.export_generator,
            folder / "generator",
            overwrite=True,
            training=training_record(module),
        )
        (folder / "fake_score").mkdir(exist_ok=True)
        record["fake_score_class"] = save_denoiser(module.fake_score, folder / "fake_score")
    record["curve"] = curve or []
    (folder / STAGE_ONE_RUN).write_text(json.dumps(record, indent=2) + "\n")


def copy_export(source: Path, target: Path) -> None:
    """Copy an exported generator folder (e.g. the cached stage 1, its model card included)."""

    def write(staging: Path) -> None:
        shutil.copytree(source, staging, dirs_exist_ok=True)

    write_folder_atomically(target, write)
