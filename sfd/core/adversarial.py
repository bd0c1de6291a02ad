"""Adversarial SFD (docs/method.md §9): the unlearning term also on the worst forget conditions.

Each iteration, before the fake-score step, an inner attack looks for what an attacker would feed
the generator to bring the forgotten concept back: learned soft-prompt tokens inserted into forget
prompts (text teachers), or a learned vector in place of the forget label's class embedding
(class teachers). Its objective is data-free: the implicit-classifier margin of the frozen
teacher (`implicit_classifier_margin`), i.e. make the generator's sample under the attacked
condition denoise better under the forget condition than under the override. The attacked
conditions then enter both SFD steps beside the plain ones: the fake score learns the
generator's samples under them, and the generator gets the unlearning loss on them with the
teacher at the override.

The learned vectors persist across iterations (warm start) and are drawn afresh every
`refresh_every` iterations; they are checkpointed (`ADVERSARIAL_KEY`), so a resume is bit-exact.
Every draw comes from the module's (seed, iteration, phase) streams, for the global batch, and
each row's attack is independent of the others, so one process computes what N processes do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sfd.core.conditions import (
    ClassConditions,
    ClassEmbeddingCondition,
    ConditionSampler,
    PromptConditions,
    TextCondition,
)
from sfd.core.losses import LossTerms, implicit_classifier_margin
from sfd.errors import SFDConfigError, check_number
from sfd.teachers.base import Denoiser
from sfd.teachers.text_encoder import (
    check_token_embeddings,
    hidden_states,
    insert_soft_tokens,
    load_text_encoder,
    tokenize,
)

if TYPE_CHECKING:
    from sfd.core.generator import OneStepGenerator
    from sfd.core.module import SFDModule

ADVERSARIAL_KEY = "sfd_adversarial"  # checkpoint entry: the learned vectors and their rows
# `SFDModule._stream` phases of adversarial SFD: fresh draws, the inner attack, the two steps.
DRAW_PHASE, ATTACK_PHASE, FAKE_PHASE, GENERATOR_PHASE = 3, 4, 5, 6


@dataclass
class AdversarialSettings:
    """The settings of adversarial SFD (`SFDModule(adversarial=...)`, `model.adversarial`).

    Attributes:
        steps: inner attack steps (Adam) per iteration, warm-started from the last iteration's
            vectors; 0 keeps the freshly drawn ones.
        tokens: learned soft-prompt tokens inserted into each forget prompt (text teachers).
        share: adversarial samples per device, as a share of `batch_size` (in [0, 1]; rounded
            up, so any positive share attacks at least one row).
        refresh_every: iterations between fresh draws of the attacked rows (their prompts or
            classes and starting vectors).
        lr: the inner Adam's learning rate.
        noise_levels: (σ, ε) draws per sample in the attack objective.
        weight: weight of the adversarial terms relative to the plain forget terms (λ_sg_f,
            λ_g_f).
    """

    steps: int = 2
    tokens: int = 16
    share: float = 0.25
    refresh_every: int = 100
    lr: float = 0.05
    noise_levels: int = 2
    weight: float = 1.0

    def __post_init__(self) -> None:
        check_adversarial_settings(asdict(self))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(
        cls, value: AdversarialSettings | Mapping[str, Any] | None
    ) -> AdversarialSettings | None:
        """Settings from settings, their `as_dict()` (a checkpoint's hyperparameters) or None."""
        return cls(**value) if isinstance(value, Mapping) else value


def adversarial_rows(share: float, batch_size: int) -> int:
    """Adversarial samples per device: ⌈share·batch_size⌉ (a positive share attacks a row)."""
    return math.ceil(round(share * batch_size, 6))  # 0.1·30 is 3, not 3.0000000000000004


def check_adversarial_settings(settings: Mapping[str, Any], prefix: str = "adversarial") -> None:
    """Raise `SFDConfigError` naming the first bad adversarial setting (`prefix.name=value`)."""
    for name, low in (("steps", 0), ("tokens", 1), ("refresh_every", 1), ("noise_levels", 1)):
        value = settings.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SFDConfigError(f"{prefix}.{name}={value!r} must be an integer of at least {low}")
    check_number(f"{prefix}.share", settings.get("share"), low=0, high=1)
    check_number(f"{prefix}.lr", settings.get("lr"), low=0, low_open=True)
    check_number(f"{prefix}.weight", settings.get("weight"), low=0)


@dataclass
class Attacked:
    """This rank's attacked rows of one iteration (no gradient to the learned vectors).

    Attributes:
        condition: what the generator and the fake score see (forget condition ⊕ attack), (K,).
        override: what the teacher sees for them, (K,).
        rows: K, the adversarial samples per device.
    """

    condition: Any
    override: Any
    rows: int


class AttackSpace:
    """Where the attacker searches: draws rows and turns learned vectors into conditions."""

    learned = "learned"  # the state entry the attack optimises

    def draw(self, n: int, rng: torch.Generator, generator: OneStepGenerator) -> dict[str, Tensor]:
        """Fresh rows: which forget condition each attacks, and its starting vectors."""
        raise NotImplementedError

    def conditions(self, state: Mapping[str, Tensor], learned: Tensor) -> tuple[Any, Any, Any]:
        """(attacked condition, plain forget condition, override condition) of the rows."""
        raise NotImplementedError


class SoftPromptSpace(AttackSpace):
    """`tokens` learned vectors in the text encoder's input space, inserted into forget prompts.

    The same insertion as the evaluation's soft-prompt attack (`sfd.eval.soft_prompt`): after
    the prompt's last word, before its end token; the vectors start at random vocabulary tokens.
    Like that attack, it takes only forget prompts with room for `tokens` more tokens.
    The frozen text encoder is loaded from the teacher's pipeline and kept outside the module's
    weights (never optimised or checkpointed).
    """

    learned = "tokens"

    def __init__(self, teacher: Denoiser, conditions: PromptConditions, tokens: int) -> None:
        pipeline = getattr(teacher, "pipeline", None)
        if pipeline is None:
            raise SFDConfigError(
                f"the soft-prompt attack of model.adversarial needs the teacher's text encoder; "
                f"{type(teacher).__name__} names no pipeline folder to load it from"
            )
        tokenizer, self.text_encoder = load_text_encoder(
            pipeline, getattr(teacher, "revision", None)
        )
        encoded = tokenize(tokenizer, conditions.forget_prompts)
        self.input_ids = encoded.input_ids  # (F, L)
        self.used = encoded.attention_mask.sum(1)  # (F,)
        check_same_embeddings(self.text_encoder, encoded, conditions, type(teacher).__name__)
        check_token_embeddings(self.text_encoder, "the soft-prompt attack of model.adversarial")
        length = self.input_ids.shape[1]
        # Only prompts that leave room for the tokens are attacked, as in the evaluation attack.
        self.attackable = (self.used + tokens <= length).nonzero().flatten()  # (F',)
        if len(self.attackable) == 0:
            shortest = int(self.used.argmin())
            raise SFDConfigError(
                f"model.adversarial.tokens={tokens}: even the shortest forget prompt "
                f"{conditions.forget_prompts[shortest]!r} has {int(self.used[shortest])} tokens, "
                f"and {tokens} more exceed the tokenizer's model_max_length={length}"
            )
        self.sampler = conditions
        self.tokens = tokens

    def _on(self, device: torch.device) -> None:
        if self.input_ids.device != device:
            self.text_encoder.to(device)
            self.input_ids, self.used = self.input_ids.to(device), self.used.to(device)
            self.attackable = self.attackable.to(device)

    def draw(self, n: int, rng: torch.Generator, generator: OneStepGenerator) -> dict[str, Tensor]:
        self._on(rng.device)
        vocabulary = self.text_encoder.get_input_embeddings().weight.detach()  # (V, D_in)
        pick = torch.randint(len(self.attackable), (n,), generator=rng, device=rng.device)
        prompt = self.attackable[pick]
        picks = torch.randint(len(vocabulary), (n, self.tokens), generator=rng, device=rng.device)
        return {"prompt": prompt, "tokens": vocabulary[picks].float()}  # (n,), (n, tokens, D_in)

    def conditions(self, state: Mapping[str, Tensor], learned: Tensor) -> tuple[Any, Any, Any]:
        self._on(learned.device)
        prompt = state["prompt"]
        forget, override = self.sampler.forget_pairs(prompt)
        hidden = insert_soft_tokens(
            self.text_encoder, self.input_ids[prompt], self.used[prompt], learned
        )  # (K, L, D)
        captions = tuple(f"{p} <{self.tokens} learned tokens>" for p in forget.prompts or ())
        attacked = TextCondition(
            hidden, forget.negative_embeds, captions or None, forget.empty_embeds
        )
        return attacked, forget, override


def check_same_embeddings(
    text_encoder: torch.nn.Module, encoded: Any, conditions: PromptConditions, teacher: str
) -> None:
    """Refuse teachers whose prompt embeddings are not this encoder's hidden states.

    The soft-prompt attack re-encodes forget prompts with the one text encoder of the pipeline;
    that must give the embeddings the teacher was bound with (Stable Diffusion 1.x / 2.x-style
    teachers do; multi-encoder flow teachers pack several encoders and pooled vectors).
    """
    bound = conditions.embeddings("cpu")["forget"][:2]  # (2, L, D)
    with torch.no_grad():
        again = hidden_states(text_encoder, encoded.input_ids[:2], encoded.attention_mask[:2])
    if again.shape != bound.shape or not torch.allclose(again, bound, atol=1e-4, rtol=1e-4):
        raise SFDConfigError(
            f"the soft-prompt attack of model.adversarial re-encodes forget prompts with the "
            f"pipeline's text encoder, which does not give {teacher}'s prompt embeddings "
            f"({tuple(again.shape[1:])} vs {tuple(bound.shape[1:])}); it supports teachers "
            "conditioned on one text encoder's hidden states (Stable Diffusion 1.x / 2.x style)"
        )


class ClassEmbeddingSpace(AttackSpace):
    """A learned vector in place of the forget label's class embedding, starting at it."""

    learned = "embedding"

    def __init__(self, generator: OneStepGenerator, conditions: ClassConditions) -> None:
        if generator.denoiser.class_embedding_table() is None:
            raise SFDConfigError(
                f"the class-embedding attack of model.adversarial needs a generator whose labels "
                f"pass through a class-embedding table; {type(generator.denoiser).__name__} has none"
            )
        self.sampler = conditions

    def draw(self, n: int, rng: torch.Generator, generator: OneStepGenerator) -> dict[str, Tensor]:
        batch = self.sampler.sample(n, rng)  # the global rows
        table = generator.denoiser.class_embedding_table().detach()  # (num_embeds, E)
        return {
            "forget": batch.forget,
            "override": batch.override,
            "embedding": table[batch.forget].float().clone(),
        }

    def conditions(self, state: Mapping[str, Tensor], learned: Tensor) -> tuple[Any, Any, Any]:
        forget = state["forget"]
        active = torch.ones_like(forget, dtype=torch.bool)
        return ClassEmbeddingCondition(forget, learned, active), forget, state["override"]


def attack_space(
    settings: AdversarialSettings,
    teacher: Denoiser,
    generator: OneStepGenerator,
    conditions: ConditionSampler,
) -> AttackSpace:
    """The attack that fits the conditions: soft prompts for prompts, embeddings for classes."""
    if isinstance(conditions, PromptConditions):
        return SoftPromptSpace(teacher, conditions, settings.tokens)
    if isinstance(conditions, ClassConditions):
        return ClassEmbeddingSpace(generator, conditions)
    raise SFDConfigError(
        f"model.adversarial supports PromptConditions and ClassConditions, not "
        f"{type(conditions).__name__}"
    )


def concatenated(conditions: list[Any]) -> Any:
    """Condition batches (label tensors or `TextCondition`s) one after the other."""
    if isinstance(conditions[0], Tensor):
        return torch.cat(conditions)
    return type(conditions[0]).cat(conditions)


class AdversarialTraining:
    """The inner attack of adversarial SFD, its persistent state and its two loss terms.

    Args:
        settings: the adversarial settings.
        teacher: the frozen teacher (its text encoder's pipeline, for soft prompts).
        generator: the generator under training (its class-embedding table, for classes).
        conditions: the module's condition sampler (its forget and override conditions).
        batch_size: the module's per-device batch size.
    """

    def __init__(
        self,
        settings: AdversarialSettings,
        teacher: Denoiser,
        generator: OneStepGenerator,
        conditions: ConditionSampler,
        batch_size: int,
    ) -> None:
        self.settings = settings
        self.rows = adversarial_rows(settings.share, batch_size)  # per device
        self.space = attack_space(settings, teacher, generator, conditions)
        self.state: dict[str, Tensor] | None = None  # the global rows (every rank's)
        self.last_objective: Tensor | None = None

    # --- the inner attack ---------------------------------------------------------------------

    def objective(
        self,
        module: SFDModule,
        state: Mapping[str, Tensor],
        learned: Tensor,
        rng: torch.Generator,
    ) -> Tensor:
        """Per-row attack objective: the teacher's implicit-classifier margin of G(z, attacked).

        Args:
            module: the SFD module (generator, teacher, σ sampler, rank-sliced draws).
            state: this rank's rows.
            learned: their learned vectors (differentiable), (K, ...).
            rng: the stream of z, σ and ε (draws for every rank's rows; this rank's are used).

        Returns:
            margin of each row averaged over `noise_levels` draws, (K,).
        """
        rows, levels = len(learned), self.settings.noise_levels
        attacked, forget, override = self.space.conditions(state, learned)
        x_g = module.generator(module._randn(rng, rows), attacked)  # (K, C, H, W)
        sigmas, noisy = [], []
        for _ in range(levels):
            sigma = module._sigma(rng, rows)  # (K,)
            sigmas.append(sigma)
            noisy.append(x_g + sigma.view(-1, 1, 1, 1) * module._randn(rng, rows))
        # One teacher call for every draw under both conditions: (2·levels·K) rows.
        sigma, x = torch.cat(sigmas), torch.cat(noisy)
        teacher_cond = concatenated([override] * levels + [forget] * levels)
        x0_override, x0_forget = module.teacher(
            torch.cat([x, x]), torch.cat([sigma, sigma]), teacher_cond
        ).chunk(2)
        margin = implicit_classifier_margin(
            x0_override, x0_forget, x_g.repeat(levels, 1, 1, 1), sigma
        )
        return margin.view(levels, rows).mean(0)

    def attack(self, module: SFDModule) -> Attacked | None:
        """Run this iteration's inner attack; None when there is nothing to attack.

        Draws fresh rows at the first iteration and every `refresh_every` iterations, then takes
        `steps` Adam ascent steps on this rank's rows (the generator as it is now, in eval mode),
        and shares the result with every rank so that each holds (and checkpoints) all rows.
        """
        hp = module.hparams
        if self.rows == 0 or (hp.lambda_sg_forget == 0 and hp.lambda_g_forget == 0):
            return None
        world, rank = module._world_size, module.global_rank
        if self.state is None or module.global_step % self.settings.refresh_every == 0:
            self.state = self.space.draw(
                self.rows * world, module._stream(DRAW_PHASE), module.generator
            )
        self.state = {key: value.to(module.device) for key, value in self.state.items()}
        part = slice(rank * self.rows, (rank + 1) * self.rows)
        mine = {key: value[part] for key, value in self.state.items()}
        learned = mine[self.space.learned].clone().requires_grad_(True)
        self.last_objective = None
        optimizer = torch.optim.Adam([learned], lr=self.settings.lr, maximize=True)
        rng = module._stream(ATTACK_PHASE)
        for _ in range(self.settings.steps):
            # Rows are independent: the sum gives each row its own gradient, whatever K is.
            objective = self.objective(module, mine, learned, rng)
            (learned.grad,) = torch.autograd.grad(objective.sum(), [learned])
            optimizer.step()
            self.last_objective = objective.detach().mean()
        learned = learned.detach()
        # Recorded on the device like the loss terms (no host sync): a non-finite attack stops
        # the run at the next read-back, before any checkpoint holds it.
        module._watch.loss_terms(
            "adversarial", {"learned vectors": learned.sum()}, module.global_step
        )
        gathered = module.all_gather(learned).flatten(0, 1) if world > 1 else learned
        self.state[self.space.learned] = gathered
        mine[self.space.learned] = learned
        with torch.no_grad():
            condition, _, override = self.space.conditions(mine, learned)
        if self.last_objective is not None:
            module.log("adversarial/objective", self.last_objective, batch_size=self.rows)
        return Attacked(condition, override, self.rows)

    # --- the two loss terms ---------------------------------------------------------------

    def fake_terms(self, module: SFDModule, attacked: Attacked, terms: LossTerms) -> LossTerms:
        """The fake score's DSM on the generator's samples under the attacked conditions, added
        to the forget term with weight `weight` (its own stream: the plain draws are unchanged)."""
        weight = module.hparams.lambda_sg_forget
        if weight == 0:
            return terms
        dsm = module._fake_dsm(attacked.condition, module._stream(FAKE_PHASE), attacked.rows)
        return self._added(module, "fake", terms, dsm, weight)

    def generator_terms(self, module: SFDModule, attacked: Attacked, terms: LossTerms) -> LossTerms:
        """The unlearning loss ℓ(attacked | teacher at the override), added to the forget term."""
        weight = module.hparams.lambda_g_forget
        if weight == 0:
            return terms
        rng = module._stream(GENERATOR_PHASE)
        loss = module._generator_term(attacked.condition, attacked.override, rng, attacked.rows)
        return self._added(module, "generator", terms, loss, weight)

    def _added(
        self, module: SFDModule, name: str, terms: LossTerms, loss: Tensor, weight: float
    ) -> LossTerms:
        extra = self.settings.weight * loss.mean()
        module.log(f"{name}/adversarial", extra.detach(), batch_size=self.rows)
        return LossTerms(terms.remain, terms.forget + extra, terms.total + weight * extra)

    # --- checkpoint -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor] | None:
        """The rows and learned vectors of every rank (None before the first attack)."""
        if self.state is None:
            return None
        return {key: value.detach().clone() for key, value in self.state.items()}

    def load_state_dict(self, state: Mapping[str, Tensor] | None, world_size: int) -> None:
        """Restore `state_dict()` (None: none stored, rows are drawn at the next iteration)."""
        if state is None:
            self.state = None
            return
        rows = len(next(iter(state.values())))
        if rows != self.rows * world_size:
            raise SFDConfigError(
                f"the checkpoint's adversarial state holds {rows} rows; this run attacks "
                f"{self.rows * world_size} (model.adversarial.share × model.batch_size × devices)"
            )
        self.state = {key: value.clone() for key, value in state.items()}
