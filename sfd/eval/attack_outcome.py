"""What every prompt attack reports, and the measurements they share: the share of images the
evaluation classifier labels as the forgotten class, and the choice among restarts.

The attack success rate (ASR) of a prompt attack is defined once, here: the share of
`eval_samples` images, from held-out noise (seed + 1, never used while attacking), that the
evaluation classifier labels as the forgotten class, for the attacked prompt of the restart whose
attack loss is lowest on a separate selection noise batch.

Which classifier the attack's objective (and its restart choice) differentiates is the attack's
`objective` (`OBJECTIVES`): the evaluation classifier itself (`white-box`: the attacker holds the
judge, so part of its success can be images the judge misreads, adversarial examples of the
classifier) or the attacker classifier (`transfer`: the judge's architecture and training recipe
on the same training split, another seed and data order; the judge is never differentiated). Given
the attacker classifier, every attack also reports its reading of the judged images
(`AGREEMENT_DEFINITION`): for a white-box attack, how much of the success an independent
classifier confirms.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfd.core.conditions import TextCondition
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import OBJECTIVE_CHOICES
from sfd.eval.evaluate import class_noise
from sfd.eval.text_models import TextToImage

ASR_DEFINITION = (
    "share of eval_samples images from held-out noise (seed + 1, unused by the attack) that the "
    "evaluation classifier labels as the forgotten class, for the attacked prompt of the restart "
    "with the lowest attack loss on a separate selection noise batch"
)
SELECTION_SEED_OFFSET = 99_991  # the selection noise: seed + this (disjoint from the others)
OBJECTIVES = OBJECTIVE_CHOICES["both"]  # which classifier the attack objective differentiates
OBJECTIVE_CLASSIFIERS = {  # objective -> the classifier its text names
    "white-box": "evaluation classifier",
    "transfer": "attacker classifier",
}
TRANSFER_NOTE = (
    "; the attack's objective and its restart choice used the attacker classifier (the evaluation "
    "classifier's architecture and training recipe on the same training split, another seed and "
    "data order), never the evaluation classifier"
)
AGREEMENT_DEFINITION = (
    "share of the held-out images the evaluation classifier labels as the forgotten class (the "
    "attack's successes) that the attacker classifier (same architecture and recipe, another "
    "seed) also labels as the forgotten class; for a white-box attack that classifier is "
    "independent of the objective, and agreement × ASR is the share of images both classifiers "
    "label as the forgotten class"
)


@dataclass
class AttackResult:
    """Outcome of an attack on one model and prompt (`ASR_DEFINITION`)."""

    prompt: str
    target: int
    success_rate: float
    success_rate_without_attack: float
    target_probability: float
    target_probability_without_attack: float
    losses: list[float]
    budget: dict[str, Any] = field(default_factory=dict)
    restart_losses: list[float] = field(default_factory=list)
    chosen_restart: int = 0
    objective: str = ""
    asr_definition: str = ASR_DEFINITION
    attacked_prompt: str | None = None  # the text a user types (discrete attack only)
    token_ids: list[int] | None = None  # the appended vocabulary ids (discrete attack only)
    objective_classifier: str = "white-box"  # `OBJECTIVES`: which classifier the objective used
    # With an attacker classifier (`AGREEMENT_DEFINITION`): its reading of the judged images.
    second_classifier_success_rate: float | None = None
    agreement: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def objective_classifier(judge: nn.Module, attacker: nn.Module | None, objective: str) -> nn.Module:
    """The classifier the attack objective differentiates (`OBJECTIVES`), frozen: the judge
    (white-box) or the attacker classifier (transfer), which must be another network."""
    if objective not in OBJECTIVES:
        raise SFDConfigError(f"attack objective {objective!r}; choose from {list(OBJECTIVES)}")
    if attacker is not None:
        attacker.requires_grad_(False).eval()
        if attacker is judge:
            raise SFDConfigError("the attacker classifier is the evaluation classifier itself")
    if objective == "white-box":
        return judge
    if attacker is None:
        raise SFDConfigError("the transfer attack needs an attacker classifier")
    return attacker


def objective_text(template: str, objective: str) -> str:
    """An attack's objective text (`{classifier}` names the objective's classifier), with
    who judges, and for a transfer attack what the attacker's classifier is."""
    text = template.format(classifier=OBJECTIVE_CLASSIFIERS[objective])
    text += "; the evaluation classifier judges the result"
    return text + (TRANSFER_NOTE if objective == "transfer" else "")


