"""`sfd compare`: several forgetting methods on one teacher, one classifier, one protocol, one report.

Phases: the teacher (cached), the evaluation classifier (cached), every chosen method in turn
(SFD one- and two-stage, distillation without forgetting, ESD, SalUn, Retrain), the evaluation of
the teacher and every method with the same noise, classifier and FID reference, the report.
Multi-step models (teacher, ESD, SalUn, Retrain) are sampled with the teacher's DDIM; one-step
generators directly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sfd.apps.compare.curve import first_reaching, sampler_for
from sfd.apps.compare.methods import METHODS, TITLES, Fitted, Run
from sfd.apps.compare.report import CompareResults, MethodReport, write_compare_report
from sfd.apps.compare.settings import CompareSettings, parse_baselines
from sfd.apps.compare.stages import save_denoiser
from sfd.apps.compare.workspace import (
    Workspace,
    announce,
    classifier_phase,
    start_run,
    teacher_phase,
    timed,
)
from sfd.apps.demo.settings import DemoSettings
from sfd.eval.evaluate import (
    ModelEvaluation,
    ddim_sampler,
    evaluate_sampler,
    generate,
)
from sfd.eval.metrics import FeatureDistances, feature_distances
from sfd.images import to_uint8
from sfd.pipelines.io import save_generator
from sfd.provenance import environment, library_versions
from sfd.teachers.unet import VPUNetDenoiser

TOOL = "sfd compare"
# Protocol entries shared with `sfd demo`.
SAME_NOISE = "sample i uses the same z for every model (seed above)"
FEATURES = "evaluation classifier penultimate layer (torchmetrics feature=)"
THROUGHPUT = "timed calls on one fixed batch after one warm-up call (no extrapolation)"


def run_compare(settings: CompareSettings) -> dict[str, Path]:
    """Run the chosen methods, evaluate them all the same way, write the report.

    Returns:
        the report's artefact paths.
    """
    started = time.perf_counter()
    workspace, sfd = start_run(settings)  # every check before anything is written
    baselines = parse_baselines(settings.baselines_config, settings.baseline_args)
    output = settings.output_dir
    output.mkdir(parents=True, exist_ok=True)
    total = 4 + len(settings.methods)
    seconds: dict[str, float] = {}

    with timed(seconds, "teacher"):
        teacher_phase(workspace, settings, sfd.trainer.accelerator, TOOL, f"1/{total}")
    with timed(seconds, "classifier"):
        classifier_phase(workspace, settings, TOOL, f"2/{total}")

    run = Run(settings, workspace, baselines, output / "logs", sfd.trainer.accelerator)
    fitted: dict[str, Fitted] = {}
    for index, key in enumerate(settings.methods):
        with timed(seconds, key):
            announce(TOOL, f"{3 + index}/{total} {TITLES[key]}")
            fitted[key] = METHODS[key].fit(run)

    with timed(seconds, "evaluation"):
        announce(TOOL, f"{total - 1}/{total} evaluation")
        results = evaluate_methods(settings, workspace, fitted, sfd)
    export_models(fitted, output)
    seconds["total"] = time.perf_counter() - started
    results.protocol["phase_seconds"] = {k: round(v, 1) for k, v in seconds.items()}

    announce(TOOL, f"{total}/{total} report")
    return write_compare_report(results, output)


def evaluate_one(sampler: Any, settings: DemoSettings, workspace: Workspace) -> ModelEvaluation:
    """The protocol of docs/method.md §6 for one model (same noise, classifier and reference)."""
    assert workspace.classifier is not None
    return evaluate_sampler(
        sampler,
        workspace.classifier,
        workspace.real_remain([settings.forget]),
        workspace.data.num_classes,
        [settings.forget],
        [settings.override],
        settings.eval_per_class,
        seed=settings.seed,
        throughput_batch=settings.throughput_batch,
        throughput_repeats=settings.throughput_repeats,
        progress=settings.progress,
    )


def evaluate_with_grid(
    sampler: Any, settings: DemoSettings, workspace: Workspace
) -> tuple[ModelEvaluation, Tensor]:
    """`evaluate_one` and the model's uint8 sample grid (`grid_per_class` rows per class)."""
    labels = torch.arange(workspace.data.num_classes).repeat_interleave(settings.grid_per_class)
    evaluation = evaluate_one(sampler, settings, workspace)
    return evaluation, to_uint8(generate(sampler, labels, settings.seed + 1))


