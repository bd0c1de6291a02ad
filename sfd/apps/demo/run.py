"""`sfd demo`: teacher -> classifier -> SFD and a no-forgetting baseline -> evaluation -> report.

Every phase runs the real components: a diffusers DDPM teacher (trained, or reused from the
cache), the evaluation classifier, `SFDModule` under a Lightning `Trainer`, torchmetrics FID/KID.
The SFD settings are an `sfd fit` configuration (the preset `sfd_digits.yaml` beside this file
plus any `--model.*` / `--trainer.*` overrides), parsed and built by the same LightningCLI parser.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from sfd.apps.data import DIGITS, load_images, train_heldout_split
from sfd.apps.demo.cache import cached_build, data_fingerprint, default_cache_dir, resolved_settings
from sfd.apps.demo.report import DemoResults, write_report
from sfd.apps.teacher_training import train_teacher
from sfd.core.module import SFDModule
from sfd.errors import SFDConfigError
from sfd.eval.classifier import Classifier, save_classifier, train_classifier
from sfd.eval.evaluate import (
    ModelEvaluation,
    ddim_sampler,
    environment,
    evaluate_sampler,
    generate,
    library_versions,
    measure_throughput,
    one_step_sampler,
)
from sfd.eval.forgetting_curve import ForgettingCurve
from sfd.eval.metrics import feature_distances
from sfd.images import LabelledImages, to_uint8
from sfd.pipelines.io import load_generator, save_generator
from sfd.teachers.unet import PretrainedVPTeacher
from sfd.training.cli import build_from_fit_config, parse_fit_config

SFD_PRESET = "sfd_digits.yaml"  # beside this module


def default_sfd_config() -> Path:
    """The packaged preset of the demo's SFD settings."""
    return Path(str(resources.files("sfd.apps.demo") / SFD_PRESET))


@dataclass
class DemoSettings:
    """Everything one demo run depends on."""

    output_dir: Path = Path("demo-output")
    data: str = DIGITS
    forget: int = 0
    override: int = 1
    seed: int = 0
    heldout_fraction: float = 0.2
    teacher_cache: Path | None = None
    teacher_steps: int | None = None
    teacher_channels: tuple[int, ...] | None = None
    classifier_steps: int | None = None
    sfd_config: Path | None = None
    sfd_args: list[str] = field(default_factory=list)
    baseline_iterations: int | None = None
    curve_every: int | None = None
    curve_per_class: int = 32
    eval_per_class: int = 200
    ddim_steps: int = 50
    throughput_batch: int = 64
    throughput_repeats: int = 3
    time_full_schedule: bool = True
    grid_per_class: int = 10
    threads: int | None = None
    progress: bool = True

    def sfd_command_line(
        self, teacher_dir: str = "set-by-sfd-demo", forgetting: bool = True
    ) -> list[str]:
        """The `sfd fit`-style arguments of one SFD run: preset, user overrides, demo settings.

        The demo owns the teacher, the forget/override classes and the seed; `forgetting=False`
        zeroes both forget weights (distillation without forgetting).
        """
        conditions = "--model.conditions.init_args."
        args = ["-c", str(self.sfd_config or default_sfd_config()), *self.sfd_args]
        args += ["--model.teacher.init_args.pretrained_model_name_or_path", teacher_dir]
        args += [
            f"{conditions}forget",
            str(self.forget),
            f"{conditions}override",
            str(self.override),
        ]
        args += ["--model.seed", str(self.seed)]
        if not forgetting:
            args += ["--model.lambda_sg_forget", "0", "--model.lambda_g_forget", "0"]
            if self.baseline_iterations is not None:
                args += ["--trainer.max_steps", str(self.baseline_iterations)]
        return args


def check_settings(settings: DemoSettings, data: LabelledImages) -> Any:
    """Raise `SFDConfigError` for a bad class, count or path before anything is written.

    Returns:
        the parsed SFD configuration (jsonargparse namespace).
    """
    sfd = parse_fit_config(settings.sfd_command_line(), one_line_errors=True)
    k = data.num_classes
    for name in ("forget", "override"):
        value = getattr(settings, name)
        if not 0 <= value < k:
            raise SFDConfigError(f"--{name} {value} is not a class of the data (0..{k - 1})")
    if settings.forget == settings.override:
        raise SFDConfigError(
            f"--override {settings.override} equals --forget; choose another class"
        )
    positive = {
        "--trainer.max_steps": sfd.trainer.max_steps,
        "--model.batch_size": sfd.model.batch_size,
        "--eval-per-class": settings.eval_per_class - 1,
        "--curve-per-class": settings.curve_per_class,
        "--ddim-steps": settings.ddim_steps,
        "--throughput-batch": settings.throughput_batch,
        "--grid-per-class": settings.grid_per_class,
    }
    for flag, value in positive.items():
        if value < 1:
            raise SFDConfigError(f"{flag} is too small (got {value}; need at least 1, 2 for eval)")
    if settings.curve_every is not None and settings.curve_every < 1:
        raise SFDConfigError(f"--curve-every {settings.curve_every} must be >= 1")
    if settings.baseline_iterations is not None and settings.baseline_iterations < 1:
        raise SFDConfigError(f"--baseline-iterations {settings.baseline_iterations} must be >= 1")
    if settings.output_dir.exists() and not settings.output_dir.is_dir():
        raise SFDConfigError(f"--output-dir {str(settings.output_dir)!r} is a file, not a folder")
    return sfd


