"""Adversarial SFD (docs/method.md §9): the unlearning term also on the worst forget conditions.

Each iteration, before the fake-score step, an inner attack looks for what an attacker would feed
the generator to bring the forgotten concept back: learned soft-prompt tokens inserted into forget
prompts (text teachers), or a learned vector in place of the forget label's class embedding
(class teachers). Its objective is data-free: the frozen teacher as a diffusion classifier
(`concept_log_probability`), i.e. make the generator's sample under the attacked condition
denoise better under the forget condition than under the override and the remain conditions
(`rivals`; 0: the override only, `implicit_classifier_margin`). The attacked
conditions then enter both SFD steps beside the plain ones: the fake score learns the
generator's samples under them, and the generator gets the unlearning loss on them with the
teacher at the override (computed in the plain forget term's network calls, `step_terms`).

The learned vectors persist across iterations in a pool of `pool` × the attacked rows, with
their Adam moments (a warm start of the vectors and of their optimiser); each iteration the next
rows of the pool, round robin, are refined and trained on, and the whole pool is drawn afresh
every `refresh_every` iterations; in between, `restart_share` of the attacked rows are drawn
afresh each iteration, the oldest first, so that fresh starts meet the generator as it is now.
The pool is checkpointed (`ADVERSARIAL_KEY`), so a resume is bit-exact.
Every draw comes from the module's (seed, iteration, phase) streams, for the global batch, and
each row's attack is independent of the others, so one process computes what N processes do —
except that `restart_share` and `remain_starts` are shares of each device's K attacked rows
(rounded up per device): with either above 0, runs agree only at the same rows per device.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from sfd.core.adversarial_settings import AdversarialSettings, adversarial_rows
from sfd.core.attack_spaces import START_KEY, Attacked, attack_space
from sfd.core.conditions import ConditionSampler
from sfd.core.losses import LossTerms, eps_mse, implicit_classifier_margin
from sfd.errors import SFDConfigError
from sfd.teachers.base import Denoiser

if TYPE_CHECKING:
    from sfd.core.generator import OneStepGenerator
    from sfd.core.module import Draw, SFDModule

ADVERSARIAL_KEY = "sfd_adversarial"  # checkpoint entry: the pool's rows, vectors, Adam moments
MOMENT_KEYS = ("adam_m", "adam_v", "adam_t")  # the pool's per-row Adam state
# `SFDModule._stream` phases of adversarial SFD: fresh draws, the inner attack, the two steps.
DRAW_PHASE, ATTACK_PHASE, FAKE_PHASE, GENERATOR_PHASE = 3, 4, 5, 6
# Per SFD step: the weights (hparams) of its forget term and of its remain term.
STEP_WEIGHTS = {
    "fake": ("lambda_sg_forget", "lambda_sg_remain"),
    "generator": ("lambda_g_forget", "lambda_g_remain"),
}


def concept_log_probability(errors: Tensor, elements: int) -> Tensor:
    """log p(c_0 | x) of a diffusion classifier over concepts (row 0: the forget concept).

    log p(x | c) ≈ −(elements / 2)·e(x, c) + terms that do not depend on c: each ε-space error
    of the teacher taken as a unit-variance Gaussian residual per element (e is a per-element
    mean), uniform prior over the concepts. Scale-free in its maximiser's sign, not in its
    sharpness: with that scale, the nearest rival decides the gradient.

    Args:
        errors: e(x, c) of each concept (row) for each sample (column), (C, N).
        elements: elements per sample (C·H·W).

    Returns:
        log-softmax of −(elements / 2)·e towards concept 0, (N,).
    """
    return torch.log_softmax(-0.5 * elements * errors, dim=0)[0]


def concatenated(conditions: list[Any]) -> Any:
    """Condition batches (label tensors, `ClassEmbeddingCondition`s, `TextCondition`s) one after
    the other; label tensors beside class-embedding conditions join as rows that see their
    labels (`ClassEmbeddingCondition.cat`)."""
    joined = next((c for c in conditions if not isinstance(c, Tensor)), None)
    if joined is None:
        return torch.cat(conditions)
    return type(joined).cat(conditions)


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
        if settings.remain_starts > 0 and len(self.space.remain_attackable) == 0:
            raise SFDConfigError(
                f"model.adversarial.remain_starts={settings.remain_starts!r}: no remain prompt "
                f"has room for model.adversarial.tokens={settings.tokens} more tokens "
                f"(the {self.space.length_name}); use fewer tokens or remain_starts 0"
            )
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
        """Per-row attack objective on G(z, attacked): log p(forget | x) of the teacher as a
        diffusion classifier over the forget concept and its rivals (`concept_log_probability`),
        or, with `rivals` 0, the implicit-classifier margin forget vs override.

        Args:
            module: the SFD module (generator, teacher, σ sampler, rank-sliced draws).
            state: this rank's rows.
            learned: their learned vectors (differentiable), (K, ...).
            rng: the stream of z, σ and ε (draws for every rank's rows; this rank's are used).

        Returns:
            the objective of each row averaged over its `samples` z, (K,).
        """
        rows, settings = len(learned), self.settings
        attacked, forget, override = self.space.conditions(state, learned)
        # `samples` z per row, rows repeated block by block: (S·K) samples.
        z = torch.cat([module._randn(rng, rows) for _ in range(settings.samples)])
        x_g = module.generator(z, concatenated([attacked] * settings.samples))
        if settings.sigmas is None:
            levels = [lambda: module._sigma(rng, rows)] * settings.noise_levels
        else:
            levels = [
                lambda level=level: torch.full((rows,), level, device=x_g.device)
                for level in settings.sigmas
                for _ in range(settings.noise_levels)
            ]
        sigmas, noisy = [], []
        for level in levels:
            sigma = torch.cat([level() for _ in range(settings.samples)])  # (S·K,)
            eps = torch.cat([module._randn(rng, rows) for _ in range(settings.samples)])
            sigmas.append(sigma)
            noisy.append(x_g + sigma.view(-1, 1, 1, 1) * eps)
        draws = len(levels) * settings.samples
        sigma, x = torch.cat(sigmas), torch.cat(noisy)
        target = x_g.repeat(len(levels), 1, 1, 1)
        if settings.rivals == 0:
            # One teacher call for every draw under both conditions: (2·draws·S·K) rows.
            teacher_cond = concatenated([override] * draws + [forget] * draws)
            x0_override, x0_forget = module.teacher(
                torch.cat([x, x]), torch.cat([sigma, sigma]), teacher_cond
            ).chunk(2)
            margin = implicit_classifier_margin(x0_override, x0_forget, target, sigma)
            return margin.view(-1, rows).mean(0)  # draws·S blocks of the K rows
        # The teacher as a diffusion classifier over the forget concept and its rivals (drawn
        # after every other draw of the step): one call for every draw under every concept.
        concepts = [forget, *self.space.rivals(state, settings.rivals, rng)]
        teacher_cond = concatenated([c for c in concepts for _ in range(draws)])
        x0 = module.teacher(
            x.repeat(len(concepts), 1, 1, 1), sigma.repeat(len(concepts)), teacher_cond
        ).chunk(len(concepts))
        # e(x_g, c) per sample, averaged over its (σ, ε) draws: (concepts, S·K).
        errors = torch.stack(
            [eps_mse(x0_c, target, sigma).view(len(levels), -1).mean(0) for x0_c in x0]
        )
        return concept_log_probability(errors, x_g[0].numel()).view(-1, rows).mean(0)

    def _fresh_pool(self, module: SFDModule) -> dict[str, Tensor]:
        """Every rank's pool drawn afresh, with zero Adam moments."""
        size = self.rows * self.settings.pool * module._world_size
        state = self.space.draw(size, module._stream(DRAW_PHASE), module.generator)
        learned = state[self.space.learned]
        state[MOMENT_KEYS[0]] = torch.zeros_like(learned)
        state[MOMENT_KEYS[1]] = torch.zeros_like(learned)
        state[MOMENT_KEYS[2]] = torch.zeros(size, device=learned.device)
        return self._with_starts(state)

    def _with_starts(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """`state` with the rows that start from a remain prompt marked (`remain_starts` > 0:
        the last ⌈remain_starts·K⌉ of each device's K rows; the pool is block-major, so pool row
        i is row i mod K of its device), or unmarked (0). No draw: the other draws stay put."""
        state.pop(START_KEY, None)
        if self.settings.remain_starts > 0:
            learned = state[self.space.learned]
            starts = adversarial_rows(self.settings.remain_starts, self.rows)
            row = torch.arange(len(learned), device=learned.device) % self.rows
            state[START_KEY] = row >= self.rows - starts
        return state

    def _restart(self, module: SFDModule) -> None:
        """Draw `restart_share` of this iteration's block afresh on every rank, with zero Adam
        moments: in each rank's K rows, the ⌈restart_share·K⌉ positions after those of the
        block's previous visit (cyclically), from the draw stream (unused when the pool is not
        refreshed). A function of the iteration only: no state of its own."""
        count = adversarial_rows(self.settings.restart_share, self.rows)
        if count == 0:
            return
        visit = module.global_step // self.settings.pool
        offsets = (visit * count + torch.arange(count, device=module.device)) % self.rows
        index = torch.cat(
            [self._block(module, rank)[offsets] for rank in range(module._world_size)]
        )
        fresh = self.space.draw(len(index), module._stream(DRAW_PHASE), module.generator)
        for key, value in fresh.items():
            self.state[key][index] = value.to(self.state[key].device, self.state[key].dtype)
        for key in MOMENT_KEYS:
            self.state[key][index] = 0

    def _block(self, module: SFDModule, rank: int) -> Tensor:
        """Global indices of `rank`'s rows attacked at this iteration.

        The pool is block-major: block j holds every rank's rows of that block, rank by rank,
        so block j of one process with N·K rows is block j of N processes with K rows each.
        """
        block = module.global_step % self.settings.pool
        first = (block * module._world_size + rank) * self.rows
        return torch.arange(first, first + self.rows, device=module.device)

    def _ascend(self, learned: Tensor, grad: Tensor, moments: dict[str, Tensor]) -> Tensor:
        """One Adam ascent step per row (β = 0.9, 0.999, ε = 1e-8, each row's own step count):
        torch.optim.Adam(maximize=True) whose moments live in the pool, not in an optimiser."""
        m, v, t = (moments[key] for key in MOMENT_KEYS)
        t = t + 1
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad.square()
        shape = (-1,) + (1,) * (learned.dim() - 1)
        m_hat = m / (1 - 0.9 ** t.view(shape))
        v_hat = v / (1 - 0.999 ** t.view(shape))
        moments.update(zip(MOMENT_KEYS, (m, v, t), strict=True))
        return learned + self.settings.lr * m_hat / (v_hat.sqrt() + 1e-8)

    def attack(self, module: SFDModule) -> Attacked | None:
        """Run this iteration's inner attack; None when there is nothing to attack.

        Draws a fresh pool at the first iteration and every `refresh_every` iterations (in
        between, `restart_share` of the block afresh: `_restart`), then takes `steps` Adam ascent steps on this rank's current block of its pool (the generator
        as it is now, in eval mode), and shares the result with every rank so that each holds
        (and checkpoints) the whole pool.
        """
        hp = module.hparams
        if self.rows == 0 or (hp.lambda_sg_forget == 0 and hp.lambda_g_forget == 0):
            return None
        world, rank = module._world_size, module.global_rank
        fresh = self.state is None or module.global_step % self.settings.refresh_every == 0
        if fresh:
            self.state = self._fresh_pool(module)
        self.state = {key: value.to(module.device) for key, value in self.state.items()}
        if not fresh and self.settings.restart_share > 0:
            self._restart(module)
        block = self._block(module, rank)
        mine = {key: value[block] for key, value in self.state.items()}
        learned = mine[self.space.learned].detach()
        moments = {key: mine[key] for key in MOMENT_KEYS}
        self.last_objective = None
        rng = module._stream(ATTACK_PHASE)
        objective = None
        for _ in range(self.settings.steps):
            learned.requires_grad_(True)
            # Rows are independent: the sum gives each row its own gradient, whatever K is.
            objective = self.objective(module, mine, learned, rng)
            (grad,) = torch.autograd.grad(objective.sum(), [learned])
            learned = self._ascend(learned.detach(), grad, moments)
            self.last_objective = objective.detach().mean()
        # log p(forget | x) per row at its last step (rivals ≥ 1, steps ≥ 1: checked).
        weights = objective.detach().exp() if self.settings.posterior_weight else None
        # Recorded on the device like the loss terms (no host sync): a non-finite attack stops
        # the run at the next read-back, before any checkpoint holds it.
        module._watch.loss_terms(
            "adversarial", {"learned vectors": learned.sum()}, module.global_step
        )
        mine.update(moments, **{self.space.learned: learned})
        for key in (self.space.learned, *MOMENT_KEYS):
            if world > 1:
                blocks = torch.cat([self._block(module, r) for r in range(world)])
                self.state[key][blocks] = module.all_gather(mine[key]).flatten(0, 1)
            else:
                self.state[key][block] = mine[key]
        with torch.no_grad():
            condition, _, override = self.space.conditions(mine, learned)
            anchored = (
                self.space.remain_conditions(mine, learned) if self.settings.anchor > 0 else None
            )
        if self.last_objective is not None:
            module.log("adversarial/objective", self.last_objective, batch_size=self.rows)
        if weights is not None:
            module.log("adversarial/posterior", weights.mean(), batch_size=self.rows)
        remain, remain_plain = anchored or (None, None)
        return Attacked(condition, override, self.rows, remain, remain_plain, weights)

    @torch.no_grad()
    def probe_conditions(self, n: int, device: torch.device) -> tuple[Any, Any, Any] | None:
        """The pool's attacked conditions for `n` probe samples, for the completion rule.

        Sample i takes pool row i mod the pool's size (the whole pool of every rank: the same
        on every rank), its learned vectors as they are now.

        Returns:
            (attacked condition, plain forget condition, its rivals: the override and the
            fixed remain rivals of `AttackSpace.rivals`), `n` rows each, or None before the
            first attack. The judge counts a sample forget only where the forget condition
            beats every rival (`sfd.core.judge.forget_rate`).
        """
        if self.state is None:
            return None
        size = len(self.state[self.space.learned])
        index = torch.arange(n) % size
        rows = {key: value[index.to(value.device)].to(device) for key, value in self.state.items()}
        attacked, forget, _ = self.space.conditions(rows, rows[self.space.learned])
        return attacked, forget, self.space.rivals(rows, self.settings.rivals, None)

    # --- the two loss terms ---------------------------------------------------------------

    def draws(self, step: str, module: SFDModule, attacked: Attacked) -> list[Draw]:
        """The draws of SFD step `step`'s ("fake" or "generator") terms on the attacked rows, and
        then the remain anchor's, from the step's own stream: the plain draws are unchanged."""
        rng = module._stream(FAKE_PHASE if step == "fake" else GENERATOR_PHASE)

        def draw(cond: Any, teacher_cond: Any, guidance: float | None = None) -> Draw:
            if step == "fake":
                return module._fake_draw(cond, rng, attacked.rows)
            return module._generator_draw(cond, teacher_cond, rng, attacked.rows, guidance)

        # The attacked rows are unlearning rows: the teacher at the override's guidance.
        draws = [draw(attacked.condition, attacked.override, module.hparams.override_guidance)]
        if attacked.remain is not None:
            draws.append(draw(attacked.remain, attacked.remain_plain))
        return draws

    def step_terms(
        self,
        step: str,
        module: SFDModule,
        attacked: Attacked,
        terms: LossTerms,
        losses: list[Tensor],
    ) -> LossTerms:
        """`terms` of SFD step `step` plus its adversarial term with weight `weight`: the fake
        score's DSM on the generator's samples under the attacked conditions ("fake"), or the
        unlearning loss ℓ(attacked | teacher at the override) ("generator", times each row's
        posterior weight if any), added to the forget term; and the remain anchor's term.

        Args:
            losses: the per-row losses of `draws` (the module computes them in the plain forget
                term's network calls).
        """
        weight = module.hparams[STEP_WEIGHTS[step][0]]
        if weight == 0:
            return terms
        loss = losses[0]
        if step == "generator" and attacked.weights is not None:  # rows read as the concept
            loss = loss * attacked.weights
        terms = self._added(module, step, terms, loss, weight)
        if attacked.remain is None:
            return terms
        # The remain anchor: G(z, remain ⊕ tokens) learned by the fake score and distilled
        # towards the teacher at the remain prompt.
        anchor_weight = module.hparams[STEP_WEIGHTS[step][1]]
        return self._anchored(module, step, terms, losses[1], anchor_weight)

    def _added(
        self, module: SFDModule, name: str, terms: LossTerms, loss: Tensor, weight: float
    ) -> LossTerms:
        extra = self.settings.weight * loss.mean()
        module.log(f"{name}/adversarial", extra.detach(), batch_size=self.rows)
        return LossTerms(terms.remain, terms.forget + extra, terms.total + weight * extra)

    def _anchored(
        self, module: SFDModule, name: str, terms: LossTerms, loss: Tensor, weight: float
    ) -> LossTerms:
        extra = self.settings.anchor * loss.mean()
        module.log(f"{name}/anchor", extra.detach(), batch_size=self.rows)
        return LossTerms(terms.remain + extra, terms.forget, terms.total + weight * extra)

    # --- checkpoint -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor] | None:
        """The pool of every rank: rows, learned vectors, Adam moments (None before the first
        attack)."""
        if self.state is None:
            return None
        return {key: value.detach().clone() for key, value in self.state.items()}

    def load_state_dict(self, state: Mapping[str, Tensor] | None, world_size: int) -> None:
        """Restore `state_dict()` (None: none stored, rows are drawn at the next iteration)."""
        if state is None:
            self.state = None
            return
        missing = [key for key in MOMENT_KEYS if key not in state]
        if missing:
            raise SFDConfigError(
                f"the checkpoint's adversarial state has no {', '.join(missing)}: it was written "
                "before model.adversarial.pool (per-row Adam) and cannot be resumed"
            )
        rows = len(next(iter(state.values())))
        if rows != self.rows * self.settings.pool * world_size:
            raise SFDConfigError(
                f"the checkpoint's adversarial pool holds {rows} rows; this run keeps "
                f"{self.rows * self.settings.pool * world_size} (model.adversarial.share × "
                "model.batch_size × model.adversarial.pool × devices)"
            )
        self.state = self._with_starts({key: value.clone() for key, value in state.items()})
