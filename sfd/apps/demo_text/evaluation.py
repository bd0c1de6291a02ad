"""The text demo's evaluation phases: concept metrics, sample grids and the soft-prompt attack.

The teacher runs as `StableDiffusionTeacher` under guided DDIM, the generators as the exported
`OneStepTextPipeline` folders reloaded from disk, all through `sfd.apps.text_evaluation`, the
code behind `sfd eval-text`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from sfd.apps.demo_text.prompts import DemoPrompts
from sfd.apps.demo_text.report import MODEL_KEYS, TextDemoResults
from sfd.apps.text_data import CaptionVocabulary
from sfd.apps.text_evaluation import (
    ConceptProtocol,
    attack_model,
    evaluate_model,
    exported_model,
    teacher_model,
    text_library_versions,
)
from sfd.eval.classifier import Classifier
from sfd.eval.concepts import generate_for_prompts, nearest_classes
from sfd.eval.metrics import feature_distances
from sfd.images import LabelledImages
from sfd.provenance import environment


def grid_prompts(
    vocabulary: CaptionVocabulary, prompts: DemoPrompts, forget: int, override: int
) -> list[tuple[str, str]]:
    """(row title, prompt) of the sample grids: forget, a paraphrase, override, every other class."""
    rows = [
        ("forget", prompts.forget_train.prompts[0]),
        ("forget, paraphrase", prompts.forget_paraphrases.prompts[0]),
        ("override", vocabulary.captions(override)[0]),
    ]
    for label in range(vocabulary.num_classes):
        if label not in (forget, override):
            rows.append((vocabulary.class_names[label], vocabulary.captions(label)[0]))
    return rows


def evaluate_runs(
    settings: Any,
    sfd: Any,
    teacher_dir: str,
    classifier: Classifier,
    vocabulary: CaptionVocabulary,
    prompts: DemoPrompts,
    heldout: LabelledImages,
    train: LabelledImages,
    forget: int,
    override: int,
    runs: dict[str, tuple[Path, list[dict[str, float]]]],
    seconds: dict[str, float],
    announce: Callable[[str], None],
) -> TextDemoResults:
    """Evaluate the teacher (DDIM) and both exported generators; attack all three."""
    clock = time.perf_counter()
    announce("5/7 evaluation")
    guidance = float(sfd.model.teacher_guidance)
    remain_mask = heldout.labels != forget
    real_remain = heldout.images[remain_mask]
    neighbours = settings.neighbours or nearest_classes(
        classifier, heldout.images, heldout.labels, forget, 2
    )
    protocol = ConceptProtocol(
        forget_train=prompts.forget_train,
        remain=prompts.remain,
        forget=forget,
        override=override,
        neighbours=list(neighbours),
        num_classes=vocabulary.num_classes,
        forget_paraphrases=prompts.forget_paraphrases,
        forget_images=settings.forget_images,
        remain_per_class=settings.remain_per_class,
        seed=settings.seed,
    )
    models = {
        "teacher": teacher_model(teacher_dir, settings.ddim_steps, guidance),
        "distilled_without_forgetting": exported_model(
            runs["distilled_without_forgetting"][0], name="one-step, no forgetting"
        ),
        "sfd": exported_model(runs["sfd"][0], name="one-step SFD"),
    }
    rows = grid_prompts(vocabulary, prompts, forget, override)
    grid_list = [p for _, p in rows for _ in range(settings.grid_per_prompt)]
    evaluations, grids = {}, {}
    for key in MODEL_KEYS:
        evaluations[key] = evaluate_model(
            models[key], classifier, protocol, real_remain, settings.progress
        )
        grids[key] = generate_for_prompts(models[key], grid_list, settings.seed + 3)
    seconds["evaluation"] = time.perf_counter() - clock

    clock = time.perf_counter()
    announce("6/7 soft-prompt attack")
    attack_models = {
        "teacher": teacher_model(teacher_dir, settings.attack_ddim_steps, guidance),
        "distilled_without_forgetting": models["distilled_without_forgetting"],
        "sfd": models["sfd"],
    }
    attacks = {
        key: attack_model(
            model, classifier, protocol, settings.attack, settings.attack_prompts, settings.progress
        )
        for key, model in attack_models.items()
    }
    for key, result in attacks.items():
        announce(
            f"attack on {key}: success {100 * result['success_rate']:.1f} % "
            f"(without attack {100 * result['success_rate_without_attack']:.1f} %)"
        )
    seconds["attack"] = time.perf_counter() - clock
    train_remain = train.images[train.labels != forget]
    with torch.no_grad():
        floor = feature_distances(train_remain, real_remain, classifier, seed=settings.seed)
    protocol_entry = {
        **protocol.describe(),
        "data": settings.data,
        "class_names": list(vocabulary.class_names),
        "concepts": prompts.concepts,
        "train_images": len(train),
        "heldout_images": len(heldout),
        "fid_reference": f"{len(real_remain)} held-out real remain-class images (uint8)",
        "fid_real_train_vs_heldout": floor.fid,
        "feature_extractor": "evaluation classifier penultimate layer (torchmetrics feature=)",
        "guidance": {
            "teacher_eval": guidance,
            "generators_eval": 1.0,
            "sfd_training": {
                k: getattr(sfd.model, k)
                for k in ("teacher_guidance", "fake_train_guidance", "fake_eval_guidance")
            },
        },
        "samplers": {key: model.name for key, model in models.items()},
        "attack_samplers": {key: model.name for key, model in attack_models.items()},
        "neighbours": list(neighbours),
        "neighbours_from": "--neighbours"
        if settings.neighbours
        else "2 nearest classes (class-mean classifier features of held-out real images)",
        "sfd_settings": {"iterations": sfd.trainer.max_steps, "model": sfd.model.as_dict()},
        "baseline": "stage 1: distillation on every class's captions, lambda_sg_forget = "
        "lambda_g_forget = 0; SFD (stage 2) starts from its generator and fake score",
        "curve": {"every": settings.curve_every, "per_class": settings.curve_per_class},
        "libraries": text_library_versions(),
        "environment": environment(),
    }
    return TextDemoResults(
        num_classes=vocabulary.num_classes,
        forget=forget,
        override=override,
        class_names=list(vocabulary.class_names),
        models=evaluations,
        attacks=attacks,
        forgetting_curve=runs["sfd"][1],
        baseline_curve=runs["distilled_without_forgetting"][1],
        iterations=sfd.trainer.max_steps,
        protocol=protocol_entry,
        grids=grids,
        grid_rows=rows,
    )