def announce(phase: str) -> None:
    print(f"[sfd demo] {phase}", file=sys.stderr, flush=True)


def run_demo(settings: DemoSettings) -> dict[str, Path]:
    """Run the whole demo; returns the report's artefact paths."""
    started = time.perf_counter()
    if settings.threads is not None:
        if settings.threads < 1:
            raise SFDConfigError(f"--threads {settings.threads} must be at least 1")
        torch.set_num_threads(settings.threads)
    if settings.data != DIGITS and not Path(settings.data).exists():
        raise SFDConfigError(f"--data {settings.data!r} does not exist")
    data = load_images(settings.data)
    sfd = check_settings(settings, data)
    iterations = sfd.trainer.max_steps
    train, heldout = train_heldout_split(data, settings.heldout_fraction, settings.seed)
    output = settings.output_dir
    output.mkdir(parents=True, exist_ok=True)
    cache = settings.teacher_cache or default_cache_dir()
    split = {"data": data_fingerprint(settings.data), "heldout_fraction": settings.heldout_fraction}
    split["split_seed"] = settings.seed
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    announce(f"1/6 teacher (cache: {cache})")
    teacher_given: dict[str, Any] = {"seed": settings.seed}
    if settings.teacher_steps is not None:
        teacher_given["max_steps"] = settings.teacher_steps
    if settings.teacher_channels is not None:
        teacher_given["block_out_channels"] = tuple(settings.teacher_channels)
    teacher_description = {**split, **resolved_settings(train_teacher, **teacher_given)}
    teacher_dir, teacher_cached = cached_build(
        cache,
        "teacher",
        teacher_description,
        lambda folder: train_teacher(
            train,
            folder,
            accelerator=sfd.trainer.accelerator,
            progress=settings.progress,
            **teacher_given,
        ),
    )
    announce(f"teacher {'reused from' if teacher_cached else 'trained into'} {teacher_dir}")
    seconds["teacher"] = time.perf_counter() - clock

    clock = time.perf_counter()
    announce("2/6 evaluation classifier")
    classifier_given: dict[str, Any] = {"seed": settings.seed}
    if settings.classifier_steps is not None:
        classifier_given["max_steps"] = settings.classifier_steps
    classifier, classifier_accuracy = train_classifier(
        train, heldout, progress=settings.progress, **classifier_given
    )
    save_classifier(classifier, output / "classifier")
    announce(f"classifier held-out accuracy {100 * classifier_accuracy:.1f} %")
    seconds["classifier"] = time.perf_counter() - clock

    teacher = PretrainedVPTeacher(str(teacher_dir))
    if settings.curve_every is None:
        settings.curve_every = max(1, iterations // 20)
    runs: dict[str, tuple[Path, list[dict[str, float]]]] = {}
    for phase, key, forgetting in (
        ("3/6 SFD (forgetting)", "sfd", True),
        ("4/6 distillation without forgetting", "distilled_without_forgetting", False),
    ):
        clock = time.perf_counter()
        announce(phase)
        generator_dir = output / ("generator" if forgetting else "generator_without_forgetting")
        curve = ForgettingCurve(
            classifier,
            data.num_classes,
            [settings.forget],
            settings.curve_every,
            settings.curve_per_class,
            settings.seed,
        )
        module = train_sfd(settings, str(teacher_dir), forgetting, curve, output / "logs" / key)
        save_generator(module.export_generator, generator_dir, overwrite=True)
        runs[key] = (generator_dir, curve.as_dicts())
        seconds[key] = time.perf_counter() - clock
        del module

    clock = time.perf_counter()
    announce("5/6 evaluation")
    results = evaluate_all(settings, sfd, teacher, classifier, train, heldout, runs)
    seconds["evaluation"] = time.perf_counter() - clock
    results.protocol.update(
        classifier_heldout_accuracy=classifier_accuracy,
        teacher={"folder": str(teacher_dir), "reused_from_cache": teacher_cached},
        teacher_settings=teacher_description,
        classifier_settings=resolved_settings(train_classifier, **classifier_given),
    )
    seconds["total"] = time.perf_counter() - started
    results.protocol["phase_seconds"] = {k: round(v, 1) for k, v in seconds.items()}

    announce("6/6 report")
    paths = write_report(results, output)
    return paths


def train_sfd(
    settings: DemoSettings,
    teacher_dir: str,
    forgetting: bool,
    curve: ForgettingCurve,
    log_dir: Path,
) -> SFDModule:
    """One SFD run with a Lightning `Trainer`; `forgetting=False` zeroes both forget weights."""
    pl.seed_everything(settings.seed, verbose=False)
    args = settings.sfd_command_line(teacher_dir, forgetting)
    iterations = parse_fit_config(args, one_line_errors=True).trainer.max_steps
    # One epoch is the whole run: one progress bar.
    module, trainer_config = build_from_fit_config(
        [*args, "--model.steps_per_epoch", str(iterations)]
    )
    trainer = pl.Trainer(
        **{
            **trainer_config,
            "devices": 1,
            "logger": CSVLogger(log_dir.parent, name=log_dir.name, version=""),
            "callbacks": [*(trainer_config.get("callbacks") or []), curve],
            "enable_checkpointing": False,
            "enable_model_summary": False,
            "enable_progress_bar": settings.progress,
            "log_every_n_steps": max(1, min(10, iterations)),
            "default_root_dir": log_dir,
        }
    )
    trainer.fit(module)
    return module


def evaluate_all(
    settings: DemoSettings,
    sfd: Any,
    teacher: PretrainedVPTeacher,
    classifier: Classifier,
    train: LabelledImages,
    heldout: LabelledImages,
    runs: dict[str, tuple[Path, list[dict[str, float]]]],
) -> DemoResults:
    """Evaluate the teacher (DDIM), the baseline and SFD generators (reloaded from their exports)."""
    num_classes = heldout.num_classes
    remain_mask = heldout.labels != settings.forget
    real_remain = heldout.images[remain_mask]
    samplers = {
        "teacher": ddim_sampler(teacher, settings.ddim_steps),
        "distilled_without_forgetting": one_step_sampler(
            load_generator(runs["distilled_without_forgetting"][0])
        ),
        "sfd": one_step_sampler(load_generator(runs["sfd"][0])),
    }
    models: dict[str, ModelEvaluation] = {}
    grids = {}
    grid_labels = torch.arange(num_classes).repeat_interleave(settings.grid_per_class)
    for key, sampler in samplers.items():
        models[key] = evaluate_sampler(
            sampler,
            classifier,
            real_remain,
            num_classes,
            [settings.forget],
            [settings.override],
            settings.eval_per_class,
            seed=settings.seed,
            throughput_batch=settings.throughput_batch,
            throughput_repeats=settings.throughput_repeats,
            progress=settings.progress,
        )
        grids[key] = to_uint8(generate(sampler, grid_labels, settings.seed + 1))
    slow = None
    if settings.time_full_schedule:
        full = ddim_sampler(teacher, len(teacher.sigma_table))  # the network is warm from DDIM
        slow = measure_throughput(full, num_classes, settings.throughput_batch, 1, warmup=False)
    throughput = {
        "one-step SFD generator": models["sfd"].throughput,
        f"teacher, DDIM {settings.ddim_steps} steps": models["teacher"].throughput,
        f"teacher, DDIM {len(teacher.sigma_table)} steps": slow,
    }
    nfe = {
        "one-step SFD generator": 1,
        f"teacher, DDIM {settings.ddim_steps} steps": settings.ddim_steps,
        f"teacher, DDIM {len(teacher.sigma_table)} steps": len(teacher.sigma_table),
    }
    train_remain = train.images[train.labels != settings.forget]
    floor = feature_distances(train_remain, real_remain, classifier, seed=settings.seed)
    protocol = {
        "seed": settings.seed,
        "data": settings.data,
        "train_images": len(train),
        "heldout_images": len(heldout),
        "fid_reference": f"{len(real_remain)} held-out real remain-class images (uint8, as stored)",
        "generated_per_class": settings.eval_per_class,
        "generated_remain_images": settings.eval_per_class * (num_classes - 1),
        "noise": "sample i uses the same z for every model (seed above)",
        "feature_extractor": "evaluation classifier penultimate layer (torchmetrics feature=)",
        "kid": models["sfd"].extra,
        "fid_real_train_vs_heldout": floor.fid,
        "kid_real_train_vs_heldout": floor.kid_mean,
        "samplers": {key: sampler.name for key, sampler in samplers.items()},
        "sfd_settings": {"iterations": sfd.trainer.max_steps, "model": sfd.model.as_dict()},
        "baseline": "same SFD run with lambda_sg_forget = lambda_g_forget = 0",
        "curve": {"every": settings.curve_every, "per_class": settings.curve_per_class},
        "throughput": "timed calls on one fixed batch after one warm-up call (no extrapolation)",
        "libraries": library_versions(),
        "environment": environment(),
    }
    return DemoResults(
        num_classes=num_classes,
        forget=settings.forget,
        override=settings.override,
        models=models,
        forgetting_curve=runs["sfd"][1],
        baseline_curve=runs["distilled_without_forgetting"][1],
        iterations=sfd.trainer.max_steps,
        throughput={name: {**asdict(t), "nfe": nfe[name]} for name, t in throughput.items() if t},
        protocol=protocol,
        grids=grids,
    )
