"""`sfd demo`: teacher -> classifier -> distillation (stage 1) -> SFD (stage 2) -> evaluation -> report.

Every phase runs the real components: a diffusers DDPM teacher with a null class (trained, or
reused from the cache), the evaluation classifier (cached), `SFDModule` under a Lightning
`Trainer`, torchmetrics FID/KID. SFD takes the two-stage path (docs/method.md §5): stage 1 is
distillation without forgetting, which is also the demo's no-forgetting baseline and is cached by
content hash like the teacher; stage 2 is SFD started from the stage-1 generator and fake score
with the original teacher frozen. The SFD settings are an `sfd fit` configuration (the preset
`sfd_digits.yaml` in `sfd.apps.harness` plus any `--model.*` / `--trainer.*` overrides).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sfd.apps.demo.report import DemoResults, write_report
from sfd.apps.harness.evaluation import (
    FEATURES,
    SAME_NOISE,
    THROUGHPUT,
    class_revival,
    evaluate_with_grid,
    protocol_head,
    real_floor,
)
from sfd.apps.harness.methods import DistillMethod, Fitted, Run, SFDMethod
from sfd.apps.harness.phases import Phases
from sfd.apps.harness.report_folder import revival_summary
from sfd.apps.harness.settings import ClassRunSettings, check_settings, default_sfd_config
from sfd.apps.harness.stages import stage_two_label
from sfd.apps.harness.workspace import (
    Workspace,
    classifier_phase,
    start_run,
    teacher_phase,
    workspace_attacker,
)
from sfd.core.generator import training_record
from sfd.eval.attack_budget import attack_objectives
from sfd.eval.class_embedding import class_embedding_suite
from sfd.eval.evaluate import (
    ModelEvaluation,
    ddim_sampler,
    measure_throughput,
    one_step_sampler,
)
from sfd.pipelines.io import load_generator, save_generator
from sfd.provenance import environment, library_versions
from sfd.training.cli import parse_fit_config

TOOL = "sfd demo"
__all__ = ["ClassRunSettings", "check_settings", "default_sfd_config", "run_demo"]


def run_demo(settings: ClassRunSettings) -> dict[str, Path]:
    """Run the whole demo; returns the report's artefact paths."""
    phases = Phases(TOOL, 6 + (settings.revival is not None))
    workspace, sfd = start_run(settings)  # every check before anything is written
    output = settings.output_dir
    output.mkdir(parents=True, exist_ok=True)
    accelerator = sfd.trainer.accelerator

    teacher_phase(workspace, settings, accelerator, phases)
    classifier_phase(workspace, settings, phases)
    assert workspace.classifier_dir is not None
    shutil.copytree(workspace.classifier_dir, output / "classifier", dirs_exist_ok=True)

    run = Run(settings, workspace, {}, output / "logs", accelerator)
    with phases.phase(
        "stage1", "stage 1: distillation without forgetting (cached like the teacher)"
    ):
        distilled = DistillMethod().fit(run)
        assert run.stage1 is not None
        phases.built("stage 1", run.stage1.folder, run.stage1.cached)
        run.stage1.export_generator(run.teacher_dir, output / "generator_without_forgetting")

    with phases.phase("sfd", stage_two_label(sfd.model.adapters)):
        forgetting = SFDMethod(two_stage=True).fit(run)
        module = forgetting.extra.pop("module")
        record = training_record(module)
        save_generator(module.export_generator, output / "generator", True, training=record)

    with phases.phase("evaluation", "evaluation"):
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
    if settings.revival is not None:
        with phases.phase("revival", "revival test"):
            for key, sampler in model_samplers(settings, workspace, output).items():
                results.revivals[key] = class_revival(sampler, settings, workspace)
                phases.say(revival_summary(key, results.revivals[key]))
    results.protocol["phase_seconds"] = phases.finish()

    with phases.phase(None, "report"):
        return write_report(results, output)


