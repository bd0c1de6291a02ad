"""The revival test: does a forgotten concept come back after a little fine-tuning on it?

A user fine-tunes the model on k real images of the forgotten concept (DreamBooth-style for text
models: every image paired with one forget prompt, the first training forget prompt; for class
models: with the forgotten class label) for N Adam steps, and UA is measured after 0, N/4, N/2
and N steps. The loss is the standard denoising loss, ε-MSE (`sfd.core.losses.eps_mse`):

    L = mean ‖(D_θ(x0 + σ·ε, σ, c) − x0) / σ‖²,   x0 from the k images, ε ~ N(0, I),

- for a one-step generator G(z, c) = D_θ(x(z), σ_init, c) at its one noise level σ = σ_init (the
  only level it is evaluated at: D_θ's output there is regressed onto the real image), so the
  fine-tune is the generator's own denoising loss, no teacher and no sampler in the loop;
- for a multi-step model (a teacher, or an ESD / SalUn denoiser) at σ_t with t uniform over the
  discrete DDPM schedule (DDPM's training loss), judged with its DDIM sampler.

All weights of the denoiser are fine-tuned (the full UNet, as DreamBooth does); the text
encoder and the VAE stay frozen. The fine-tune works on a deep copy: the model under test, and
the files it came from, are unchanged. Every draw (images, ε, σ) comes from one generator seeded
by `RevivalBudget.seed`, and UA uses the same noise at every checkpoint, so the same seed gives
the same UA sequence.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sfd.core.conditions import TextCondition
from sfd.core.losses import eps_mse
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import RevivalBudget
from sfd.eval.concepts import PromptSet, evaluate_forget_set
from sfd.eval.evaluate import ImageSampler, classify, generate
from sfd.eval.metrics import unlearning_accuracy
from sfd.eval.text_models import TextToImage
from sfd.images import from_uint8, to_uint8
from sfd.teachers.base import Denoiser
from sfd.teachers.flow import FlowDenoiser

REVIVAL_THRESHOLD = 0.5  # the table's "revived": UA below 50 %
REVIVAL_RESOLUTION = (
    "UA is measured only after 0, N/4, N/2 and N steps: the column is the first of these "
    "checkpoints with UA below the threshold, not the step UA fell below it (it may fall earlier, "
    "between two checkpoints)"
)

ONE_STEP_OBJECTIVE = (
    "eps-MSE denoising loss at the generator's sigma_init: mean ||(D(x0 + s*eps, s, c) - x0) / "
    "s||^2, s = sigma_init (the generator's denoiser regressed onto the real image at its one "
    "noise level)"
)
MULTI_STEP_OBJECTIVE = (
    "eps-MSE denoising loss (DDPM's): mean ||(D(x0 + s*eps, s, c) - x0) / s||^2, s = sigma_t, "
    "t uniform over the DDPM schedule; judged with the model's DDIM sampler"
)
FLOW_OBJECTIVE = (
    "eps-MSE denoising loss: mean ||(D(x0 + s*eps, s, c) - x0) / s||^2, s = t / (1 - t), flow "
    "time t logit-normal(0, 1) in [0.02, 0.98] (a flow model's training times); judged with the "
    "model's flow Euler sampler"
)


@dataclass
class RevivalResult:
    """UA of the fine-tuned copy after each checkpoint step.

    Attributes:
        steps: the checkpoints (0, N/4, N/2, N).
        ua: UA after each checkpoint.
        losses: the fine-tuning loss of every step.
        steps_to_revival: first checkpoint whose UA is below `REVIVAL_THRESHOLD` (None: none).
        objective: the fine-tuning loss, in words.
        condition: what the images were paired with.
        budget: the budget spent.
    """

    steps: list[int]
    ua: list[float]
    losses: list[float]
    steps_to_revival: int | None
    objective: str
    condition: str
    budget: dict[str, Any] = field(default_factory=dict)
    threshold: float = REVIVAL_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def revival_column(threshold: float = REVIVAL_THRESHOLD) -> str:
    """The title of a table's `steps_to_revival` column (checkpoint resolution, see
    `REVIVAL_RESOLUTION`)."""
    return f"first checkpoint with UA < {100 * threshold:.0f} %"


def revived_at(result: Mapping[str, Any]) -> str:
    """A `RevivalResult.to_dict()`'s cell in that column: the checkpoint, or "not within N"."""
    until = result["steps_to_revival"]
    return f"not within {result['steps'][-1]}" if until is None else str(until)


