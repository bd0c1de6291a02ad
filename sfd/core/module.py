"""`SFDModule`: the frozen teacher, the one-step generator and the fake score, trained as docs/method.md §4.

This file is the algorithm (the two steps of an iteration, their losses and the random draws they
use); the EMA lives in `ema.py` (`GeneratorEMA`) and what Lightning calls around the algorithm
(optimizers, checkpoint state, the non-finite guard, logging) in `module_hooks.py` (`LightningHooks`),
the two bases of `SFDModule`.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, NamedTuple

import torch
from lightning.fabric.utilities.data import AttributeDict
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor

from sfd.core import guards
from sfd.core.adversarial import AdversarialTraining, concatenated
from sfd.core.adversarial_settings import AdversarialSettings
from sfd.core.attack_spaces import Attacked
from sfd.core.conditions import ConditionBatch, ConditionSampler
from sfd.core.ema import EMA_RESTART_KEY, GeneratorEMA, ema_decay_at
from sfd.core.generator import OneStepGenerator
from sfd.core.loop import set_training_mode
from sfd.core.losses import LossTerms, fake_score_loss, generator_loss
from sfd.core.module_hooks import TEACHER_PREFIX, LightningHooks
from sfd.core.sigma import SigmaSampler
from sfd.errors import SFDConfigError
from sfd.teachers.adapter_io import shared_base_views
from sfd.teachers.adapter_settings import AdapterSettings
from sfd.teachers.base import GUIDANCE_SCALES, Denoiser

# The names that lived here before the EMA and the Lightning hooks moved out still import from here.
__all__ = ["EMA_RESTART_KEY", "TEACHER_PREFIX", "SFDModule", "default_adam", "ema_decay_at"]


class Draw(NamedTuple):
    """The draws of one loss term's rows: the condition the generator sees, the teacher's (the
    generator loss; None for the fake score's DSM), z, σ, ε and the teacher's guidance scale on
    these rows (None: `teacher_guidance`)."""

    cond: Any
    teacher_cond: Any
    z: Tensor
    sigma: Tensor
    eps: Tensor
    guidance: float | None = None


def joined(draws: list[Draw]) -> Draw:
    """The rows of `draws` one after the other: one batch for one call of each network."""
    if len(draws) == 1:
        return draws[0]
    teacher = (
        None if draws[0].teacher_cond is None else concatenated([d.teacher_cond for d in draws])
    )
    return Draw(
        concatenated([d.cond for d in draws]),
        teacher,
        *(torch.cat([getattr(d, name) for d in draws]) for name in ("z", "sigma", "eps")),
    )


def default_adam(params: Any, lr: float = 1e-5) -> torch.optim.Optimizer:
    """Adam with β = (0, 0.999), the reference optimizer for both networks."""
    return torch.optim.Adam(params, lr=lr, betas=(0.0, 0.999))


class SFDModule(LightningHooks, GeneratorEMA):
    """Score Forgetting Distillation of a frozen teacher into a one-step generator.

    Args:
        teacher: the pretrained σ-space denoiser D_φ; frozen, never optimised, never checkpointed.
        conditions: draws remain / forget / override conditions.
        sigma_sampler: distribution of the loss noise levels σ.
        sigma_init: the generator's fixed input noise level (default 2.5).
        t_init: instead of `sigma_init`, the teacher's time of σ_init: a VP timestep (the
            reference runs t_init 440 on linear-β CIFAR-10, 625 on Stable Diffusion) or a flow
            time in (0, 1) for flow-matching teachers.
        alpha: the SiD α of the generator loss.
        lambda_sg_remain: weight λ_sg_r of the fake-score loss on remain samples.
        lambda_sg_forget: weight λ_sg_f of the fake-score loss on forget samples.
        lambda_g_remain: weight λ_g_r of the generator (distillation) loss on remain samples.
        lambda_g_forget: weight λ_g_f of the generator unlearning loss on forget samples.
        batch_size: samples per device in each of the remain and forget batches.
        fake_optimizer: optimizer factory for the fake score (default Adam lr 1e-5, β = (0, 0.999)).
        generator_optimizer: optimizer factory for the generator (same default).
        fake_grad_clip: clip every fake-score gradient element to ±this value (None: none).
        generator_grad_clip: the same for the generator.
        ema_decay: decay of the generator's exponential moving average (None: no EMA); with
            `ema_power`, the largest decay the average reaches.
        ema_power: γ of a power-function EMA (EDM2): at iteration t of this fit the decay is
            min(ema_decay, (1 − 1/t)^(γ+1)), so until the cap the EMA is the average of all
            generator iterates of the fit with weights ∝ t^γ: a fixed fraction of the run so far,
            and it starts at the generator the fit starts from (docs/method.md §4, "The EMA").
            None: the constant decay `ema_decay` from the first iteration.
        fake_train_guidance: guidance scale of the fake score in its own loss (1: none).
        fake_eval_guidance: guidance scale of the fake score inside the generator loss.
        teacher_guidance: guidance scale of the teacher inside the generator loss.
        override_guidance: guidance scale of the teacher on the override condition in the
            unlearning term (and adversarial SFD's attacked rows), where the generator is pulled
            to the teacher's override concept (None: `teacher_guidance`, as the reference).
        cond_dropout: share of the fake-score step's conditions replaced by the null condition,
            before the generator samples, whenever the fake score is guided
            (fake_train_guidance != 1 or fake_eval_guidance != 1): its unconditional branch
            learns the generator's unconditional samples.
        generator: an already built one-step generator to start from, e.g. an exported one
            (`sfd.pipelines.PretrainedOneStepGenerator`); its own σ_init is kept. Default: a copy
            of the teacher at `sigma_init` / `t_init`.
        fake_score: a fake-score network to train instead of a copy of the teacher.
        adapters: instead of full copies, train the generator and the fake score as PEFT
            adapters of the one frozen teacher network (`sfd.teachers.adapters`); the EMA is a
            third adapter.
        seed: seed of the noise and condition streams (every iteration's draws depend only on
            the seed and the iteration, not on the number of processes).
        steps_per_epoch: iterations that make one Lightning epoch.
        adversarial: adversarial SFD (docs/method.md §9): the unlearning term also on the forget
            conditions an inner attack finds each iteration (None: off).
    """

    def __init__(
        self,
        teacher: Denoiser,
        conditions: ConditionSampler,
        sigma_sampler: SigmaSampler,
        sigma_init: float | None = None,
        t_init: int | float | None = None,
        alpha: float = 1.2,
        lambda_sg_remain: float = 1.0,
        lambda_sg_forget: float = 0.01,
        lambda_g_remain: float = 1.0,
        lambda_g_forget: float = 0.01,
        batch_size: int = 64,
        fake_optimizer: OptimizerCallable | None = None,
        generator_optimizer: OptimizerCallable | None = None,
        fake_grad_clip: float | None = 1.0,
        generator_grad_clip: float | None = 1.0,
        ema_decay: float | None = 0.9999,
        ema_power: float | None = None,
        fake_train_guidance: float = 1.0,
        fake_eval_guidance: float = 1.0,
        teacher_guidance: float = 1.0,
        override_guidance: float | None = None,
        cond_dropout: float = 0.1,
        generator: OneStepGenerator | None = None,
        fake_score: Denoiser | None = None,
        adapters: AdapterSettings | None = None,
        seed: int = 0,
        steps_per_epoch: int = 1000,
        adversarial: AdversarialSettings | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(
            ignore=[
                "teacher",
                "conditions",
                "sigma_sampler",
                "fake_optimizer",
                "generator_optimizer",
                "generator",
                "fake_score",
                "adversarial",
                "adapters",
            ]
        )
        # Plain data in the checkpoint's hyperparameters (it is read with weights_only=True).
        adversarial = AdversarialSettings.of(adversarial)  # also as stored there: a mapping
        self.hparams["adversarial"] = None if adversarial is None else adversarial.as_dict()
        self.automatic_optimization = False
        guards.check_module_settings(self.hparams)
        for name, factory in (
            ("fake_optimizer", fake_optimizer),
            ("generator_optimizer", generator_optimizer),
        ):
            if factory is not None:
                guards.check_optimizer(name, factory)
        guards.check_finite_weights("teacher", teacher)
        for name, network in (("generator", generator), ("fake_score", fake_score)):
            if network is not None:
                guards.check_finite_weights(name, network)
        teacher.check_guidance_scales(
            {n: self.hparams[n] for n in GUIDANCE_SCALES if self.hparams.get(n) is not None}
        )
        conditions.check(teacher.num_classes)
        conditions.bind(teacher)
        sigma_sampler.check(teacher.sigma_table)
        self.conditions = conditions
        self.sigma_sampler = sigma_sampler
        self.fake_optimizer = fake_optimizer or default_adam
        self.generator_optimizer = generator_optimizer or default_adam

        self.teacher = teacher.requires_grad_(False).eval()
        self.adapters = adapters
        if adapters is not None and (generator is not None or fake_score is not None):
            raise SFDConfigError(
                "model.adapters trains adapters of the teacher's network: give no "
                "model.generator or model.fake_score with it"
            )
        views = (
            {} if adapters is None else shared_base_views(adapters, teacher, ema_decay is not None)
        )
        self.fake_score = (
            (fake_score or views.get("fake_score") or copy.deepcopy(teacher))
            .requires_grad_(True)
            .train()
        )
        self.generator = generator or OneStepGenerator(
            views.get("generator") or copy.deepcopy(teacher), sigma_init, t_init
        )
        self.generator.requires_grad_(True).train()
        self.ema = None
        if ema_decay is not None and "ema" in views:
            self.ema = OneStepGenerator(views["ema"], sigma_init, t_init).requires_grad_(False)
        elif ema_decay is not None:
            self.ema = copy.deepcopy(self.generator).requires_grad_(False).eval()
        # (iteration, γ) of the EMA's restart (`restart_ema`); None: the schedule of the settings
        self.ema_restart: tuple[int, float] | None = None
        self._watch = guards.NonFiniteWatch()  # non-finite losses and gradients, on the device
        self._mode_plans: dict[int, Any] = {}  # `_modes`: how each network switches train / eval
        self.adversarial = (
            None
            if adversarial is None
            else AdversarialTraining(adversarial, teacher, self.generator, conditions, batch_size)
        )

    # --- the algorithm (docs/method.md §4) --------------------------------------------------------

    @classmethod
    def check_setting(cls, name: str, value: Any) -> None:
        """The module's own check of one setting given alone, the others at their defaults
        (`guards.check_module_settings`): how a configuration error names the allowed range of a
        value the parser rejects as no number ("nan", "inf", a word). An optimizer's setting is
        named `fake_optimizer.init_args.lr` (`guards.check_optimizer_setting`). A setting the
        module does not check passes.

        Raises:
            SFDConfigError: `value` is outside the setting's range, naming both.
        """
        optimizer, nested, _ = name.partition(".init_args.")
        if nested and optimizer in ("fake_optimizer", "generator_optimizer"):
            guards.check_optimizer_setting(name, value)
            return
        parameters = inspect.signature(cls.__init__).parameters.values()
        defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
        if name in defaults:
            guards.check_module_settings(AttributeDict({**defaults, name: value}))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        fake_opt, generator_opt = self.optimizers()
        conds = self.conditions.sample(
            self.hparams.batch_size, self._stream(0), self._world_size, self.global_rank
        )

        # Step 1: fake score on generated samples (generator frozen, sampling in eval mode).
        self._modes(generator=False, fake_score=True)
        attacked = None if self.adversarial is None else self.adversarial.attack(self)
        with self._toggled(fake_opt):
            # docs/method.md §9: the fake score learns the attacked rows too (`attacked`).
            fake_terms = self.fake_score_losses(conds, self._stream(1), attacked)
            self._update(fake_opt, "fake", fake_terms, counts_as_iteration=False)

        # Step 2: generator (fake score frozen in eval mode, differentiable through its input).
        self._modes(generator=True, fake_score=False)
        with self._toggled(generator_opt):
            generator_terms = self.generator_losses(conds, self._stream(2), attacked)
            self._update(generator_opt, "generator", generator_terms, counts_as_iteration=True)
        self.update_ema(self.global_step)  # the generator step above counted: t >= 1

        if self._reads_back_now:  # nothing on the hot path reads the device between log steps
            self._raise_if_nonfinite(log=True)
            self._log_terms("fake", fake_terms)
            self._log_terms("generator", generator_terms)

    def fake_score_losses(
        self, conds: ConditionBatch, rng: torch.Generator, attacked: Attacked | None = None
    ) -> LossTerms:
        """L_ψ = λ_sg_r·DSM(c_r) + λ_sg_f·DSM(c_f) on samples of the (frozen) generator, plus
        adversarial SFD's terms on `attacked` (docs/method.md §9), computed in the forget term's
        network calls (their draws from their own stream: the numbers of separate calls)."""
        hp = self.hparams
        remain = self._fake_dsm(conds.remain, rng)
        if hp.lambda_sg_forget == 0:  # no forget term, no adversarial term: no compute
            return LossTerms.combine(
                remain, torch.zeros(1, device=self.device), hp.lambda_sg_remain, 0
            )
        extra = [] if attacked is None else self.adversarial.draws("fake", self, attacked)
        forget, *losses = self._fake_dsms([self._fake_draw(conds.forget, rng), *extra])
        terms = LossTerms.combine(remain, forget, hp.lambda_sg_remain, hp.lambda_sg_forget)
        if attacked is None:
            return terms
        return self.adversarial.step_terms("fake", self, attacked, terms, losses)

    def generator_losses(
        self, conds: ConditionBatch, rng: torch.Generator, attacked: Attacked | None = None
    ) -> LossTerms:
        """L_θ = λ_g_r·ℓ(c_r | teacher c_r) + λ_g_f·ℓ(c_f | teacher c_o), the unlearning term last,
        plus adversarial SFD's terms on `attacked`, in the forget term's network calls."""
        hp = self.hparams
        remain = self._generator_term(conds.remain, conds.remain, rng)
        if hp.lambda_g_forget == 0:
            return LossTerms.combine(
                remain, torch.zeros(1, device=self.device), hp.lambda_g_remain, 0
            )
        extra = [] if attacked is None else self.adversarial.draws("generator", self, attacked)
        plain = self._generator_draw(
            conds.forget, conds.override, rng, guidance=hp.override_guidance
        )
        forget, *losses = self._generator_terms([plain, *extra])
        terms = LossTerms.combine(remain, forget, hp.lambda_g_remain, hp.lambda_g_forget)
        if attacked is None:
            return terms
        return self.adversarial.step_terms("generator", self, attacked, terms, losses)

    @property
    def drops_conditions(self) -> bool:
        """Condition dropout is on when the fake score is guided in its loss or the generator's."""
        return bool(guards.guided_fake_score(self.hparams)) and self.hparams.cond_dropout > 0

    def _fake_dsm(self, cond: Any, rng: torch.Generator, rows: int | None = None) -> Tensor:
        """The fake score's per-sample DSM on `rows` fresh generator samples under `cond`."""
        return self._fake_dsms([self._fake_draw(cond, rng, rows)])[0]

    def _fake_draw(self, cond: Any, rng: torch.Generator, rows: int | None = None) -> Draw:
        """The draws of one DSM term (condition dropout, z, σ, ε), in the stream's order."""
        if self.drops_conditions:  # before the generator samples: it sees the null condition too
            cond = self.teacher.drop_condition(
                cond, self._rand(rng, rows) < self.hparams.cond_dropout
            )
        z = self._randn(rng, rows)
        return Draw(cond, None, z, self._sigma(rng, rows), self._randn(rng, rows))

    def _fake_dsms(self, draws: list[Draw]) -> list[Tensor]:
        """The per-sample DSM of each of `draws`, in one call of each network (`joined`)."""
        cond, _, z, sigma, eps, _ = joined(draws)
        with torch.no_grad():
            x_g = self.generator(z, cond)  # (B, C, H, W)
        x = x_g + sigma.view(-1, 1, 1, 1) * eps
        fake_cond = self.conditions.for_role(cond, "fake_train")
        x0_hat = self.fake_score.guided(x, sigma, fake_cond, self.hparams.fake_train_guidance)
        return list(fake_score_loss(x0_hat, x_g, sigma).split([len(d.z) for d in draws]))

    def _generator_term(self, *draw: Any) -> Tensor:
        """The per-sample generator loss of one term drawn by `_generator_draw(*draw)` (cond,
        teacher_cond, rng[, rows[, guidance]])."""
        return self._generator_terms([self._generator_draw(*draw)])[0]

    def _generator_draw(
        self,
        cond: Any,
        teacher_cond: Any,
        rng: torch.Generator,
        rows: int | None = None,
        guidance: float | None = None,
    ) -> Draw:
        """The draws of one generator term (z, σ, ε), in the stream's order; the teacher guided
        at `guidance` on its rows (None: `teacher_guidance`)."""
        z = self._randn(rng, rows)
        sigma = self._sigma(rng, rows)
        return Draw(cond, teacher_cond, z, sigma, self._randn(rng, rows), guidance)

    def _generator_terms(self, draws: list[Draw]) -> list[Tensor]:
        """The per-sample generator loss of each of `draws`, in one call of each network."""
        hp = self.hparams
        cond, teacher_cond, z, sigma, eps, _ = joined(draws)
        x_g = self.generator(z, cond)  # (B, C, H, W), with grad
        x = x_g + sigma.view(-1, 1, 1, 1) * eps
        fake_cond = self.conditions.for_role(cond, "fake_eval")
        x0_hat_teacher = self._teacher_x0(x, sigma, teacher_cond, draws)
        x0_hat_fake = self.fake_score.guided(x, sigma, fake_cond, hp.fake_eval_guidance)
        loss = generator_loss(x0_hat_teacher, x0_hat_fake, x_g, hp.alpha)
        return list(loss.split([len(d.z) for d in draws]))

    def _teacher_x0(self, x: Tensor, sigma: Tensor, teacher_cond: Any, draws: list[Draw]) -> Tensor:
        """The guided teacher on the joined rows of `draws` (its condition `teacher_cond`): one call
        when they share a guidance scale, else one call per draw at its own scale."""
        scales = [
            self.hparams.teacher_guidance if d.guidance is None else d.guidance for d in draws
        ]
        if len(set(scales)) == 1:
            return self.teacher.guided(
                x, sigma, self.conditions.for_role(teacher_cond, "teacher"), scales[0]
            )
        sizes = [len(d.z) for d in draws]
        parts = zip(draws, x.split(sizes), sigma.split(sizes), scales, strict=True)
        return torch.cat(
            [
                self.teacher.guided(
                    x_d, s_d, self.conditions.for_role(d.teacher_cond, "teacher"), g
                )
                for d, x_d, s_d, g in parts
            ]
        )

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle, a spawned process) gets networks nobody watches
        # (`watch_structure`): its plans of their modes are rebuilt, not carried over.
        state = super().__getstate__()
        state["_mode_plans"] = {}
        return state

    def _stream(self, phase: int) -> torch.Generator:
        """A random stream that depends only on (seed, iteration, phase): identical on every rank.

        Phases 0–2 are the conditions, the fake-score step and the generator step; phases from 3
        on (adversarial SFD) are shifted by 2654435761 per block of three: the CPU generator
        keeps a seed's low 32 bits, where phases 3–8 meet another phase's seed only some 3·10⁸
        iterations away.
        """
        block, part = divmod(phase, 3)
        seed = (self.hparams.seed * 1_000_003 + self.global_step) * 3 + part + block * 2654435761
        return torch.Generator(device=self.device).manual_seed(seed % (2**63))

    def _rank_slice(self, draw: Tensor, rows: int | None = None) -> Tensor:
        size = self.hparams.batch_size if rows is None else rows
        return draw[self.global_rank * size : (self.global_rank + 1) * size]

    def _randn(self, rng: torch.Generator, rows: int | None = None) -> Tensor:
        """Normal noise for `rows` samples per rank (default: batch_size), this rank's slice."""
        n = (self.hparams.batch_size if rows is None else rows) * self._world_size
        shape = (n, *self.teacher.sample_shape)
        return self._rank_slice(torch.randn(shape, generator=rng, device=rng.device), rows)

    def _rand(self, rng: torch.Generator, rows: int | None = None) -> Tensor:
        n = (self.hparams.batch_size if rows is None else rows) * self._world_size
        return self._rank_slice(torch.rand(n, generator=rng, device=rng.device), rows)

    def _sigma(self, rng: torch.Generator, rows: int | None = None) -> Tensor:
        n = (self.hparams.batch_size if rows is None else rows) * self._world_size
        return self._rank_slice(self.sigma_sampler.sample(n, rng, self.teacher.sigma_table), rows)

    def _modes(self, generator: bool, fake_score: bool) -> None:
        """`self.generator.train(generator)`, then `self.fake_score.train(fake_score)`, from cached
        plans (`set_training_mode`: no walk of the module trees on each of the iteration's four
        switches)."""
        set_training_mode(self.generator, generator, self._mode_plans)
        set_training_mode(self.fake_score, fake_score, self._mode_plans)
