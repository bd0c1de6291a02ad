"""`sfd demo`: teacher -> classifier -> distillation (stage 1) -> SFD (stage 2) -> evaluation -> report.

Every phase runs the real components: a diffusers DDPM teacher with a null class (trained, or
reused from the cache), the evaluation classifier (cached), `SFDModule` under a Lightning
`Trainer`, torchmetrics FID/KID. SFD takes the two-stage path (docs/method.md §5): stage 1 is
distillation without forgetting, which is also the demo's no-forgetting baseline and is cached by
content hash like the teacher; stage 2 is SFD started from the stage-1 generator and fake score
with the original teacher frozen. The SFD settings are an `sfd fit` configuration (the preset
`sfd_digits.yaml` beside this file plus any `--model.*` / `--trainer.*` overrides).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import diffusers
import torch

from sfd.apps.compare.methods import DistillMethod, Fitted, Run, SFDMethod
from sfd.apps.compare.run import prepare_classifier
from sfd.apps.compare.workspace import (
    Workspace,
    announce,
    build_teacher,
    load_split,
    teacher_recipe,
)
from sfd.apps.demo.report import DemoResults, write_report
from sfd.apps.demo.settings import DemoSettings, check_settings, default_sfd_config
from sfd.core.generator import training_record
from sfd.errors import SFDConfigError
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
from sfd.eval.metrics import feature_distances
from sfd.folders import write_folder_atomically
from sfd.images import to_uint8
from sfd.pipelines.io import load_generator, save_generator

TOOL = "sfd demo"
__all__ = ["DemoSettings", "check_settings", "default_sfd_config", "run_demo"]


def run_demo(settings: DemoSettings) -> dict[str, Path]:
    """Run the whole demo; returns the report's artefact paths."""
    started = time.perf_counter()
    if settings.threads is not None:
        if settings.threads < 1:
            raise SFDConfigError(f"--threads {settings.threads} must be at least 1")
        torch.set_num_threads(settings.threads)
    if not settings.progress:  # also the loading bars of diffusers' from_pretrained
        diffusers.utils.logging.disable_progress_bar()
    workspace = load_split(
        settings.data, settings.heldout_fraction, settings.seed, settings.teacher_cache
    )
    sfd = check_settings(settings, workspace.data)  # every check before anything is written
    output = settings.output_dir
    output.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    clock = time.perf_counter()
    announce(TOOL, f"1/6 teacher (cache: {workspace.cache})")
    recipe = teacher_recipe(settings.seed, settings.teacher_steps, settings.teacher_channels)
    teacher_dir, cached, description, _ = build_teacher(
        workspace, recipe, sfd.trainer.accelerator, settings.progress
    )
    workspace.teacher_dir, workspace.teacher_cached = teacher_dir, cached
    workspace.teacher_settings = description
    announce(TOOL, f"teacher {'reused from' if cached else 'trained into'} {teacher_dir}")
    seconds["teacher"] = time.perf_counter() - clock

    clock = time.perf_counter()
    announce(TOOL, "2/6 evaluation classifier")
    prepare_classifier(workspace, settings)
    assert workspace.classifier_dir is not None
    shutil.copytree(workspace.classifier_dir, output / "classifier", dirs_exist_ok=True)
    announce(TOOL, f"classifier held-out accuracy {100 * workspace.classifier_accuracy:.1f} %")
    seconds["classifier"] = time.perf_counter() - clock

    run = Run(settings, workspace, {}, output / "logs", sfd.trainer.accelerator)
    clock = time.perf_counter()
    announce(TOOL, "3/6 stage 1: distillation without forgetting (cached like the teacher)")
    distilled = DistillMethod().fit(run)
    assert run.stage1 is not None
    announce(
        TOOL,
        f"stage 1 {'reused from' if run.stage1.cached else 'trained into'} {run.stage1.folder}",
    )
    copy_export(run.stage1.generator_dir, output / "generator_without_forgetting")
    seconds["stage1"] = time.perf_counter() - clock

    clock = time.perf_counter()
    announce(TOOL, "4/6 stage 2: SFD from the stage-1 generator and fake score")
    forgetting = SFDMethod(two_stage=True).fit(run)
    module = forgetting.extra.pop("module")
    record = training_record(module)
    save_generator(module.export_generator, output / "generator", True, training=record)
    seconds["sfd"] = time.perf_counter() - clock

    clock = time.perf_counter()
    announce(TOOL, "5/6 evaluation")
    results = evaluate_all(settings, sfd, workspace, output, distilled, forgetting)
    # The same weights again, now with their measured numbers on the model card.
    save_generator(
        module.export_generator,
        output / "generator",
        True,
        training=record,
        metrics=results.models["sfd"].to_dict(),
        metrics_source=f"{TOOL} evaluation (metrics.json, models.sfd)",
    )
    seconds["evaluation"] = time.perf_counter() - clock
    seconds["total"] = time.perf_counter() - started
    results.protocol["phase_seconds"] = {k: round(v, 1) for k, v in seconds.items()}

    announce(TOOL, "6/6 report")
    return write_report(results, output)


