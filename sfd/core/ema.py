"""The generator's exponential moving average: its decay schedule and its update and restart.

`ema_decay_at` is the schedule (a constant decay, or EDM2's power function); `GeneratorEMA`, a base of
`SFDModule`, updates the EMA generator after each generator step (`update_ema`) and restarts it when
the completion rule asks (`restart_ema`). docs/method.md §4, "The EMA".
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from sfd.core.generator import OneStepGenerator
from sfd.core.loop import structure_version, watch_structure
from sfd.errors import SFDConfigError, check_number
from sfd.teachers.adapters import AdapterView

EMA_RESTART_KEY = "sfd_ema_restart"  # checkpoint entry: [iteration, γ] of `SFDModule.restart_ema`


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


class GeneratorEMA(pl.LightningModule):
    """The EMA of the generator: `SFDModule` builds `ema` (None: no EMA) and sets `ema_restart`."""

    generator: OneStepGenerator
    ema: OneStepGenerator | None
    ema_restart: tuple[int, float] | None  # (iteration, γ) of `restart_ema`; None: the settings'

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

    def _apply(self, fn: Any, recurse: bool = True) -> GeneratorEMA:
        self.__dict__.pop("_ema_cache", None)  # `.to()` replaces buffers
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict[str, Any]:
        # A copy (deepcopy, pickle, a spawned process) gets networks nobody watches
        # (`watch_structure`): its cache of their tensors is rebuilt, not carried over.
        state = super().__getstate__()
        state.pop("_ema_cache", None)
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
