"""`sfd demo`: teacher -> classifier -> SFD and a no-forgetting baseline -> evaluation -> report.

Every phase runs the real components: a diffusers DDPM teacher (trained, or reused from the
cache), the evaluation classifier, `SFDModule` under a Lightning `Trainer`, torchmetrics FID/KID.
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger

from sfd.classifier import Classifier, save_classifier, train_classifier
from sfd.conditions import ClassConditions
from sfd.data import DIGITS, LabelledImages, load_images, train_heldout_split
from sfd.demo_cache import cached_build, data_fingerprint, default_cache_dir, resolved_settings
from sfd.errors import SFDConfigError
from sfd.evaluation import (
    ModelEvaluation,
    ddim_sampler,
    environment,
    evaluate_sampler,
    generate,
    library_versions,
    measure_throughput,
    one_step_sampler,
)
from sfd.export import load_generator, save_generator
from sfd.forgetting_curve import ForgettingCurve
from sfd.metrics import feature_distances
from sfd.module import SFDModule
from sfd.pipeline import images_to_uint8
from sfd.report import DemoResults, write_report
from sfd.sigma import UniformTimestepSigma
from sfd.teacher_training import train_teacher
from sfd.teachers.unet import PretrainedVPTeacher


@dataclass
class SFDSettings:
    """The demo's SFD hyperparameters (passed to `SFDModule`; the module's math is unchanged)."""

    iterations: int = 300
    batch_size: int = 64
    lr: float = 3e-4
    alpha: float = 1.2
    sigma_init: float = 2.5
    t_min: int = 38
    t_max: int = 712
    lambda_sg_remain: float = 1.0
    lambda_sg_forget: float = 1.0
    lambda_g_remain: float = 1.0
    lambda_g_forget: float = 1.0
    ema_decay: float = 0.98
    grad_clip_value: float = 1.0


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
    sfd: SFDSettings = field(default_factory=SFDSettings)
    baseline_iterations: int | None = None
    curve_every: int | None = None
    curve_per_class: int = 32
    eval_per_class: int = 200
    ddim_steps: int = 50
    throughput_batch: int = 64
    throughput_repeats: int = 3
    time_full_schedule: bool = True
    grid_per_class: int = 10
    accelerator: str = "cpu"
    threads: int | None = None
    progress: bool = True


def check_settings(settings: DemoSettings, data: LabelledImages) -> None:
    """Raise `SFDConfigError` for a bad class, count or path before anything is written."""
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
        "--iterations": settings.sfd.iterations,
        "--batch-size": settings.sfd.batch_size,
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
    check_settings(settings, data)
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
            accelerator=settings.accelerator,
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
        settings.curve_every = max(1, settings.sfd.iterations // 20)
    runs: dict[str, tuple[Path, list[dict[str, float]]]] = {}
    for phase, key, forgetting in (
        ("3/6 SFD (forgetting)", "sfd", True),
        ("4/6 distillation without forgetting", "distilled_without_forgetting", False),
    ):
        clock = time.perf_counter()
        announce(phase)
        iterations = (
            settings.sfd.iterations
            if forgetting or settings.baseline_iterations is None
            else settings.baseline_iterations
        )
        generator_dir = output / ("generator" if forgetting else "generator_without_forgetting")
        curve = ForgettingCurve(
            classifier,
            data.num_classes,
            [settings.forget],
            settings.curve_every,
            settings.curve_per_class,
            settings.seed,
        )
        module = train_sfd(teacher, settings, iterations, forgetting, curve, output / "logs" / key)
        save_generator(module.export_generator, generator_dir, overwrite=True)
        runs[key] = (generator_dir, curve.as_dicts())
        seconds[key] = time.perf_counter() - clock
        del module

    clock = time.perf_counter()
    announce("5/6 evaluation")
    results = evaluate_all(settings, teacher, classifier, train, heldout, runs)
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
    teacher: PretrainedVPTeacher,
    settings: DemoSettings,
    iterations: int,
    forgetting: bool,
    curve: ForgettingCurve,
    log_dir: Path,
) -> SFDModule:
    """One SFD run with a Lightning `Trainer`; `forgetting=False` zeroes both forget weights."""
    s = settings.sfd
    pl.seed_everything(settings.seed, verbose=False)
    adam = functools.partial(torch.optim.Adam, lr=s.lr, betas=(0.0, 0.999))
    module = SFDModule(
        teacher,
        ClassConditions(settings.forget, settings.override),
        UniformTimestepSigma(s.t_min, s.t_max),
        sigma_init=s.sigma_init,
        alpha=s.alpha,
        lambda_sg_remain=s.lambda_sg_remain,
        lambda_sg_forget=s.lambda_sg_forget if forgetting else 0.0,
        lambda_g_remain=s.lambda_g_remain,
        lambda_g_forget=s.lambda_g_forget if forgetting else 0.0,
        batch_size=s.batch_size,
        fake_optimizer=adam,
        generator_optimizer=adam,
        grad_clip_value=s.grad_clip_value,
        ema_decay=s.ema_decay,
        seed=settings.seed,
        steps_per_epoch=iterations,
    )
    trainer = pl.Trainer(
        accelerator=settings.accelerator,
        devices=1,
        max_steps=iterations,
        logger=CSVLogger(log_dir.parent, name=log_dir.name, version=""),
        callbacks=[curve],
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=settings.progress,
        log_every_n_steps=max(1, min(10, iterations)),
        default_root_dir=log_dir,
    )
    trainer.fit(module)
    return module


def evaluate_all(
    settings: DemoSettings,
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
        grids[key] = images_to_uint8(generate(sampler, grid_labels, settings.seed + 1))
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
        "sfd_settings": asdict(settings.sfd),
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
        iterations=settings.sfd.iterations,
        throughput={name: {**asdict(t), "nfe": nfe[name]} for name, t in throughput.items() if t},
        protocol=protocol,
        grids=grids,
    )
