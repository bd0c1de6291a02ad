"""Checks that make a broken run fail loudly instead of finishing with broken weights.

Used by `SFDModule`: the inputs (frozen teacher, given networks, optimizer settings, precision)
are checked once when the module is built or fitted. Loss terms and gradients of every update are
watched on the device (`NonFiniteWatch`: no host sync per update on an accelerator) and read back
when the run logs, checkpoints or ends.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from sfd.errors import SFDConfigError, check_count, check_guidance, check_number
from sfd.teachers.base import GUIDANCE_SCALES

# Lightning precision settings that keep the weights themselves in half precision: SFD's
# learning rates (1e-5 .. 1e-6) and EMA decay 0.9999 vanish below half precision's resolution.
TRUE_HALF_PRECISION = {"bf16-true", "16-true", "bf16", "16", "half", "bf16-true-half"}
GRADIENT_FLOOD = 1e5  # the reference replaces ±inf gradient elements by ±1e5, NaN by 0
WEIGHT_LIMIT = 1e6  # |w| beyond this in a trained network: a run that blew up (weights are O(1))
# Device types whose tensors the host reads without stalling a queue: the watch may branch there.
SYNC_FREE_DEVICES = frozenset({"cpu"})


def _floating_tensors(module: nn.Module) -> list[tuple[str, Tensor]]:
    named = [*module.named_parameters(), *module.named_buffers()]
    return [(name, t) for name, t in named if t.is_floating_point()]


def _whole(t: Tensor) -> Tensor:
    """A reduction of a sharded (FSDP2 DTensor) weight as a plain tensor (a collective)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def first_nonfinite_tensor(module: nn.Module) -> str | None:
    """The name of the first parameter or buffer of `module` holding NaN or ±inf, or None."""
    floating = _floating_tensors(module)
    if not floating:
        return None
    finite = torch.stack([_whole(torch.isfinite(t).all()) for _, t in floating])  # one sync
    if bool(finite.all()):
        return None
    return floating[int((~finite).nonzero()[0])][0]


def largest_weight(module: nn.Module) -> tuple[str, float] | None:
    """The floating parameter or buffer of `module` with the largest |value|, and that value."""
    floating = [(name, t) for name, t in _floating_tensors(module) if t.numel()]
    if not floating:
        return None
    peaks = torch.stack([t.detach().abs().max().float() for _, t in floating])  # one sync below
    index = int(peaks.argmax())
    return floating[index][0], float(peaks[index])


def check_finite_weights(name: str, module: nn.Module, trained: bool = False) -> None:
    """Raise `SFDConfigError` if a weight of `module` is NaN or ±inf, naming the first such tensor.

    Args:
        name: how the message names the network, e.g. "teacher" or "generator 'out/'".
        module: the network.
        trained: whether it is a training result about to be exported, sampled or evaluated (the
            message counts the bad values and points to an earlier checkpoint) rather than an
            input of training.
    """
    bad = first_nonfinite_tensor(module)
    if bad is None:
        return
    if not trained:
        raise SFDConfigError(
            f"the {name} holds non-finite values in {bad!r}; sfd trains only from finite weights"
        )
    tensor = dict(_floating_tensors(module))[bad]
    nan, inf = int(tensor.isnan().sum()), int(tensor.isinf().sum())
    raise SFDConfigError(
        f"{name} has non-finite weights: the first bad tensor is {bad} ({nan} NaN, {inf} "
        f"infinite of {tensor.numel()}); a diverged run cannot be exported or sampled, take an "
        "earlier checkpoint"
    )


def check_precision(precision: str) -> None:
    """Reject precision settings that keep the weights in half precision."""
    if str(precision) in TRUE_HALF_PRECISION:
        mixed = "16-mixed" if str(precision).startswith("16") else "bf16-mixed"
        raise SFDConfigError(
            f"trainer.precision={precision!r} keeps the weights in half precision, where SFD's "
            f"small updates and the EMA vanish; use {mixed!r} (half-precision compute, float32 "
            "master weights)"
        )