def real_floor(settings: DemoSettings, workspace: Workspace) -> FeatureDistances:
    """FID / KID of the real training remain images against the held-out ones (the floor)."""
    real_remain = workspace.real_remain([settings.forget])
    train_remain = workspace.train.images[workspace.train.labels != settings.forget]
    assert workspace.classifier is not None
    return feature_distances(train_remain, real_remain, workspace.classifier, seed=settings.seed)


def protocol_head(settings: DemoSettings, workspace: Workspace) -> dict[str, Any]:
    """The first protocol entries of `sfd compare` and `sfd demo`: seed, data, split, reference."""
    real_remain = workspace.real_remain([settings.forget])
    return {
        "seed": settings.seed,
        "data": settings.data,
        "train_images": len(workspace.train),
        "heldout_images": len(workspace.heldout),
        "fid_reference": f"{len(real_remain)} held-out real remain-class images (uint8, as stored)",
        "generated_per_class": settings.eval_per_class,
    }


def evaluate_methods(
    settings: CompareSettings, workspace: Workspace, fitted: dict[str, Fitted], sfd: Any
) -> CompareResults:
    """Evaluate the teacher (DDIM) and every fitted method; gather the report's content."""
    teacher_sampler = ddim_sampler(workspace.teacher(), settings.ddim_steps)
    teacher, teacher_grid = evaluate_with_grid(teacher_sampler, settings, workspace)
    grids = {"teacher": teacher_grid}
    methods: dict[str, MethodReport] = {}
    for key, result in fitted.items():
        sampler = sampler_for(result.unlearned, settings.ddim_steps)
        evaluation, grids[key] = evaluate_with_grid(sampler, settings, workspace)
        extra = {k: v for k, v in result.extra.items() if k != "module"}
        methods[key] = MethodReport(
            key=key,
            title=TITLES[key],
            evaluation=evaluation,
            iterations=result.iterations,
            train_seconds=result.train_seconds,
            curve=result.curve,
            ua95=first_reaching(result.curve),
            cached=result.cached,
            extra=extra,
        )
    protocol = {
        **protocol_head(settings, workspace),
        "noise": SAME_NOISE,
        "feature_extractor": FEATURES,
        "fid_real_train_vs_heldout": real_floor(settings, workspace).fid,
        "samplers": {"one-step": "one network evaluation", "multi-step": teacher_sampler.name},
        "curve": {
            "every": settings.curve_every or "iterations / 20",
            "forget_per_class": settings.curve_per_class,
            "remain_per_class": settings.curve_remain_per_class,
            "seconds": "training wall time since Trainer.fit started, curve evaluations excluded",
        },
        "sfd_settings": {"iterations": sfd.trainer.max_steps, "model": sfd.model.as_dict()},
        "teacher": {
            "folder": str(workspace.teacher_dir),
            "reused_from_cache": workspace.teacher_cached,
            "settings": workspace.teacher_settings,
        },
        "classifier": {
            "folder": str(workspace.classifier_dir),
            "reused_from_cache": workspace.classifier_cached,
            "heldout_accuracy": workspace.classifier_accuracy,
            "settings": workspace.classifier_settings,
        },
        "throughput": THROUGHPUT,
        "libraries": library_versions(),
        "environment": environment(),
    }
    return CompareResults(
        num_classes=workspace.data.num_classes,
        forget=settings.forget,
        override=settings.override,
        teacher=teacher,
        methods=methods,
        protocol=protocol,
        grids=grids,
    )


def export_models(fitted: dict[str, Fitted], output: Path) -> None:
    """Write every trained network: one-step generators as diffusers exports, fine-tuned
    denoisers as teacher folders (`sfd eval` and `sfd fit` load both)."""
    for key, result in fitted.items():
        network = result.unlearned.network
        folder = output / "models" / key
        if result.unlearned.one_step:
            save_generator(network, folder, overwrite=True)
        elif isinstance(network, VPUNetDenoiser):
            folder.mkdir(parents=True, exist_ok=True)
            save_denoiser(network, folder)