def judged(
    judge: nn.Module, attacker: nn.Module | None, x: Tensor, target: int
) -> tuple[tuple[float, float], dict[str, float | None]]:
    """The judge's (share labelled `target`, mean target probability) over images x (clamped),
    and, with an attacker classifier, its reading (`AGREEMENT_DEFINITION`) as `AttackResult`
    fields."""
    with torch.no_grad():
        logits = judge(x)
        hits = logits.argmax(1) == target
        stats = (hits.float().mean().item(), logits.softmax(1)[:, target].mean().item())
        if attacker is None:
            return stats, {}
        also = attacker(x).argmax(1) == target
    successes = int(hits.sum())
    return stats, {
        "second_classifier_success_rate": also.float().mean().item(),
        "agreement": int((also & hits).sum()) / successes if successes else None,
    }


def target_stats(
    model: TextToImage, classifier: nn.Module, cond: TextCondition, z: Tensor, target: int
) -> tuple[float, float]:
    """(share classified as target, mean target probability) over the images of z."""
    return final_reading(model, classifier, None, cond, z, target)[0]


def final_reading(
    model: TextToImage,
    judge: nn.Module,
    attacker: nn.Module | None,
    cond: TextCondition,
    z: Tensor,
    target: int,
) -> tuple[tuple[float, float], dict[str, float | None]]:
    """`judged` on the model's images of z under `cond`."""
    with torch.no_grad():
        x = model.images(z, cond).clamp(-1, 1)
    return judged(judge, attacker, x, target)


def attack_loss(
    model: TextToImage, classifier: nn.Module, cond: TextCondition, z: Tensor, target: int
) -> Tensor:
    """The attack objective: mean CE(classifier(images), target) over z (unclamped images:
    saturated pixels would pass no gradient; success is judged on clamped images)."""
    labels = torch.full((len(z),), target, device=z.device)
    return F.cross_entropy(classifier(model.images(z, cond)), labels)


def repeat_condition(cond: TextCondition, count: int) -> TextCondition:
    """A one-row condition repeated `count` times."""
    return TextCondition(
        cond.prompt_embeds.expand(count, -1, -1), cond.negative_embeds.expand(count, -1, -1)
    )


def evaluation_noise(model: TextToImage, budget: Any, device: torch.device | str) -> Tensor:
    """The held-out noise the success rate is measured on (seed + 1)."""
    return class_noise(budget.eval_samples, model.latent_shape, budget.seed + 1).to(device)


def selection_noise(model: TextToImage, budget: Any, device: torch.device | str) -> Tensor:
    """The noise the restarts are compared on (disjoint from the evaluation noise)."""
    seed = budget.seed + SELECTION_SEED_OFFSET
    return class_noise(budget.batch_size, model.latent_shape, seed).to(device)


def chosen_restart(selection_losses: list[float]) -> int:
    """The restart reported: the lowest attack loss on the selection noise (first on ties)."""
    return min(range(len(selection_losses)), key=selection_losses.__getitem__)


def attack_result(
    prompt: str,
    target: int,
    before: tuple[float, float],
    after: tuple[float, float],
    losses: list[float],
    budget: Any,
    selection_losses: list[float],
    objective: str,
    **extra: Any,
) -> AttackResult:
    """An `AttackResult` from (success, target probability) without and with the attack, the
    chosen restart's loss curve and every restart's selection loss (`extra`: further fields,
    e.g. `objective_classifier`, the attacker classifier's reading from `judged`)."""
    if extra.get("objective_classifier") == "transfer":
        base = extra.pop("asr_definition", ASR_DEFINITION)
        extra["asr_definition"] = base + TRANSFER_NOTE
    return AttackResult(
        prompt=prompt,
        target=target,
        success_rate=after[0],
        success_rate_without_attack=before[0],
        target_probability=after[1],
        target_probability_without_attack=before[1],
        losses=losses,
        budget=asdict(budget),
        restart_losses=selection_losses,
        chosen_restart=chosen_restart(selection_losses),
        objective=objective,
        **extra,
    )
