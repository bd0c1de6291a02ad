"""What Lightning calls around `SFDModule`'s algorithm (`LightningHooks`, a base of `SFDModule`).

`SFDModule` (module.py) holds the algorithm of docs/method.md §4 and its random draws; this base holds
the plumbing around it: the optimizers and their manual steps (gradients repaired and clipped in
`on_before_optimizer_step`), the checkpoint state (no teacher tensors; the generator's spec, the
EMA restart and the attack's state), the device-side non-finite guard and its read-back, and logging.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor
from torch.utils.data import DataLoader

from sfd.core import guards
from sfd.core.adversarial import ADVERSARIAL_KEY, AdversarialTraining
from sfd.core.ema import EMA_RESTART_KEY
from sfd.core.generator import (
    GENERATOR_SPEC_KEY,
    OneStepGenerator,
    checkpoint_entry,
    training_record,
)
from sfd.core.loop import IterationStream, step_without_counting
from sfd.core.losses import LossTerms
from sfd.errors import NonFiniteError, SFDConfigError
from sfd.teachers.base import Denoiser

TEACHER_PREFIX = "teacher."


class LightningHooks(pl.LightningModule):
    """Optimizers, checkpoint state, the non-finite guard and logging of `SFDModule`.

    `SFDModule` builds the networks, the optimizer factories, `adversarial` and the watch `_watch`.
    """

    teacher: Denoiser
    generator: OneStepGenerator
    fake_score: Denoiser
    ema: OneStepGenerator | None
    ema_restart: tuple[int, float] | None
    adversarial: AdversarialTraining | None
    export_generator: OneStepGenerator
    fake_optimizer: OptimizerCallable
    generator_optimizer: OptimizerCallable
    _watch: guards.NonFiniteWatch

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

    def train(self, mode: bool = True) -> LightningHooks:
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
