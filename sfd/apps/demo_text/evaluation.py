"""The text demo's evaluation phases: concept metrics, sample grids, the attack suite and the
revival test.

The teacher runs as `StableDiffusionTeacher` under guided DDIM (or, a flow-matching teacher, as
`SD3Teacher` under its guided flow Euler sampler), the generators as the exported
`OneStepTextPipeline` (`OneStepSD3Pipeline`) folders reloaded from disk, all through
`sfd.apps.harness.text_folders` and `sfd.apps.harness.text_evaluation`, the code behind `sfd eval-text`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sfd.apps.data.captions import CaptionVocabulary
from sfd.apps.demo_text.prompts import DemoPrompts
from sfd.apps.demo_text.report import MODEL_KEYS, TextDemoResults
from sfd.apps.demo_text.settings import TEACHER_ATTACKS
from sfd.apps.harness.report_folder import revival_summary
from sfd.apps.harness.text_evaluation import (
    ConceptProtocol,
    attack_suite,
    evaluate_model,
    revival_test,
    text_library_versions,
)
from sfd.apps.harness.text_folders import exported_model, teacher_model
from sfd.eval.attack_budget import attack_objectives
from sfd.eval.classifier import Classifier
from sfd.eval.concepts import generate_for_prompts, nearest_classes
from sfd.eval.metrics import feature_distances
from sfd.images import LabelledImages
from sfd.provenance import environment
from sfd.teachers.base import GUIDANCE_SCALES


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


@dataclass
class TextEvaluation:
    """The text demo's last two phases on one run's models: `evaluate`, then `attack`.

    Attributes:
        settings: the demo's settings (`TextDemoSettings`).
        sfd: the parsed SFD configuration.
        teacher_dir: the text teacher's folder.
        classifier: the evaluation classifier.
        vocabulary: the class names and captions.
        prompts: the prompt sets of the run.
        train, heldout: the data split.
        forget, override: the concept pair's classes.
        runs: model key -> (exported generator folder, its forgetting curve).
    """

    settings: Any
    sfd: Any
    teacher_dir: str
    classifier: Classifier
    vocabulary: CaptionVocabulary
    prompts: DemoPrompts
    train: LabelledImages
    heldout: LabelledImages
    forget: int
    override: int
    runs: dict[str, tuple[Path, list[dict[str, float]]]]
    attacker: Classifier | None = None  # the transfer attacks' classifier (another seed)
    models: dict[str, Any] = field(default_factory=dict)
    evaluations: dict[str, Any] = field(default_factory=dict)
    grids: dict[str, Any] = field(default_factory=dict)
    attack_models: dict[str, Any] = field(default_factory=dict)
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> name -> result
    attack_seconds: dict[str, float] = field(default_factory=dict)  # model -> wall seconds
    revivals: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        settings, heldout = self.settings, self.heldout
        self.guidance = float(self.sfd.model.teacher_guidance)
        self.real_remain = heldout.images[heldout.labels != self.forget]
        self.neighbours = list(
            settings.neighbours
            or nearest_classes(self.classifier, heldout.images, heldout.labels, self.forget, 2)
        )
        self.protocol = ConceptProtocol(
            forget_train=self.prompts.forget_train,
            remain=self.prompts.remain,
            forget=self.forget,
            override=self.override,
            neighbours=self.neighbours,
            num_classes=self.vocabulary.num_classes,
            forget_paraphrases=self.prompts.forget_paraphrases,
            forget_images=settings.forget_images,
            remain_per_class=settings.remain_per_class,
            seed=settings.seed,
        )
        self.rows = grid_prompts(self.vocabulary, self.prompts, self.forget, self.override)

    def evaluate(self) -> None:
        """Concept metrics and sample grids of the teacher (multi-step) and both exported generators."""
        settings = self.settings
        self.models = {
            "teacher": teacher_model(
                self.teacher_dir, settings.teacher_sampler_steps(), self.guidance
            ),
            "distilled_without_forgetting": exported_model(
                self.runs["distilled_without_forgetting"][0], name="one-step, no forgetting"
            ),
            "sfd": exported_model(self.runs["sfd"][0], name="one-step SFD"),
        }
        grid_list = [p for _, p in self.rows for _ in range(settings.grid_per_prompt)]
        for key in MODEL_KEYS:
            model = self.models[key]
            self.evaluations[key] = evaluate_model(
                model, self.classifier, self.protocol, self.real_remain, settings.progress
            )
            self.grids[key] = generate_for_prompts(model, grid_list, settings.seed + 3)

    def attack(self, say: Callable[[str], None]) -> None:
        """The attack suite on all three models (the teacher with fewer sampler steps, only the
        `TEACHER_ATTACKS` and at most `teacher_attack_restarts` restarts; every model's paraphrase
        entry), timed per model."""
        settings = self.settings
        self.attack_models = {
            "teacher": teacher_model(self.teacher_dir, settings.attack_ddim_steps, self.guidance),
            "distilled_without_forgetting": self.models["distilled_without_forgetting"],
            "sfd": self.models["sfd"],
        }
        for key, model in self.attack_models.items():
            budgets = settings.attacks
            if key == "teacher":
                restarts = settings.teacher_attack_restarts
                budgets = {
                    name: replace(budget, restarts=min(budget.restarts, restarts))
                    for name, budget in budgets.items()
                    if name in TEACHER_ATTACKS
                }
            started = time.perf_counter()
            self.attacks[key] = attack_suite(
                model, self.classifier, self.protocol, budgets, self.evaluations[key],
                settings.attack_prompts, settings.progress, self.attacker,
                attack_objectives(settings.attack_objective),
            )  # fmt: skip
            self.attack_seconds[key] = round(time.perf_counter() - started, 1)
            for name, result in self.attacks[key].items():
                say(f"{name} attack on {key}: success {100 * result['success_rate']:.1f} %")

    def revival(self, say: Callable[[str], None]) -> None:
        """The revival test on all three models (the teacher under its evaluation sampler)."""
        for key in MODEL_KEYS:
            result = revival_test(
                self.models[key], self.classifier, self.protocol, self.heldout,
                self.settings.revival, self.settings.progress,
            ).to_dict()  # fmt: skip
            self.revivals[key] = result
            say(revival_summary(key, result))

    def results(self) -> TextDemoResults:
        """The report's content, with the protocol of the evaluation."""
        settings, sfd, train = self.settings, self.sfd, self.train
        train_remain = train.images[train.labels != self.forget]
        with torch.no_grad():
            floor = feature_distances(
                train_remain, self.real_remain, self.classifier, seed=settings.seed
            )
        protocol_entry = {
            **self.protocol.describe(),
            "data": settings.data,
            "class_names": list(self.vocabulary.class_names),
            "concepts": self.prompts.concepts,
            "train_images": len(train),
            "heldout_images": len(self.heldout),
            "fid_reference": f"{len(self.real_remain)} held-out real remain-class images (uint8)",
            "fid_real_train_vs_heldout": floor.fid,
            "feature_extractor": "evaluation classifier penultimate layer (torchmetrics feature=)",
            "guidance": {
                "teacher_eval": self.guidance,
                "generators_eval": 1.0,
                "sfd_training": {k: getattr(sfd.model, k) for k in GUIDANCE_SCALES},
            },
            "samplers": {key: model.name for key, model in self.models.items()},
            "attack_samplers": {key: model.name for key, model in self.attack_models.items()},
            "attack_seconds": self.attack_seconds,
            "attack_objective": settings.attack_objective,
            "neighbours": self.neighbours,
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
            num_classes=self.vocabulary.num_classes,
            forget=self.forget,
            override=self.override,
            class_names=list(self.vocabulary.class_names),
            models=self.evaluations,
            attacks=self.attacks,
            revivals=self.revivals,
            forgetting_curve=self.runs["sfd"][1],
            baseline_curve=self.runs["distilled_without_forgetting"][1],
            iterations=sfd.trainer.max_steps,
            protocol=protocol_entry,
            grids=self.grids,
            grid_rows=self.rows,
        )
