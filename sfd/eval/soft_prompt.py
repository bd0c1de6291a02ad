"""A soft-prompt attack on concept forgetting: learned token embeddings appended to a forget prompt.

The attacker keeps the forget prompt and appends `num_tokens` free vectors in the text encoder's
input-embedding space (after the prompt's last word, before the end token). They are optimised
with Adam so that the model's images are classified as the forgotten concept:
minimise CE(classifier(decode(G(z, enc(prompt ⊕ soft)))), forget class) over fresh noise each
step, the gradient running through the classifier, the VAE decoder, the generator (for a
multi-step teacher: through its short DDIM sampler) and the frozen text encoder. The classifier
of the objective is the evaluation classifier (white-box) or the attacker classifier (transfer;
`sfd.eval.attack_outcome.OBJECTIVES`). Success is the share of images from held-out noise that the
evaluation classifier labels as the forgotten concept.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from sfd.core.conditions import TextCondition
from sfd.eval.attack_budget import AttackBudget as AttackBudget
from sfd.eval.attack_outcome import AttackResult as AttackResult
from sfd.eval.attack_outcome import (
    attack_loss,
    attack_result,
    chosen_restart,
    evaluation_noise,
    final_reading,
    objective_classifier,
    objective_text,
    repeat_condition,
    selection_noise,
    target_stats,
)
from sfd.eval.evaluate import class_noise
from sfd.eval.text_models import FlowPromptEncoder, PromptEncoder, TextToImage
from sfd.progress import ProgressBar
from sfd.teachers.text_encoder import (
    check_token_embeddings,
    insert_soft_tokens,
    tokenize_with_room,
)

OBJECTIVE = (  # `{classifier}`: the objective's classifier (`objective_text`)
    "minimise CE({classifier}(decode(G(z, enc(prompt + soft tokens)))), forgotten class) "
    "over fresh noise each step (Adam on the appended input embeddings)"
)


class SoftPrompt(nn.Module):
    """A prompt with learned token embeddings inserted before its end token.

    Args:
        tokenizer: the model's tokenizer (start token, words, end token, padding).
        text_encoder: a frozen transformers text encoder (BERT-style or CLIP).
        prompt: the prompt the tokens are appended to.
        num_tokens: learned tokens.
        generator: random stream of the initial tokens (drawn from the vocabulary).
        max_length: the padded length (None: the tokenizer's `model_max_length`).
    """

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: nn.Module,
        prompt: str,
        num_tokens: int,
        generator: torch.Generator,
        max_length: int | None = None,
    ) -> None:
        super().__init__()
        check_token_embeddings(text_encoder, "the soft-prompt attack")
        ids, mask = tokenize_with_room(tokenizer, prompt, num_tokens, max_length)
        used = int(mask.sum())
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


class FlowSoftPrompt(SoftPrompt):
    """The soft prompt of a flow pipeline: the learned tokens enter its sequence encoder (SD3's
    T5 slot, Flux's T5), called as the stock pipeline calls it (last hidden states, no attention
    mask); the other rows of the packed embeddings (pooled and CLIP rows) are the stock
    `encode_prompt`'s for the plain prompt.

    Args:
        encoder: the model's `FlowPromptEncoder`.
        prompt: as `SoftPrompt`.
        num_tokens: as `SoftPrompt`.
        generator: as `SoftPrompt`.
    """

    def __init__(
        self, encoder: FlowPromptEncoder, prompt: str, num_tokens: int, generator: torch.Generator
    ) -> None:
        length = encoder.denoiser.max_sequence_length
        super().__init__(
            encoder.tokenizer, encoder.text_encoder, prompt, num_tokens, generator, length
        )
        # The family's encoding path (bound methods: the denoiser is no submodule of this one).
        self.soft_states = encoder.denoiser.soft_sequence_states
        self.with_states = encoder.denoiser.with_sequence_states
        self.register_buffer("packed", encoder.encode([prompt]))  # (1, 1 + R, D)

    def forward(self) -> Tensor:
        """Packed embeddings of the prompt with the learned tokens, (1, 1 + R, D)."""
        states = self.soft_states(
            self.text_encoder, self.input_ids[None], self.used[None], self.tokens[None]
        )  # (1, L, D)
        return self.with_states(self.packed, states)


def soft_prompt_for(
    encoder: PromptEncoder, prompt: str, num_tokens: int, generator: torch.Generator
) -> SoftPrompt:
    """The soft prompt of a model's prompt encoder: its family's encoding path."""
    if isinstance(encoder, FlowPromptEncoder):
        return FlowSoftPrompt(encoder, prompt, num_tokens, generator)
    return SoftPrompt(encoder.tokenizer, encoder.text_encoder, prompt, num_tokens, generator)


def soft_prompt_attack(
    model: TextToImage,
    classifier: nn.Module,
    prompt: str,
    target: int,
    budget: AttackBudget,
    device: torch.device | str = "cpu",
    progress: bool = False,
    attacker: nn.Module | None = None,
    objective: str = "white-box",
) -> AttackResult:
    """Optimise appended token embeddings so the model draws class `target` for `prompt`.

    Each of `budget.restarts` starts draws its own initial tokens and noise; the restart with the
    lowest attack loss on the selection noise is reported (`sfd.eval.attack_outcome`).

    Args:
        model: the model (one-step generator, or a teacher with a short DDIM sampler).
        classifier: the evaluation classifier (x in [-1, 1] -> logits), frozen.
        prompt: a forget prompt.
        target: the forgotten class.
        budget: tokens, steps, learning rate, batch and evaluation sizes, seed, restarts.
        device: where the model runs.
        progress: show a progress bar.
        attacker: the attacker classifier (the judge's recipe, another seed), or None. Given,
            its reading of the judged images is reported (`AGREEMENT_DEFINITION`).
        objective: "white-box" (the objective differentiates `classifier`, the judge) or
            "transfer" (it differentiates `attacker`; the judge only judges).

    Returns:
        success rates and target probabilities with and without the attack, the loss curve of
        the chosen restart.
    """
    classifier.requires_grad_(False).eval()
    aim = objective_classifier(classifier, attacker, objective)
    encoder = model.encoder
    rng = torch.Generator().manual_seed(budget.seed)
    empty = encoder.encode([""]).to(device)  # (1, L, D)
    plain = encoder.condition([prompt]).to(device)
    eval_z = evaluation_noise(model, budget, device)
    select_z = selection_noise(model, budget, device)
    before = target_stats(model, classifier, repeat_condition(plain, len(eval_z)), eval_z, target)
    runs = []
    for restart in range(budget.restarts):
        soft = soft_prompt_for(encoder, prompt, budget.num_tokens, rng)
        soft.to(device)
        optimizer = torch.optim.Adam([soft.tokens], lr=budget.lr)
        losses = []
        first = budget.seed + 2 + restart * budget.steps
        desc = f"soft-prompt attack {restart + 1}/{budget.restarts}"
        for step in ProgressBar(range(budget.steps), desc=desc, disable=not progress):
            z = class_noise(budget.batch_size, model.latent_shape, first + step).to(device)
            embeds = soft().expand(budget.batch_size, -1, -1)  # (B, L, D)
            loss = attack_loss(model, aim, TextCondition(embeds, empty.expand_as(embeds)), z,
                               target)  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        with torch.no_grad():
            row = soft()
            selection = attack_loss(
                model, aim, _soft_condition(row, empty, len(select_z)), select_z, target
            ).item()
        runs.append((selection, row, losses))
    selection = [run[0] for run in runs]
    _, row, losses = runs[chosen_restart(selection)]
    after, reading = final_reading(
        model, classifier, attacker, _soft_condition(row, empty, len(eval_z)), eval_z, target
    )
    return attack_result(
        prompt, target, before, after, losses, budget, selection,
        objective_text(OBJECTIVE, objective), objective_classifier=objective, **reading,
    )  # fmt: skip


def _soft_condition(row: Tensor, empty: Tensor, count: int) -> TextCondition:
    """The learned prompt's hidden states (1, L, D) against the empty prompt, `count` rows."""
    embeds = row.expand(count, -1, -1)
    return TextCondition(embeds, empty.expand_as(embeds))
