"""`SFDModule`: the frozen teacher, the one-step generator and the fake score, trained as docs/method.md §4."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from torch.utils.data import DataLoader

from sfd.core import guards
from sfd.core.adversarial import (
    ADVERSARIAL_KEY,
    AdversarialSettings,
    AdversarialTraining,
    concatenated,
)
from sfd.core.attack_spaces import Attacked
from sfd.core.conditions import ConditionBatch, ConditionSampler
from sfd.core.generator import (
    GENERATOR_SPEC_KEY,
    OneStepGenerator,
    checkpoint_entry,
    training_record,
)
from sfd.core.loop import (
    IterationStream,
    set_training_mode,
    step_without_counting,
    structure_version,
    watch_structure,
)
from sfd.core.losses import LossTerms, fake_score_loss, generator_loss
from sfd.core.sigma import SigmaSampler
from sfd.errors import NonFiniteError, SFDConfigError, check_number
from sfd.teachers.adapter_io import shared_base_views
from sfd.teachers.adapter_settings import AdapterSettings
from sfd.teachers.adapters import AdapterView
from sfd.teachers.base import Denoiser

TEACHER_PREFIX = "teacher."
EMA_RESTART_KEY = "sfd_ema_restart"  # checkpoint entry: [iteration, γ] of `SFDModule.restart_ema`


class Draw(NamedTuple):
    """The draws of one loss term's rows: the condition the generator sees, the teacher's (the
    generator loss; None for the fake score's DSM), z, σ and ε."""

    cond: Any
    teacher_cond: Any
    z: Tensor
    sigma: Tensor
    eps: Tensor


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


def ema_decay_at(step: int, decay: float, power: float | None) -> float:
    """The EMA's decay at iteration `step` (>= 1) of a fit.

    Constant (`power` None): `decay`. Power function (EDM2, γ = `power`):
    min(decay, (1 − 1/step)^(γ+1)). Uncapped, the EMA after t iterations is then
    Σ_{i=1..t} (i^(γ+1) − (i−1)^(γ+1)) / t^(γ+1) · θ_i over the generator iterates θ_i of the fit (the
    decay of iteration 1 is 0: the EMA restarts at the first iterate).
    """
    if power is None:
        return decay
    if step < 1:
        raise ValueError(f"EMA step {step} must be >= 1")
    return min(decay, (1.0 - 1.0 / step) ** (power + 1.0))


class SFDModule(pl.LightningModule):
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
            {
                name: self.hparams[name]
                for name in ("teacher_guidance", "fake_train_guidance", "fake_eval_guidance")
            }
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
        extra = [] if attacked is None else self.adversarial.fake_draws(self, attacked)
        forget, *losses = self._fake_dsms([self._fake_draw(conds.forget, rng), *extra])
        terms = LossTerms.combine(remain, forget, hp.lambda_sg_remain, hp.lambda_sg_forget)
        if attacked is None:
            return terms
        return self.adversarial.fake_terms(self, attacked, terms, losses)

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
        extra = [] if attacked is None else self.adversarial.generator_draws(self, attacked)
        plain = self._generator_draw(conds.forget, conds.override, rng)
        forget, *losses = self._generator_terms([plain, *extra])
        terms = LossTerms.combine(remain, forget, hp.lambda_g_remain, hp.lambda_g_forget)
        if attacked is None:
            return terms
        return self.adversarial.generator_terms(self, attacked, terms, losses)

    @property
    def drops_conditions(self) -> bool:
        """Condition dropout is on when the fake score is guided in its loss or the generator's."""
        hp = self.hparams
        guided = hp.fake_train_guidance != 1.0 or hp.fake_eval_guidance != 1.0
        return guided and hp.cond_dropout > 0

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
        cond, _, z, sigma, eps = joined(draws)
        with torch.no_grad():
            x_g = self.generator(z, cond)  # (B, C, H, W)
        x = x_g + sigma.view(-1, 1, 1, 1) * eps
        fake_cond = self.conditions.for_role(cond, "fake_train")
        x0_hat = self.fake_score.guided(x, sigma, fake_cond, self.hparams.fake_train_guidance)
        return list(fake_score_loss(x0_hat, x_g, sigma).split([len(d.z) for d in draws]))

    def _generator_term(
        self, cond: Any, teacher_cond: Any, rng: torch.Generator, rows: int | None = None
    ) -> Tensor:
        """The per-sample generator loss on `rows` samples under `cond`, the teacher at
        `teacher_cond`."""
        return self._generator_terms([self._generator_draw(cond, teacher_cond, rng, rows)])[0]

    def _generator_draw(
        self, cond: Any, teacher_cond: Any, rng: torch.Generator, rows: int | None = None
    ) -> Draw:
        """The draws of one generator term (z, σ, ε), in the stream's order."""
        z = self._randn(rng, rows)
        return Draw(cond, teacher_cond, z, self._sigma(rng, rows), self._randn(rng, rows))

    def _generator_terms(self, draws: list[Draw]) -> list[Tensor]:
        """The per-sample generator loss of each of `draws`, in one call of each network."""
        hp = self.hparams
        cond, teacher_cond, z, sigma, eps = joined(draws)
        x_g = self.generator(z, cond)  # (B, C, H, W), with grad
        x = x_g + sigma.view(-1, 1, 1, 1) * eps
        teacher_cond = self.conditions.for_role(teacher_cond, "teacher")
        fake_cond = self.conditions.for_role(cond, "fake_eval")
        x0_hat_teacher = self.teacher.guided(x, sigma, teacher_cond, hp.teacher_guidance)
        x0_hat_fake = self.fake_score.guided(x, sigma, fake_cond, hp.fake_eval_guidance)
        loss = generator_loss(x0_hat_teacher, x0_hat_fake, x_g, hp.alpha)
        return list(loss.split([len(d.z) for d in draws]))

    @torch.no_grad()
    def update_ema(self, step: int) -> None:
        """ema ← decay·ema + (1 − decay)·generator (buffers copied), after the generator's update
        of iteration `step` (1 for the first of this fit; the decay: `ema_decay_at`).

        Own code rather than torch's `AveragedModel`: the update is the same single
        `_foreach_lerp_`, while the EMA generator stays a plain `OneStepGenerator` that callbacks
        sample, exports ship and checkpoints hold as `ema.*`. The step is the trainer's
        `global_step`, which a resumed run restores, so a resumed power-function EMA continues
        bit-identically. In the shared base the EMA adapter averages the generator adapter's
        merged updates B·A (`SharedBase.average_into`), as full copies average the weights.
        """
        if self.ema is None:
            return
        if self.ema_restart is not None:  # the average of the iterates since the restart
            start, power = self.ema_restart
            decay = ema_decay_at(step - start + 1, self.hparams.ema_decay, power)
        else:
            decay = ema_decay_at(step, self.hparams.ema_decay, self.hparams.get("ema_power"))
        ema_params, params, ema_buffers, buffers = self._ema_tensors()
        ema, live = self.ema.denoiser, self.generator.denoiser
        if isinstance(ema, AdapterView) and isinstance(live, AdapterView):
            # the average of the merged updates B·A, not of each factor (shared base)
            ema.shared.average_into(ema.adapter_name, live.adapter_name, 1.0 - decay)
        else:
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        if buffers:
            torch._foreach_copy_(ema_buffers, buffers)

    def _ema_tensors(self) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """The EMA's and the generator's parameters and buffers, in matching order.

        Kept between iterations instead of walking both module trees twice each time: rebuilt
        when a network is replaced, when anything was registered into either since
        (`structure_version`) and after `_apply` (`.to()` / `.half()` of this module replace
        buffers). No grad is recorded (`update_ema` runs under `no_grad`), so the generator's
        parameters are kept as they are rather than as detached views, which an assignment to
        `param.data` would leave behind.
        """
        ema, generator, version = self.ema, self.generator, structure_version()
        cached = self.__dict__.get("_ema_cache")
        if (
            cached is None
            or cached[0] != version
            or cached[1] is not ema
            or cached[2] is not generator
        ):
            watch_structure(generator)
            version = watch_structure(ema)
            tensors = (
                list(ema.parameters()),
                list(generator.parameters()),
                list(ema.buffers()),
                list(generator.buffers()),
            )
            for ours, theirs, what in ((0, 1, "parameters"), (2, 3, "buffers")):
                if len(tensors[ours]) != len(tensors[theirs]):
                    raise RuntimeError(
                        f"the EMA has {len(tensors[ours])} {what}, the generator "
                        f"{len(tensors[theirs])}: they must be the same network"
                    )
            cached = self.__dict__["_ema_cache"] = (version, ema, generator, tensors)
        return cached[3]

    def _apply(self, fn: Any, recurse: bool = True) -> SFDModule:
        self.__dict__.pop("_ema_cache", None)  # `.to()` replaces buffers
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle, a spawned process) gets networks nobody watches
        # (`watch_structure`): its caches of their tensors and modes are rebuilt, not carried over.
        state = super().__getstate__()
        state.pop("_ema_cache", None)
        state["_mode_plans"] = {}
        return state

    @torch.no_grad()
    def restart_ema(self, power: float = 0.0) -> None:
        """Restart the EMA at the generator now (after the update of iteration `global_step` = s):
        from then on it is the power-function average (γ = `power`, capped at `ema_decay`) of the
        iterates θ_s, θ_{s+1}, ... only, whatever the EMA's schedule before (docs/method.md §4,
        "EMA after forgetting"; γ = 0: their plain mean). The completion rule calls it when the
        judge first calls the concept gone. The restart point travels in the checkpoint, so a
        resumed run continues bit-identically.
        """
        if self.ema is None:
            raise SFDConfigError("restarting the EMA needs one: model.ema_decay is null")
        check_number("EMA restart power", power, low=0)
        self.ema_restart = (int(self.global_step), float(power))
        ema_params, params, ema_buffers, buffers = self._ema_tensors()
        torch._foreach_copy_(ema_params, params)
        if buffers:
            torch._foreach_copy_(ema_buffers, buffers)

    @property
    def export_generator(self) -> OneStepGenerator:
        """The generator to ship: the EMA if there is one."""
        return self.ema if self.ema is not None else self.generator

    # --- plumbing -------------------------------------------------------------------------------

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            self.fake_optimizer(self.fake_score.parameters()),
            self.generator_optimizer(self.generator.parameters()),
        ]

    def configure_model(self) -> None:
        # A sharding strategy (sfd.training.fsdp) shards the networks here, before the optimizers.
        shard = getattr(self.trainer.strategy, "shard_networks", None)
        if shard is not None:
            shard(self)

    def on_fit_start(self) -> None:
        guards.check_precision(self.trainer.precision)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(IterationStream(self.hparams.steps_per_epoch), batch_size=None)

    def train(self, mode: bool = True) -> SFDModule:
        super().train(mode)
        self.teacher.eval()  # frozen networks stay in eval mode whatever Lightning toggles
        if self.ema is not None:
            self.ema.eval()
        return self

    def on_train_end(self) -> None:
        self._raise_if_nonfinite()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._raise_if_nonfinite()  # no checkpoint from a run that went non-finite since its last read
        # The teacher is reloaded from its source on resume; it never enters a checkpoint.
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]
        for name in ("generator", "fake_score", "ema"):
            network = getattr(self, name)
            bad = None if network is None else guards.first_nonfinite_tensor(network)
            if bad is not None:  # never overwrite a good checkpoint with broken weights
                raise NonFiniteError(
                    f"refusing to write a checkpoint at iteration {self.global_step}: the {name} "
                    f"holds non-finite values in {bad!r}"
                )
        if self.adversarial is not None:
            checkpoint[ADVERSARIAL_KEY] = self.adversarial.state_dict()
        if self.ema_restart is not None:
            checkpoint[EMA_RESTART_KEY] = list(self.ema_restart)
        prefix = "ema.denoiser." if self.ema is not None else "generator.denoiser."
        entry = checkpoint_entry(self.export_generator, prefix, training_record(self))
        if entry is not None:
            checkpoint[GENERATOR_SPEC_KEY] = entry

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        stored = [k for k in state if k.startswith(TEACHER_PREFIX)]
        if stored:
            raise SFDConfigError(
                f"checkpoint holds teacher tensors ({stored[0]}, ...); sfd checkpoints never do"
            )
        for key, value in self.teacher.state_dict().items():
            state[TEACHER_PREFIX + key] = value
        if self.adversarial is not None:
            self.adversarial.load_state_dict(checkpoint.get(ADVERSARIAL_KEY), self._world_size)
        restart = checkpoint.get(EMA_RESTART_KEY)
        self.ema_restart = None if restart is None else (int(restart[0]), float(restart[1]))

    @property
    def _world_size(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

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

    @contextmanager
    def _toggled(self, optimizer: Any) -> Iterator[None]:
        """Only `optimizer`'s parameters require grad inside the block.

        What Lightning's `toggle_optimizer` / `untoggle_optimizer` do (every parameter of the
        other optimizers that is not also `optimizer`'s stops requiring grad; each is put back
        as it was afterwards; `optimizer`'s own are left as they are), at a third of the cost:
        parameters are keyed by `id` rather than `Tensor.__hash__`, a Python call each, and only
        the other optimizers' parameters are touched.
        """
        current = getattr(optimizer, "optimizer", optimizer)  # a LightningOptimizer's own
        seen = {id(p) for group in current.param_groups for p in group["params"]}
        frozen = []
        for other in self.trainer.optimizers:
            if other is current:
                continue
            for group in other.param_groups:
                for param in group["params"]:
                    if id(param) not in seen:
                        seen.add(id(param))
                        frozen.append((param, param.requires_grad))
        for param, _ in frozen:
            param.requires_grad = False
        try:
            yield
        finally:
            for param, requires_grad in frozen:
                param.requires_grad = requires_grad

    def _update(
        self, optimizer: Any, network: str, terms: LossTerms, counts_as_iteration: bool
    ) -> None:
        names = {"remain": terms.remain.reshape(()), "forget": terms.forget.reshape(())}
        self._watch.loss_terms(network, names, self.global_step)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(
            terms.total
        )  # gradients checked and clipped in on_before_optimizer_step
        if counts_as_iteration:
            optimizer.step()
        else:
            step_without_counting(optimizer)

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Runs inside the precision plugin's optimizer step: after a 16-mixed gradient scaler
        # unscaled the gradients (clipping scaled ones would clip at value·scale), after the
        # distributed average, before the step. Both networks' steps pass through here.
        network = ("fake_score", "generator")[self.trainer.optimizers.index(optimizer)]
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self._check_finite_gradients(network, grads)
        clip = (
            self.hparams.fake_grad_clip
            if network == "fake_score"
            else self.hparams.generator_grad_clip
        )
        if clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="value")

    def _check_finite_gradients(self, network: str, grads: list[Tensor]) -> None:
        """Repair and count non-finite gradient elements on the device (`guards.NonFiniteWatch`).

        A few non-finite elements are replaced as the reference does (NaN -> 0, ±inf -> ±1e5) and
        counted; `nonfinite_grads/<network>` logs how many so far. A wholly non-finite update is
        marked and stops the run at the next read-back (`_raise_if_nonfinite`). With a 16-mixed
        gradient scaler, overflow is its business: it skips the step and lowers the scale.
        """
        if not self._scaler_active:
            self._watch.gradients(network, grads, self.global_step)

    @property
    def _reads_back_now(self) -> bool:
        """Whether this iteration logs (the logger's interval, and the last iteration)."""
        if self._trainer is None:
            return True
        trainer, step = self.trainer, self.global_step
        every = trainer.log_every_n_steps
        return (every > 0 and step % every == 0) or 0 < trainer.max_steps <= step

    def _raise_if_nonfinite(self, log: bool = False) -> None:
        """Read the non-finite watch back (one sync) and stop the run if a loss term or a whole
        update went non-finite since the start; all ranks agree.

        Read when the run logs, saves a checkpoint and ends: the iterations in between cost no
        sync, and a broken run is stopped before any checkpoint or export is written from it (its
        weights stay finite meanwhile: every bad gradient element is repaired).
        """
        report = self._watch.report()
        failure = guards.NonFiniteWatch.first_failure(report)
        broken = failure is not None
        if self._trainer is not None:
            broken = self.trainer.strategy.reduce_boolean_decision(broken, all=False)
        if broken:
            iteration, what = failure if failure is not None else (-1, "non-finite values")
            where = f" at iteration {iteration}" if iteration >= 0 else " on another rank"
            raise NonFiniteError(
                f"{what}{where}; training stopped at iteration {self.global_step}, before any "
                f"checkpoint was written from it. {self._last_checkpoint()}"
            )
        if log:
            for network in ("fake_score", "generator"):
                count = float(report.get(f"replaced:{network}", 0))
                self.log(f"nonfinite_grads/{network}", count, on_step=True, on_epoch=False)

    @property
    def _scaler_active(self) -> bool:
        return getattr(self.trainer.precision_plugin, "scaler", None) is not None

    def _last_checkpoint(self) -> str:
        """Where the last good checkpoint is, for error messages."""
        callbacks = self.trainer.checkpoint_callbacks if self._trainer is not None else []
        paths = [  # a path the callback recorded before a refused save does not exist
            path
            for callback in callbacks
            for path in (
                getattr(callback, "last_model_path", ""),
                getattr(callback, "best_model_path", ""),
            )
            if path and get_filesystem(path).exists(path)
        ]
        return f"The last good checkpoint is {paths[0]}." if paths else "No checkpoint was written."

    def _log_terms(self, name: str, terms: LossTerms) -> None:
        # Every term is logged; the totals also show in the progress bar. They oscillate around
        # zero by construction (docs/method.md §4): read them with the samples, not as convergence.
        # Read back as plain numbers here (one sync, on a log step): Lightning turns progress-bar
        # tensors into numbers after every batch, which would be a sync per iteration on a GPU.
        named = vars(terms)
        values = torch.stack([v.detach().reshape(()) for v in named.values()]).tolist()
        for key, value in zip(named, values, strict=True):
            self.log(
                f"{name}/{key}",
                value,
                batch_size=self.hparams.batch_size,
                prog_bar=key == "total",
            )
