"""`sfd compare`: several forgetting methods on one teacher, one classifier, one protocol, one report.

Phases: the teacher (cached), the evaluation classifier (cached), every chosen method in turn
(SFD one- and two-stage, distillation without forgetting, ESD, SalUn, Retrain), the evaluation of
the teacher and every method with the same noise, classifier and FID reference, the report.
Multi-step models (teacher, ESD, SalUn, Retrain) are sampled with the teacher's DDIM; one-step
generators directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sfd.apps.compare.report import CompareResults, MethodReport, write_compare_report
from sfd.apps.compare.settings import CompareSettings, parse_baselines
from sfd.apps.harness.curve import first_reaching, sampler_for
from sfd.apps.harness.evaluation import (
    FEATURES,
    SAME_NOISE,
    THROUGHPUT,
    evaluate_with_grid,
    protocol_head,
    real_floor,
)
from sfd.apps.harness.methods import METHODS, RAW_SUFFIX, TITLES, Fitted, Run
from sfd.apps.harness.phases import Phases
from sfd.apps.harness.stages import save_denoiser
from sfd.apps.harness.workspace import Workspace, classifier_phase, start_run, teacher_phase
from sfd.eval.evaluate import ddim_sampler
from sfd.pipelines.io import save_generator
from sfd.provenance import environment, library_versions
from sfd.teachers.unet import VPUNetDenoiser
from sfd.training.cli import parse_fit_config

TOOL = "sfd compare"


def run_compare(settings: CompareSettings) -> dict[str, Path]:
    """Run the chosen methods, evaluate them all the same way, write the report.

    Returns:
        the report's artefact paths.
    """
    phases = Phases(TOOL, 4 + len(settings.methods))
    workspace, sfd = start_run(settings)  # every check before anything is written
    baselines = parse_baselines(settings.baselines_config, settings.baseline_args)
    output = settings.output_dir
    output.mkdir(parents=True, exist_ok=True)
    accelerator = sfd.trainer.accelerator

    teacher_phase(workspace, settings, accelerator, phases)
    classifier_phase(workspace, settings, phases)

    run = Run(settings, workspace, baselines, output / "logs", accelerator)
    fitted: dict[str, Fitted] = {}
    for key in settings.methods:
        with phases.phase(key, TITLES[key]):
            fitted[key] = METHODS[key].fit(run)

    with phases.phase("evaluation", "evaluation"):
        results = evaluate_methods(settings, workspace, fitted, sfd)
    export_models(fitted, output)
    results.protocol["phase_seconds"] = phases.finish()

    with phases.phase(None, "report"):
        return write_compare_report(results, output)


def evaluate_methods(
    settings: CompareSettings, workspace: Workspace, fitted: dict[str, Fitted], sfd: Any
) -> CompareResults:
    """Evaluate the teacher (DDIM) and every fitted method; gather the report's content."""
    teacher_sampler = ddim_sampler(workspace.teacher(), settings.ddim_steps)
    teacher, teacher_grid = evaluate_with_grid(teacher_sampler, settings, workspace)
    grids = {"teacher": teacher_grid}
    methods: dict[str, MethodReport] = {}
    for key, result in fitted.items():
        extra = {k: v for k, v in result.extra.items() if k != "module"}
        # SFD ships its EMA; its raw generator is evaluated beside it, as its own row
        shown = [(key, TITLES[key], result.unlearned, result.curve)]
        if result.raw is not None:
            title = f"{TITLES[key]}, raw generator (not shipped)"
            shown.append((key + RAW_SUFFIX, title, result.raw, result.raw_curve))
        for row, title, network, curve in shown:
            sampler = sampler_for(network, settings.ddim_steps)
            evaluation, grids[row] = evaluate_with_grid(sampler, settings, workspace)
            methods[row] = MethodReport(
                key=row,
                title=title,
                evaluation=evaluation,
                iterations=result.iterations,
                train_seconds=result.train_seconds,
                curve=curve,
                ua95=first_reaching(curve),
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
        "sfd_settings": {  # SFD from the teacher; two-stage SFD's stage 2 adds its overlay
            "iterations": sfd.trainer.max_steps,
            "model": sfd.model.as_dict(),
            "stage2_model": parse_fit_config(
                settings.sfd_command_line(stage="stage2"), one_line_errors=True
            ).model.as_dict(),
        },
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
