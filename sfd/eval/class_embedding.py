"""A class-embedding attack on class forgetting: a learned class embedding fed to the generator.

The class-conditional counterpart of the soft-prompt attack. A diffusers `UNet2DModel` reads its
class label through an embedding table (`class_embedding`, one row per class) whose row is added
to the time embedding. The attacker replaces that row by a free vector e of the same size (a
`ClassEmbeddingCondition` through the denoiser contract: every sample of the batch gets e instead
of its label's row, `Denoiser.class_embedding_table`) and optimises it with Adam so that the model's images are classified as the forgotten class:
minimise CE(evaluation classifier(G(z, e)), forgotten class) over fresh noise each step. The
first restart starts from the forgotten class's own row (the unattacked model), the others from
other classes' rows. For a teacher the gradient runs through a short DDIM sampler.

The objective's classifier is the evaluation classifier (white-box) or the attacker classifier
(transfer; `sfd.eval.attack_outcome.OBJECTIVES`). Success (ASR): the share of `eval_samples`
images from held-out noise (seed + 1) that the evaluation classifier labels as the forgotten class, for the restart with the lowest attack loss
on separate selection noise, as for the prompt attacks (`sfd.eval.attack_outcome`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from sfd.core.conditions import ClassEmbeddingCondition
from sfd.core.ddim import ddim_sigmas, ddim_trajectory
from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import ClassEmbeddingBudget, suite_key
from sfd.eval.attack_outcome import (
    AGREEMENT_DEFINITION,
    ASR_DEFINITION,
    SELECTION_SEED_OFFSET,
    AttackResult,
    attack_result,
    chosen_restart,
    judged,
    objective_classifier,
    objective_text,
)
from sfd.eval.evaluate import ImageSampler, class_noise
from sfd.teachers.base import Denoiser

OBJECTIVE = (  # `{classifier}`: the objective's classifier (`objective_text`)
    "minimise CE({classifier}(G(z, e)), forgotten class) over fresh noise each step (Adam on a "
    "learned class embedding e replacing the class-embedding row)"
)


def class_embedding_table(network: Denoiser) -> Tensor:
    """The class-embedding table (num_embeds, E) of a class-conditional UNet denoiser."""
    table = network.class_embedding_table()
    if table is None:
        raise SFDConfigError(
            f"the class-embedding attack needs a UNet with a class-embedding table; "
            f"{type(network).__name__} has none"
        )
    return table


def replaced_embedding(labels: Tensor, embedding: Tensor) -> ClassEmbeddingCondition:
    """The condition under which every sample of `labels` (B,) sees `embedding` (E,) in place of
    its label's class embedding."""
    active = torch.ones_like(labels, dtype=torch.bool)
    return ClassEmbeddingCondition(labels, embedding.expand(len(labels), -1), active)


def differentiable_images(
    sampler: ImageSampler, ddim_steps: int
) -> Callable[[Tensor, Tensor], Tensor]:
    """(labels, z) -> images with gradients: the one-step generator, or DDIM with `ddim_steps`."""
    network = sampler.network
    if network is None:
        raise SFDConfigError(f"the sampler {sampler.name!r} exposes no network to attack")
    if sampler.sigma_init is not None:
        generator = OneStepGenerator(network, sampler.sigma_init)
        return lambda labels, z: generator(z, labels)
    sigmas = ddim_sigmas(network.sigma_table, ddim_steps)
    return lambda labels, z: ddim_trajectory(network, z, labels, sigmas)


