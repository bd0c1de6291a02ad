"""A soft-prompt attack on concept forgetting: learned token embeddings appended to a forget prompt.

The attacker keeps the forget prompt and appends `num_tokens` free vectors in the text encoder's
input-embedding space (after the prompt's last word, before the end token). They are optimised
with Adam so that the model's images are classified as the forgotten concept:
minimise CE(classifier(decode(G(z, enc(prompt ⊕ soft)))), forget class) over fresh noise each
step, the gradient running through the classifier, the VAE decoder, the generator (for a
multi-step teacher: through its short DDIM sampler) and the frozen text encoder. Success is the
share of images from held-out noise that the classifier labels as the forgotten concept.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sfd.core.conditions import TextCondition
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import AttackBudget as AttackBudget
from sfd.eval.evaluate import class_noise
from sfd.eval.text_models import TextToImage
from sfd.progress import ProgressBar
from sfd.teachers.text_encoder import check_inputs_embeds, insert_soft_tokens, tokenize


@dataclass
class AttackResult:
    """Outcome of the attack on one model and prompt."""

    prompt: str
    target: int
    success_rate: float
    success_rate_without_attack: float
    target_probability: float
    target_probability_without_attack: float
    losses: list[float]
    budget: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class SoftPrompt(nn.Module):
    """A prompt with learned token embeddings inserted before its end token.

    Args:
        tokenizer: the model's tokenizer (BERT-style: [CLS] words [SEP] padding).
        text_encoder: a frozen transformers encoder that accepts `inputs_embeds`.
        prompt: the prompt the tokens are appended to.
        num_tokens: learned tokens.
        generator: random stream of the initial tokens (drawn from the vocabulary).
    """

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: nn.Module,
        prompt: str,
        num_tokens: int,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        check_inputs_embeds(text_encoder, "the soft-prompt attack")
        tokens = tokenize(tokenizer, [prompt])
        ids, mask = tokens.input_ids[0], tokens.attention_mask[0]  # (L,)
        length, used = len(ids), int(mask.sum())
        if used + num_tokens > length:
            raise SFDConfigError(
                f"prompt {prompt!r} has {used} tokens; {num_tokens} more exceed the tokenizer's "
                f"model_max_length={length}"
            )
        table = text_encoder.get_input_embeddings().weight.detach()  # (V, D_in)
        self.text_encoder = text_encoder
        self.register_buffer("input_ids", ids.clone())  # (L,)
        self.register_buffer("used", torch.tensor(used))
        picks = torch.randint(len(table), (num_tokens,), generator=generator)
        self.tokens = nn.Parameter(table[picks].clone())  # (n, D_in)

    def forward(self) -> Tensor:
        """Hidden states of the prompt with the learned tokens, (1, L, D)."""
        return insert_soft_tokens(
            self.text_encoder, self.input_ids[None], self.used[None], self.tokens[None]
        )


def _target_stats(
    model: TextToImage, classifier: nn.Module, cond: TextCondition, z: Tensor, target: int
) -> tuple[float, float]:
    """(share classified as target, mean target probability) over the images of z."""
    with torch.no_grad():
        logits = classifier(model.images(z, cond).clamp(-1, 1))
    return (
        (logits.argmax(1) == target).float().mean().item(),
        logits.softmax(1)[:, target].mean().item(),
    )


def soft_prompt_attack(
    model: TextToImage,
    classifier: nn.Module,
    prompt: str,
    target: int,
    budget: AttackBudget,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> AttackResult:
    """Optimise appended token embeddings so the model draws class `target` for `prompt`.

    Args:
        model: the model (one-step generator, or a teacher with a short DDIM sampler).
        classifier: the evaluation classifier (x in [-1, 1] -> logits), frozen.
        prompt: a forget prompt.
        target: the forgotten class.
        budget: tokens, steps, learning rate, batch and evaluation sizes, seed.
        device: where the model runs.
        progress: show a progress bar.

    Returns:
        success rates and target probabilities with and without the attack, the loss curve.
    """
    classifier.requires_grad_(False).eval()
    encoder = model.encoder
    rng = torch.Generator().manual_seed(budget.seed)
    soft = SoftPrompt(encoder.tokenizer, encoder.text_encoder, prompt, budget.num_tokens, rng)
    soft.to(device)
    empty = encoder.encode([""]).to(device)  # (1, L, D)
    plain = encoder.condition([prompt]).to(device)
    eval_z = class_noise(budget.eval_samples, model.latent_shape, budget.seed + 1).to(device)
    before = _target_stats(model, classifier, _repeat(plain, budget.eval_samples), eval_z, target)
    optimizer = torch.optim.Adam([soft.tokens], lr=budget.lr)
    labels = torch.full((budget.batch_size,), target, device=device)
    losses = []
    for step in ProgressBar(range(budget.steps), desc="soft-prompt attack", disable=not progress):
        z = class_noise(budget.batch_size, model.latent_shape, budget.seed + 2 + step).to(device)
        embeds = soft().expand(budget.batch_size, -1, -1)  # (B, L, D)
        cond = TextCondition(embeds, empty.expand_as(embeds))
        # Unclamped: saturated pixels would pass no gradient; success is judged on clamped images.
        loss = F.cross_entropy(classifier(model.images(z, cond)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    with torch.no_grad():
        embeds = soft().expand(budget.eval_samples, -1, -1)
    after = _target_stats(
        model, classifier, TextCondition(embeds, empty.expand_as(embeds)), eval_z, target
    )
    return AttackResult(
        prompt=prompt,
        target=target,
        success_rate=after[0],
        success_rate_without_attack=before[0],
        target_probability=after[1],
        target_probability_without_attack=before[1],
        losses=losses,
        budget=asdict(budget),
    )


def _repeat(cond: TextCondition, count: int) -> TextCondition:
    """A one-row condition repeated `count` times."""
    return TextCondition(
        cond.prompt_embeds.expand(count, -1, -1), cond.negative_embeds.expand(count, -1, -1)
    )