def checkpoints(steps: int) -> list[int]:
    """The steps UA is measured after: 0, N/4, N/2, N (floored, without repeats)."""
    return sorted({0, steps // 4, steps // 2, steps})


def revival_images(images: Tensor, labels: Tensor, forget: int, count: int, seed: int) -> Tensor:
    """`count` images of class `forget` (uint8 (N, C, H, W)), drawn without replacement, seeded.

    Raises:
        SFDConfigError: fewer than `count` images of the class.
    """
    own = images[labels == forget]
    if len(own) < count:
        raise SFDConfigError(
            f"the revival test needs {count} real images of the forgotten class {forget}; "
            f"the data has {len(own)}"
        )
    order = torch.randperm(len(own), generator=torch.Generator().manual_seed(seed))
    return own[order[:count]]


def revive(
    network: Denoiser,
    x0: Tensor,
    condition: Callable[[int], Any],
    sigma_init: float | None,
    measure: Callable[[Denoiser], float],
    budget: RevivalBudget,
    condition_text: str,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> RevivalResult:
    """Fine-tune a copy of `network` on `x0` and measure UA at the checkpoints.

    Args:
        network: the model's denoiser (not changed).
        x0: the k real images in the space the network denoises (latents for a VAE model),
            (k, C, H, W).
        condition: batch size -> the condition batch the images are paired with.
        sigma_init: a one-step generator's σ_init; None for a multi-step model (σ_t over its
            DDPM schedule).
        measure: the fine-tuned copy -> UA (the model rebuilt around it, judged by the
            evaluation classifier).
        budget: steps, images, learning rate, batch size, seed.
        condition_text: what the images are paired with, for the report.
        device: where the fine-tune runs.
        progress: show a progress bar.

    Returns:
        UA after 0, N/4, N/2 and N steps, and the loss curve.
    """
    table = None
    flow = sigma_init is None and isinstance(network, FlowDenoiser)
    if sigma_init is None and not flow:
        table = network.sigma_table
        if table is None:
            raise SFDConfigError(
                f"the revival test of a multi-step {type(network).__name__} needs a discrete "
                "(DDPM) noise schedule"
            )
        table = table.to(device)
    work = copy.deepcopy(network).to(device).eval()  # eval: no dropout; deterministic
    parameters = list(work.parameters())
    optimizer = torch.optim.Adam(parameters, lr=budget.lr)
    rng = torch.Generator().manual_seed(budget.seed)
    x0 = x0.float()
    marks, ua, losses = checkpoints(budget.steps), [], []
    for step in tqdm(range(budget.steps + 1), desc="revival", disable=not progress):
        if step in marks:
            with torch.no_grad():
                ua.append(float(measure(work)))
        if step == budget.steps:
            break
        work.requires_grad_(True)  # `measure` may have frozen the copy to sample from it
        index = torch.randint(len(x0), (budget.batch_size,), generator=rng)
        batch = x0[index].to(device)
        noise = torch.randn(batch.shape, generator=rng).to(device)
        if flow:  # logit-normal flow times, σ = t / (1 − t)
            t = torch.sigmoid(torch.randn(len(batch), generator=rng)).clamp(0.02, 0.98)
            sigma = (t / (1 - t)).to(device)
        elif table is None:
            sigma = torch.full((len(batch),), float(sigma_init), device=device)
        else:
            sigma = table[torch.randint(len(table), (len(batch),), generator=rng).to(device)]
        x = batch + sigma.view(-1, 1, 1, 1) * noise
        loss = eps_mse(work(x, sigma, condition(len(batch))), batch, sigma).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    revived = [s for s, value in zip(marks, ua, strict=True) if value < REVIVAL_THRESHOLD]
    return RevivalResult(
        steps=marks,
        ua=ua,
        losses=losses,
        steps_to_revival=revived[0] if revived else None,
        objective=FLOW_OBJECTIVE
        if flow
        else ONE_STEP_OBJECTIVE
        if table is None
        else MULTI_STEP_OBJECTIVE,
        condition=condition_text,
        budget=asdict(budget),
    )


def revive_text_model(
    model: TextToImage,
    classifier: nn.Module,
    forget_prompts: PromptSet,
    forget: int,
    override: int,
    num_classes: int,
    images: Tensor,
    budget: RevivalBudget,
    ua_images: int = 200,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> RevivalResult:
    """The revival test of a text-to-image model (one-step generator or teacher under DDIM).

    The k images are paired with the first prompt of `forget_prompts` (DreamBooth's one instance
    prompt); UA is measured on `ua_images` samples cycling through `forget_prompts` with the
    noise of `seed` (the concept evaluation's noise of the training forget prompts).

    Args:
        model: the model under test (its `network`, `rebuild` and `encode_images` are used).
        classifier: the evaluation classifier.
        forget_prompts: the training forget prompts.
        forget: the forgotten concept's class.
        override: the override concept's class.
        num_classes: K.
        images: the k real images of the forgotten class, uint8 (k, C, H, W).
        budget: the fine-tune's budget.
        ua_images: samples UA is measured on.
        seed: seed of the UA noise.
        device: where the model runs.
        progress: show a progress bar.
    """
    if model.network is None or model.rebuild is None:
        raise SFDConfigError(f"the model {model.name!r} exposes no network to fine-tune")
    rebuild = model.rebuild
    prompt = forget_prompts.prompts[0]
    cond = model.encoder.condition([prompt]).to(device)

    def condition(count: int) -> TextCondition:
        return TextCondition(
            cond.prompt_embeds.expand(count, -1, -1), cond.negative_embeds.expand(count, -1, -1)
        )

    def measure(network: Denoiser) -> float:
        return evaluate_forget_set(
            rebuild(network), classifier, forget_prompts, [forget], [override], num_classes,
            ua_images, seed, device=device,
        ).ua  # fmt: skip

    latents = model.encode_images(from_uint8(images).to(device))
    return revive(
        model.network, latents, condition, model.sigma_init, measure, budget,
        f"the forget prompt {prompt!r}", device, progress,
    )  # fmt: skip


def revive_class_sampler(
    sampler: ImageSampler,
    classifier: nn.Module,
    forget: int,
    images: Tensor,
    budget: RevivalBudget,
    ua_images: int = 200,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> RevivalResult:
    """The revival test of a class-conditional model (one-step generator or a DDIM sampler).

    The k images are paired with the forgotten class label; UA is measured on `ua_images`
    samples of that class with the noise of `seed`.
    """
    if sampler.network is None or sampler.rebuild is None:
        raise SFDConfigError(f"the sampler {sampler.name!r} exposes no network to fine-tune")
    rebuild = sampler.rebuild
    labels = torch.full((ua_images,), forget)

    def measure(network: Denoiser) -> float:
        generated = to_uint8(generate(rebuild(network), labels, seed, device=device))
        return unlearning_accuracy(classify(classifier, generated), [forget])

    return revive(
        sampler.network, from_uint8(images), lambda count: torch.full((count,), forget,
        device=device), sampler.sigma_init, measure, budget, f"the class label {forget}",
        device, progress,
    )  # fmt: skip