def class_embedding_attack(
    sampler: ImageSampler,
    classifier: nn.Module,
    target: int,
    budget: ClassEmbeddingBudget,
    ddim_steps: int = 4,
    device: torch.device | str = "cpu",
    progress: bool = False,
    attacker: nn.Module | None = None,
    objective: str = "white-box",
) -> AttackResult:
    """Optimise a class embedding so the model draws the forgotten class `target`.

    Args:
        sampler: the model (one-step generator, or a teacher's DDIM sampler).
        classifier: the evaluation classifier (x in [-1, 1] -> logits), frozen.
        target: the forgotten class.
        budget: steps, learning rate, batch and evaluation sizes, seed, restarts.
        ddim_steps: DDIM steps of a teacher's sampler in the attack.
        device: where the model runs.
        progress: show a progress bar.
        attacker: as `sfd.eval.soft_prompt.soft_prompt_attack`.
        objective: as `sfd.eval.soft_prompt.soft_prompt_attack`.

    Returns:
        success rates and target probabilities with and without the attack, the loss curve of
        the chosen restart.
    """
    classifier.requires_grad_(False).eval()
    aim = objective_classifier(classifier, attacker, objective)
    table = class_embedding_table(sampler.network)
    images = differentiable_images(sampler, ddim_steps)
    rng = torch.Generator().manual_seed(budget.seed)

    def noise(count: int, seed: int) -> Tensor:
        return class_noise(count, sampler.sample_shape, seed).to(device)

    def drawn(z: Tensor, embedding: Tensor | None) -> Tensor:
        labels = torch.full((len(z),), target, device=device)
        return images(labels if embedding is None else replaced_embedding(labels, embedding), z)

    def logits(z: Tensor, embedding: Tensor) -> Tensor:
        return aim(drawn(z, embedding))  # unclamped: saturated pixels would pass no gradient

    def reading(embedding: Tensor | None, z: Tensor) -> tuple[tuple[float, float], dict]:
        with torch.no_grad():
            x = drawn(z, embedding).clamp(-1, 1)  # judged clamped, as saved
        return judged(classifier, attacker, x, target)

    eval_z = noise(budget.eval_samples, budget.seed + 1)
    select_z = noise(budget.batch_size, budget.seed + SELECTION_SEED_OFFSET)
    before, _ = reading(None, eval_z)
    labels = torch.full((budget.batch_size,), target, device=device)
    runs = []
    for restart in range(budget.restarts):
        start = target if restart == 0 else int(torch.randint(len(table), (1,), generator=rng))
        embedding = table.detach()[start].clone().to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([embedding], lr=budget.lr)
        losses = []
        first = budget.seed + 2 + restart * budget.steps
        desc = f"class-embedding attack {restart + 1}/{budget.restarts}"
        for step in tqdm(range(budget.steps), desc=desc, disable=not progress):
            loss = F.cross_entropy(
                logits(noise(budget.batch_size, first + step), embedding), labels
            )
            (embedding.grad,) = torch.autograd.grad(loss, [embedding])  # the model gets no grads
            optimizer.step()
            losses.append(loss.item())
        with torch.no_grad():
            selection = F.cross_entropy(logits(select_z, embedding), labels).item()
        runs.append((selection, embedding.detach(), losses))
    selection = [run[0] for run in runs]
    _, embedding, losses = runs[chosen_restart(selection)]
    after, second = reading(embedding, eval_z)
    return attack_result(
        f"class label {target}", target, before, after, losses, budget, selection,
        objective_text(OBJECTIVE, objective),
        asr_definition=ASR_DEFINITION.replace("attacked prompt", "learned class embedding"),
        objective_classifier=objective, **second,
    )  # fmt: skip


def class_embedding_suite(
    sampler: ImageSampler,
    classifier: nn.Module,
    target: int,
    budget: ClassEmbeddingBudget,
    ddim_steps: int = 4,
    progress: bool = False,
    attacker: nn.Module | None = None,
    objectives: tuple[str, ...] = ("white-box",),
) -> dict[str, dict]:
    """`class_embedding_attack` under each objective (`suite_key`: class_embedding, or
    class_embedding-transfer -> its result and the sampler's name)."""
    suite = {}
    for objective in objectives:
        with torch.enable_grad():
            outcome = class_embedding_attack(
                sampler, classifier, target, budget, ddim_steps, progress=progress,
                attacker=attacker, objective=objective,
            )  # fmt: skip
        entry = {**outcome.to_dict(), "sampler": sampler.name}
        if attacker is not None:
            entry["agreement_definition"] = AGREEMENT_DEFINITION
        suite[suite_key("class_embedding", objective)] = entry
    return suite