def model_samplers(
    settings: ClassRunSettings, workspace: Workspace, output: Path
) -> dict[str, Any]:
    """The demo's three models as samplers: the teacher under DDIM (`ddim_steps`) and both
    generators reloaded from their exports, by report key."""
    return {
        "teacher": ddim_sampler(workspace.teacher(), settings.ddim_steps),
        "distilled_without_forgetting": one_step_sampler(
            load_generator(output / "generator_without_forgetting")
        ),
        "sfd": one_step_sampler(load_generator(output / "generator")),
    }


def evaluate_all(
    settings: ClassRunSettings,
    sfd: Any,
    workspace: Workspace,
    output: Path,
    distilled: Fitted,
    forgetting: Fitted,
) -> DemoResults:
    """Evaluate the teacher (DDIM) and both generators (reloaded from their exports)."""
    num_classes = workspace.data.num_classes
    teacher = workspace.teacher()
    samplers = model_samplers(settings, workspace, output)
    models: dict[str, ModelEvaluation] = {}
    grids = {}
    for key, sampler in samplers.items():
        models[key], grids[key] = evaluate_with_grid(sampler, settings, workspace)
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
    attacks = {}
    attacker, attacker_entry = None, None
    if settings.attack is not None:
        assert workspace.classifier is not None
        objectives = attack_objectives(settings.attack_objective)
        if "transfer" in objectives:
            attacker, attacker_entry = workspace_attacker(workspace, settings)
            shutil.copytree(attacker_entry["folder"], settings.output_dir / "attacker_classifier",
                            dirs_exist_ok=True)  # fmt: skip
        attack_samplers = {**samplers, "teacher": ddim_sampler(teacher, settings.attack_ddim_steps)}
        for key, sampler in attack_samplers.items():
            attacks[key] = class_embedding_suite(
                sampler, workspace.classifier, settings.forget, settings.attack,
                settings.attack_ddim_steps, settings.progress, attacker, objectives,
            )  # fmt: skip
    floor = real_floor(settings, workspace)
    stage2 = parse_fit_config(settings.sfd_command_line(stage="stage2"), one_line_errors=True)
    stage1 = forgetting.extra
    protocol = {
        **protocol_head(settings, workspace),
        "generated_remain_images": settings.eval_per_class * (num_classes - 1),
        "noise": SAME_NOISE,
        "feature_extractor": FEATURES,
        "kid": models["sfd"].extra,
        "fid_real_train_vs_heldout": floor.fid,
        "kid_real_train_vs_heldout": floor.kid_mean,
        "samplers": {key: sampler.name for key, sampler in samplers.items()},
        "sfd_settings": {  # the demo's SFD is stage 2: the preset with its stage-2 overlay
            "iterations": stage2.trainer.max_steps,
            "model": stage2.model.as_dict(),
        },
        "two_stage": {
            "stage1_iterations": stage1["stage1_iterations"],
            "stage1_training_seconds": stage1["stage1_seconds"],
            "stage1_reused_from_cache": stage1["stage1_cached"],
            "stage1_folder": stage1["stage1_folder"],
            "stage2_iterations": forgetting.iterations,
            "stage2_max_steps": stage2.trainer.max_steps,  # its cap (the completion rule's too)
            "stage2_completion": forgetting.extra.get("completion"),
            "stage2_training_seconds": forgetting.train_seconds,
            "teacher": "the original teacher, frozen, in both stages",
        },
        "baseline": "stage 1: the same SFD settings with lambda_sg_forget = lambda_g_forget = 0",
        "curve": {
            "every": settings.curve_every,
            "forget_per_class": settings.curve_per_class,
            "remain_per_class": settings.curve_remain_per_class,
        },
        "throughput": THROUGHPUT,
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
        "attack_objective": settings.attack_objective if settings.attack is not None else None,
        "attacker_classifier": attacker_entry,
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
        attacks=attacks,
    )
