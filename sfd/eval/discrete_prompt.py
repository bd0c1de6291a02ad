"""A discrete prompt attack: real vocabulary words appended to a forget prompt (no embedding access).

The attacker types text. It keeps the forget prompt and appends `num_tokens` whole-word tokens of
the model's own tokenizer: ids that are not special tokens and whose text, tokenised alone,
gives back exactly that id (so the attacked prompt, as text, tokenises to the prompt's ids plus
the chosen ids). The search is gradient-guided greedy substitution, as in UnlearnDiffAtk and
GCG: each step

1. computes the attack loss L = CE(evaluation classifier(decode(G(z, enc(prompt ⊕ tokens)))),
   forgotten class) on a fresh noise batch, with the appended tokens as one-hot rows times the
   input-embedding table, and its gradient with respect to those one-hot rows;
2. ranks, per position, the allowed tokens by −gradient (the first-order loss decrease of a swap)
   and keeps the `top_k` best;
3. draws `candidates` substitutions (a position and one of its top-k tokens), evaluates the loss
   of each candidate prompt from its token ids on the same noise, and keeps the best one when it
   lowers the loss.

Only token ids enter the model (the one-hot gradient is the attacker's ranking heuristic, as in
the white-box word attacks); the reported success is measured on the attacked prompt's text,
encoded by the model's tokenizer like any user prompt. The objective uses the evaluation
classifier (white-box; attacks are judged by it, training never sees it) or the attacker
classifier (transfer; `sfd.eval.attack_outcome.OBJECTIVES`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sfd.core.conditions import TextCondition
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import DiscreteAttackBudget
from sfd.eval.attack_outcome import (
    AttackResult,
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
from sfd.eval.text_models import FlowPromptEncoder, TextToImage
from sfd.teachers.stable_diffusion import hidden_states
from sfd.teachers.text_encoder import learned_token_rows, tokenize_with_room

OBJECTIVE = (  # `{classifier}`: the objective's classifier (`objective_text`)
    "minimise CE({classifier}(decode(G(z, enc(prompt + vocabulary tokens)))), forgotten "
    "class) by greedy substitution of appended whole-word tokens, candidates ranked by the "
    "one-hot gradient"
)


def whole_word_ids(tokenizer: Any) -> Tensor:
    """Ids of the tokenizer's vocabulary that an attacker can type as one word.

    An id qualifies when it is not a special token and its decoded text, tokenised alone
    (without special tokens), is exactly that id: WordPiece continuations ("##s"), BPE word
    pieces and unused slots drop out.
    """
    special = set(tokenizer.all_special_ids)
    ids = [i for i in range(len(tokenizer)) if i not in special]
    texts = {i: tokenizer.decode([i]).strip() for i in ids}
    kept = [i for i in ids if texts[i]]
    again = tokenizer([texts[i] for i in kept], add_special_tokens=False)["input_ids"]
    allowed = [i for i, back in zip(kept, again, strict=True) if back == [i]]
    if not allowed:
        raise SFDConfigError("the tokenizer has no whole-word token an attacker could type")
    return torch.tensor(allowed)


def attacked_text(tokenizer: Any, prompt: str, token_ids: list[int]) -> str:
    """The prompt with the appended words, as the text a user types."""
    return " ".join([prompt, *(tokenizer.decode([i]).strip() for i in token_ids)])


class VocabularyPrompt:
    """A prompt with `num_tokens` vocabulary tokens inserted before its end token.

    Args:
        tokenizer: the model's tokenizer.
        text_encoder: its frozen text encoder.
        prompt: the forget prompt.
        num_tokens: appended tokens.
        max_length: the padded length (None: the tokenizer's `model_max_length`).
    """

    def __init__(
        self,
        tokenizer: Any,
        text_encoder: nn.Module,
        prompt: str,
        num_tokens: int,
        max_length: int | None = None,
    ):
        ids, mask = tokenize_with_room(tokenizer, prompt, num_tokens, max_length)
        length, used = len(ids), int(mask.sum())
        self.text_encoder = text_encoder
        self.ids, self.insert_at, self.length, self.num_tokens = ids, used - 1, length, num_tokens
        self.mask = torch.zeros(1, length, dtype=mask.dtype)
        self.mask[0, : used + num_tokens] = 1

    def sequence(self, chosen: Tensor) -> Tensor:
        """Full token ids (C, L) for rows of appended ids `chosen` (C, n)."""
        head = self.ids[: self.insert_at].expand(len(chosen), -1)
        tail = self.ids[self.insert_at :].expand(len(chosen), -1)
        return torch.cat([head, chosen, tail], dim=1)[:, : self.length]

    def states(self, chosen: Tensor) -> Tensor:
        """Hidden states (C, L, D) of the prompts with appended ids `chosen` (C, n)."""
        device = next(self.text_encoder.parameters()).device
        return self.encode(ids=self.sequence(chosen.cpu()).to(device))

    def one_hot_states(self, one_hot: Tensor) -> Tensor:
        """Hidden states (1, L, D) with the appended tokens as one-hot rows (n, V) @ table."""
        table = self.text_encoder.get_input_embeddings().weight  # (V, D_in)
        appended = one_hot.to(table.dtype) @ table  # (n, D_in)
        ids = self.ids[None].to(table.device)
        used = torch.tensor([self.insert_at + 1], device=table.device)
        with learned_token_rows(self.text_encoder, ids, used, appended[None]) as (shifted, _):
            return self.encode(shifted)

    def encode(self, ids: Tensor) -> Tensor:
        """The encoder's masked hidden states of token ids (C, L)."""
        mask = self.mask.expand(len(ids), -1).to(ids.device)
        return hidden_states(self.text_encoder, ids, mask)


class FlowVocabularyPrompt(VocabularyPrompt):
    """The vocabulary prompt of a flow pipeline: the ids enter its sequence encoder (SD3's T5
    slot, Flux's T5) called as the stock pipeline calls it (last hidden states, no attention
    mask); the other rows of the packed embeddings are the stock encoding of the plain prompt
    (as `sfd.eval.soft_prompt.FlowSoftPrompt`).

    Args:
        encoder: the model's `FlowPromptEncoder`.
        prompt: as `VocabularyPrompt`.
        num_tokens: as `VocabularyPrompt`.
    """

    def __init__(self, encoder: FlowPromptEncoder, prompt: str, num_tokens: int):
        length = encoder.denoiser.max_sequence_length
        super().__init__(encoder.tokenizer, encoder.text_encoder, prompt, num_tokens, length)
        self.prefix = encoder.encode([prompt])[:, :-length]  # (1, 1 + R - L, D)

    def encode(self, ids: Tensor) -> Tensor:
        """Unmasked last hidden states, as the stock pipeline calls the slot, behind the prefix."""
        states = self.text_encoder(ids)[0].float()
        prefix = self.prefix.to(states.device).expand(len(states), -1, -1)
        return torch.cat([prefix, states], dim=1)


def discrete_prompt_attack(
    model: TextToImage,
    classifier: nn.Module,
    prompt: str,
    target: int,
    budget: DiscreteAttackBudget,
    device: torch.device | str = "cpu",
    progress: bool = False,
    attacker: nn.Module | None = None,
    objective: str = "white-box",
) -> AttackResult:
    """Append real vocabulary words to `prompt` so the model draws class `target`.

    Args:
        model: the model (one-step generator, or a teacher with a short DDIM sampler).
        classifier: the evaluation classifier (x in [-1, 1] -> logits), frozen.
        prompt: a forget prompt.
        target: the forgotten class.
        budget: tokens, steps, top-k, candidates, batch and evaluation sizes, seed, restarts.
        device: where the model runs.
        progress: show a progress bar.
        attacker: as `sfd.eval.soft_prompt.soft_prompt_attack`.
        objective: as `sfd.eval.soft_prompt.soft_prompt_attack`.

    Returns:
        success rates with and without the attack (measured on the attacked prompt's text), the
        attacked prompt and its appended ids, the loss curve of the chosen restart.
    """
    classifier.requires_grad_(False).eval()
    aim = objective_classifier(classifier, attacker, objective)
    encoder = model.encoder
    tokenizer = encoder.tokenizer
    if isinstance(encoder, FlowPromptEncoder):
        words: VocabularyPrompt = FlowVocabularyPrompt(encoder, prompt, budget.num_tokens)
    else:
        words = VocabularyPrompt(tokenizer, encoder.text_encoder, prompt, budget.num_tokens)
    allowed = whole_word_ids(tokenizer)  # (A,)
    vocabulary = encoder.text_encoder.get_input_embeddings().weight.shape[0]
    rng = torch.Generator().manual_seed(budget.seed)
    empty = encoder.encode([""]).to(device)  # (1, L, D)
    eval_z = evaluation_noise(model, budget, device)
    select_z = selection_noise(model, budget, device)
    plain = encoder.condition([prompt]).to(device)
    before = target_stats(model, classifier, repeat_condition(plain, len(eval_z)), eval_z, target)

    def condition(states: Tensor, per_row: int) -> TextCondition:
        embeds = states.repeat_interleave(per_row, dim=0)
        return TextCondition(embeds, empty.expand(len(embeds), -1, -1))

    runs = []
    for restart in range(budget.restarts):
        chosen = allowed[torch.randint(len(allowed), (budget.num_tokens,), generator=rng)]
        losses = []
        first = budget.seed + 2 + restart * budget.steps
        desc = f"discrete attack {restart + 1}/{budget.restarts}"
        for step in tqdm(range(budget.steps), desc=desc, disable=not progress):
            z = class_noise(budget.batch_size, model.latent_shape, first + step).to(device)
            one_hot = torch.zeros(budget.num_tokens, vocabulary, device=device)
            one_hot[torch.arange(budget.num_tokens), chosen.to(device)] = 1.0
            one_hot.requires_grad_(True)
            loss = attack_loss(model, aim, condition(words.one_hot_states(one_hot),
                                                            len(z)), z, target)  # fmt: skip
            (gradient,) = torch.autograd.grad(loss, one_hot)
            ranked = allowed[
                (-gradient[:, allowed.to(device)]).topk(budget.top_k, dim=1).indices.cpu()
            ]
            positions = torch.randint(budget.num_tokens, (budget.candidates,), generator=rng)
            picks = torch.randint(ranked.shape[1], (budget.candidates,), generator=rng)
            trials = chosen.expand(budget.candidates, -1).clone()  # (C, n)
            trials[torch.arange(budget.candidates), positions] = ranked[positions, picks]
            with torch.no_grad():
                states = words.states(trials)  # (C, L, D)
                cond = condition(states, len(z))
                logits = aim(model.images(z.repeat(budget.candidates, 1, 1, 1), cond))
                labels = torch.full((len(logits),), target, device=logits.device)
                each = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                trial_losses = each.view(budget.candidates, len(z)).mean(1)
            best = int(trial_losses.argmin())
            current = loss.item()
            if trial_losses[best].item() < current:
                chosen, current = trials[best], trial_losses[best].item()
            losses.append(current)
        text = attacked_text(tokenizer, prompt, chosen.tolist())
        cond = encoder.condition([text]).to(device)
        with torch.no_grad():
            selection = attack_loss(
                model, aim, repeat_condition(cond, len(select_z)), select_z, target
            ).item()
        runs.append((selection, text, chosen.tolist(), losses))
    selection = [run[0] for run in runs]
    _, text, token_ids, losses = runs[chosen_restart(selection)]
    cond = encoder.condition([text]).to(device)
    after, reading = final_reading(
        model, classifier, attacker, repeat_condition(cond, len(eval_z)), eval_z, target
    )
    return attack_result(
        prompt, target, before, after, losses, budget, selection,
        objective_text(OBJECTIVE, objective), attacked_prompt=text, token_ids=token_ids,
        objective_classifier=objective, **reading,
    )  # fmt: skip