def check_optimizer(
    name: str, factory: Callable[[Iterable[Tensor]], torch.optim.Optimizer]
) -> None:
    """Build the optimizer on a probe parameter and check its numeric settings up front.

    Args:
        name: the module argument, e.g. "fake_optimizer".
        factory: the optimizer callable the module will call with the network's parameters.
    """
    try:
        optimizer = factory([nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as error:  # torch's own checks (e.g. a negative lr)
        raise SFDConfigError(f"{name} rejects its settings: {error}") from error
    for group in optimizer.param_groups:
        for key, value in group.items():
            if key == "params":
                continue
            check_optimizer_setting(f"{name}.{key}", value)


def check_optimizer_setting(key: str, value: Any) -> None:
    """The ranges of the usual optimizer settings (lr, betas, eps, momentum, weight_decay)."""
    setting = key.rsplit(".", 1)[-1]
    if isinstance(value, Tensor):
        value = float(value)
    if setting == "lr":
        check_number(key, value, low=0, low_open=True)
    elif setting == "betas":
        if not isinstance(value, (list, tuple)):
            raise SFDConfigError(
                f"{key}={value!r} must be two numbers in [0, 1), e.g. [0.0, 0.999]"
            )
        for i, beta in enumerate(value):
            check_number(f"{key}[{i}]", beta, low=0, high=1, high_open=True)
    elif setting in ("eps", "weight_decay", "momentum", "dampening"):
        check_number(key, value, low=0)


def _local(t: Tensor) -> Tensor:
    """This process's shard of a sharded (FSDP2 DTensor) tensor; a plain tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def count_nonfinite(tensors: list[Tensor]) -> Tensor:
    """The number of NaN or ±inf elements over `tensors`, as one 0-d tensor (no host sync).

    Counted on one concatenated copy, as the non-zero elements of x − x: exactly 0 where x is
    finite, NaN where x is NaN or ±inf (half the time of counting `~isfinite`, which composes
    several elementwise kernels).
    Sharded tensors count this process's shard.
    """
    if not tensors:
        return torch.zeros((), dtype=torch.int64)
    flat = torch.cat([_local(t).reshape(-1) for t in tensors])
    return (flat - flat).count_nonzero()


def any_nonfinite(tensors: list[Tensor]) -> bool:
    """Whether any element of `tensors` (all on one device) is NaN or ±inf; read back (one sync).

    One fused pass over all tensors: the check torch's gradient scaler runs on the gradients it
    unscales, here at a scale of 1, which leaves every value as it was (-0.0 and subnormals too,
    unless `torch.set_flush_denormal(True)` is on).
    """
    if not tensors:
        return False
    device = tensors[0].device
    # float32 whatever the default dtype (64-bit precision makes it float64 in the step)
    found = torch.zeros(1, device=device, dtype=torch.float32)
    scale = torch.ones(1, device=device, dtype=torch.float32)
    torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, scale)
    return bool(found.item())


def replace_nonfinite_(tensors: list[Tensor]) -> None:
    """NaN -> 0, ±inf -> ±1e5 in place (what the reference does to its gradients)."""
    for t in tensors:
        _local(t).nan_to_num_(nan=0.0, posinf=GRADIENT_FLOOD, neginf=-GRADIENT_FLOOD)


class NonFiniteWatch:
    """Non-finite loss terms and gradients of a training run, tracked on the device.

    Every update records into small device tensors (no host sync, no collective); `report` reads
    them all back with one sync, when the run logs, saves a checkpoint or ends. Gradients are
    repaired in place unconditionally as the reference does (NaN -> 0, ±inf -> ±1e5; an identity on
    finite values), so a few bad elements cost nothing but a count, while a loss term or a whole
    update that is non-finite marks the iteration it happened at: the owner stops the run at the
    next read, before any checkpoint or export is written from it.

    Args:
        sync_free_devices: device types where the watch may read a value back (default: the
            CPU, where a read stalls no queue): `gradients` then skips the count and the repair
            of an update without a single non-finite element, `loss_terms` the recording of
            finite terms.
    """

    def __init__(self, sync_free_devices: frozenset[str] = SYNC_FREE_DEVICES) -> None:
        self._slots: dict[str, Tensor] = {}
        self._sync_free_devices = sync_free_devices

    def _slot(self, key: str, like: Tensor, empty: int) -> Tensor:
        slot = self._slots.get(key)
        if slot is None or slot.device != like.device:
            slot = self._slots[key] = torch.full((), empty, dtype=torch.int64, device=like.device)
        return slot

    def _first(self, key: str, bad: Tensor, iteration: int) -> None:
        """Remember the first iteration at which the 0-d boolean `bad` was true."""
        slot = self._slot(key, bad, -1)
        slot.masked_fill_(bad & (slot < 0), iteration)

    def loss_terms(self, network: str, terms: dict[str, Tensor], iteration: int) -> None:
        """Record which of the named 0-d loss terms of `network` are non-finite.

        On a sync-free device the terms are read back first (one number each), and finite
        terms, the usual case, record nothing: a handful of device ops per term saved.
        """
        if not terms:
            return
        values = [value.detach() for value in terms.values()]
        if values[0].device.type in self._sync_free_devices and all(
            math.isfinite(value.item()) for value in values
        ):
            return
        for name, value in terms.items():
            self._first(f"loss:{network}/{name}", ~torch.isfinite(value.detach()), iteration)

    def gradients(self, network: str, grads: list[Tensor], iteration: int) -> None:
        """Count and repair the non-finite elements of `grads`; mark a wholly non-finite update.

        On a sync-free device one fused pass first asks whether any element is non-finite, and
        an update without one costs only that pass; elsewhere the count and the repair run on the
        device for every update and nothing is read back.
        """
        if not grads:
            return
        local = [_local(g) for g in grads]
        if local[0].device.type in self._sync_free_devices and not any_nonfinite(local):
            return
        bad = count_nonfinite(local)
        replaced = self._slot(f"replaced:{network}", bad, 0)
        replaced.add_(bad)
        self._first(f"whole:{network}", bad == sum(g.numel() for g in local), iteration)
        replace_nonfinite_(local)

    def report(self) -> dict[str, int]:
        """Every slot as a plain int (one host sync): `replaced:<network>` counts the repaired
        gradient elements; `loss:<network>/<term>` and `whole:<network>` give the first iteration
        of a non-finite loss term or update (-1: never)."""
        if not self._slots:
            return {}
        keys = list(self._slots)
        return dict(zip(keys, torch.stack([self._slots[k] for k in keys]).tolist(), strict=True))

    @staticmethod
    def first_failure(report: dict[str, int]) -> tuple[int, str] | None:
        """(iteration, what) of the earliest non-finite loss term or update; a loss before an update."""
        failures = [
            (iteration, key.startswith("whole:"), key)
            for key, iteration in report.items()
            if not key.startswith("replaced:") and iteration >= 0
        ]
        if not failures:
            return None
        iteration, _, key = min(failures)
        kind, what = key.split(":", 1)
        if kind == "loss":
            return iteration, f"non-finite loss {what}"
        return iteration, f"every {what} gradient element is non-finite"


def check_one_start(sigma_init: float | None, t_init: int | float | None) -> None:
    """Refuse a generator given both σ_init and t_init (t_init fixes σ_init)."""
    if sigma_init is not None and t_init is not None:
        raise SFDConfigError(
            f"sigma_init={sigma_init} with t_init={t_init}: give one, not both (t_init fixes σ_init)"
        )


FAKE_SCORE_GUIDANCE = ("fake_train_guidance", "fake_eval_guidance")


def guided_fake_score(hp: Any) -> dict[str, float]:
    """The fake score's classifier-free guidance scales other than 1 (empty: it is unguided)."""
    return {name: hp[name] for name in FAKE_SCORE_GUIDANCE if hp[name] != 1.0}


def check_fake_score_null_branch(hp: Any) -> None:
    """Refuse a guided fake score without condition dropout: its unconditional branch learns
    the generator's unconditional samples only from the dropped conditions (docs/method.md §4),
    so with cond_dropout 0 the guided fake score's D_ψ(x, ∅) stays the teacher's."""
    guided = guided_fake_score(hp)
    if guided and hp.cond_dropout == 0:
        name, scale = next(iter(guided.items()))
        raise SFDConfigError(
            f"{name}={scale} guides the fake score, whose unconditional branch learns the "
            "generator's samples only through condition dropout, which cond_dropout=0.0 turns "
            "off; give cond_dropout above 0 (e.g. 0.1, as the Stable Diffusion presets) or keep "
            "fake_train_guidance and fake_eval_guidance at 1"
        )


def check_module_settings(hp: Any) -> None:
    """Every numeric setting of the module, finite and in range (one line naming the bad one).

    `t_init` is checked here only as a time of some teacher (a VP timestep or a flow time, both
    non-negative); its teacher's own range is checked where the teacher is known."""
    for name in ("batch_size", "steps_per_epoch"):
        check_count(name, hp[name])
    if hp.get("sigma_init") is not None:
        check_number("sigma_init", hp.sigma_init, low=0, low_open=True)
    t_init = hp.get("t_init")
    check_one_start(hp.get("sigma_init"), t_init)
    if t_init is not None and (
        isinstance(t_init, bool)
        or not isinstance(t_init, int | float)
        or not math.isfinite(t_init)
        or t_init < 0
    ):
        raise SFDConfigError(
            f"t_init={t_init!r} must be a teacher's time: a VP teacher's integer timestep "
            "(0 up to its schedule's length) or a flow teacher's time in (0, 1)"
        )
    check_number("alpha", hp.alpha, low=0)
    for name in ("lambda_sg_remain", "lambda_sg_forget", "lambda_g_remain", "lambda_g_forget"):
        check_number(name, hp[name], low=0)
    for name in GUIDANCE_SCALES:
        if hp.get(name) is not None:  # override_guidance None: teacher_guidance's
            check_guidance(name, hp[name])
    check_number("cond_dropout", hp.cond_dropout, low=0, high=1, high_open=True)
    check_fake_score_null_branch(hp)
    if hp.ema_decay is not None:
        check_number("ema_decay", hp.ema_decay, low=0, high=1, high_open=True)
    if hp.get("ema_power") is not None:
        check_number("ema_power", hp.ema_power, low=0)
        if hp.ema_decay is None:
            raise SFDConfigError(
                f"ema_power={hp.ema_power} shapes the generator's EMA, which ema_decay=null turns "
                "off: give an ema_decay (the largest decay, e.g. 0.9999) or no ema_power"
            )
    for name in ("fake_grad_clip", "generator_grad_clip"):
        if hp[name] is not None:
            check_number(name, hp[name], low=0, low_open=True)