def copy_export(source: Path, target: Path) -> None:
    """Copy an exported generator folder (e.g. the cached stage 1, its model card included)."""

    def write(staging: Path) -> None:
        shutil.copytree(source, staging, dirs_exist_ok=True)

    write_folder_atomically(target, write)


def evaluate_all(
    settings: DemoSettings,
    sfd: Any,
    workspace: Workspace,
    output: Path,
    distilled: Fitted,
    forgetting: Fitted,
) -> DemoResults:
    """Evaluate the teacher (DDIM) and both generators (reloaded from their exports)."""
    num_classes = workspace.data.num_classes
    real_remain = workspace.real_remain([settings.forget])
    teacher = workspace.teacher()
    samplers = {
        "teacher": ddim_sampler(teacher, settings.ddim_steps),
        "distilled_without_forgetting": one_step_sampler(
            load_generator(output / "generator_without_forgetting")
        ),
        "sfd": one_step_sampler(load_generator(output / "generator")),
    }
    assert workspace.classifier is not None
    models: dict[str, ModelEvaluation] = {}
    grids = {}
    grid_labels = torch.arange(num_classes).repeat_interleave(settings.grid_per_class)
    for key, sampler in samplers.items():
        models[key] = evaluate_sampler(
            sampler,
            workspace.classifier,
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
    train_remain = workspace.train.images[workspace.train.labels != settings.forget]
    floor = feature_distances(train_remain, real_remain, workspace.classifier, seed=settings.seed)
    stage1 = forgetting.extra
    protocol = {
        "seed": settings.seed,
        "data": settings.data,
        "train_images": len(workspace.train),
        "heldout_images": len(workspace.heldout),
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
        "two_stage": {
            "stage1_iterations": stage1["stage1_iterations"],
            "stage1_training_seconds": stage1["stage1_seconds"],
            "stage1_reused_from_cache": stage1["stage1_cached"],
            "stage1_folder": stage1["stage1_folder"],
            "stage2_iterations": forgetting.iterations,
            "stage2_training_seconds": forgetting.train_seconds,
            "teacher": "the original teacher, frozen, in both stages",
        },
        "baseline": "stage 1: the same SFD settings with lambda_sg_forget = lambda_g_forget = 0",
        "curve": {
            "every": settings.curve_every,
            "forget_per_class": settings.curve_per_class,
            "remain_per_class": settings.curve_remain_per_class,
        },
        "throughput": "timed calls on one fixed batch after one warm-up call (no extrapolation)",
        "classifier_heldout_accuracy": workspace.classifier_accuracy,
        "classifier": {
            "folder": str(workspace.classifier_dir),
            "reused_from_cache": workspace.classifier_cached,
        },
        "teacher": {
            "folder": str(workspace.teacher_dir),
            "reused_from_cache": workspace.teacher_cached,
        },
        "teacher_settings": workspace.teacher_settings,
        "classifier_settings": workspace.classifier_settings,
        "libraries": library_versions(),
        "environment": environment(),
    }
    return DemoResults(
        num_classes=num_classes,
        forget=settings.forget,
        override=settings.override,
        models=models,
        forgetting_curve=forgetting.curve,
        baseline_curve=distilled.curve,
        iterations=forgetting.iterations,
        throughput={name: {**asdict(t), "nfe": nfe[name]} for name, t in throughput.items() if t},
        protocol=protocol,
        grids=grids,
    )
