"""`UntilForgotten`: train until the teacher judges the concept gone, within a budget (docs/method.md §8).

Every `every_n` iterations the callback probes the generator to ship (the EMA if kept) and the raw
generator with the data-free judge of `sfd.core.judge` on fixed draws, and the remain drift of the
shipped generator against its own samples at the start of the fit. With adversarial SFD the judged
forget rate also covers the conditions of the inner attack's pool (`probe`). It stops the fit when

- the shipped generator's judged forget rate is at most `threshold` (with `override_floor`: at
  most `threshold` above the judged forget rate of its own override samples) for `patience` probes
  in a row (reason "forgotten"); with `average_after`, the first forgotten probe also restarts the
  EMA as the average of the iterates from then on (`SFDModule.restart_ema`, "EMA after
  forgetting"), and the rule stops only once that average holds at least `average_after`
  iterations,
- the remain drift exceeds `max_drift` (reason "drift": forgetting is damaging what must stay),
- the budget of `budget` iterations is spent (reason "budget"),
- with `stall_window`, the judged forget rate has stopped falling well above what counts as
  forgotten (reason "stalled"): no probe of the last 2·`stall_window` counted as forgotten, the
  mean rate of the last `stall_window` probes is more than `stall_margin` above the forgotten level
  (`threshold`, plus the override floor) and not at least the share `stall_drop` below the mean of
  the `stall_window` probes before them (a plateau, e.g. where the judge or the generator cannot
  separate the pair any further, ends there instead of spending the whole budget),

and records the reason, the iterations used and the last probe in the loggers (`completion/*`), in
`module.completion` (which the checkpoint's training record, and so the model card, carries) and,
for resuming, in its own state in the checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info

from sfd.core import judge
from sfd.errors import SFDConfigError, check_count, check_number

RULE_REASONS = ("forgotten", "drift", "stalled", "budget")  # the rule's own stops
REASONS = (*RULE_REASONS, "max_steps")  # every recorded reason ("max_steps": the trainer's limit)
PROBE_EVERY = 10  # the default probe interval (iterations)
MAX_FLOOR = 0.5  # the highest override floor (`UntilForgotten.forgotten`)
STALL_LATEST = 3  # the newest probes whose mean must also have stopped falling (`stalled`)
STALL_WINDOW = 15  # probes per window of the "stalled" test (150 iterations at PROBE_EVERY)
STALL_DROP = 0.1  # the least relative drop of the mean judged forget rate from window to window
STALL_MARGIN = 0.02  # a plateau this close above the forgotten level never stalls
SETTINGS = (  # the rule's settings as the training record shows them (`UntilForgotten.summary`)
    "every_n", "threshold", "patience", "budget", "max_drift", "num_samples", "sigmas", "draws",
    "seed", "average_after", "average_power", "override_floor", "stall_window", "stall_drop",
    "stall_margin",
)  # fmt: skip


def check_rule_within(
    max_steps: int | None,
    every_n: int,
    every_name: str = "UntilForgotten every_n",
    instead: str = "",
) -> None:
    """Refuse a probe interval beyond the run's `trainer.max_steps`: the rule would probe only at
    the start and at the last iteration, so it could never stop the run on forgetting (a fixed run
    in disguise). A budget beyond max_steps is allowed: max_steps ends this leg (the record says
    "max_steps"), and a resume with a larger max_steps goes on to the budget.

    Args:
        max_steps: the trainer's max_steps (None or negative: no limit, nothing to check).
        every_n: the rule's probe interval.
        every_name: how the message names the probe interval (e.g. "--curve-every").
        instead: another way out for the message, e.g. ", or give --no-until-forgotten".
    """
    if max_steps is None or max_steps < 0:
        return
    if every_n > max_steps:
        raise SFDConfigError(
            f"{every_name}={every_n} exceeds trainer.max_steps={max_steps}: the completion rule "
            "would probe only at the start and at the last iteration, so it could not stop the "
            f"run on forgetting; give a probe interval of at most {max_steps} (or raise "
            f"trainer.max_steps{instead})"
        )


class UntilForgotten(Callback):
    """Stop training once the generator has forgotten, judged without data or a classifier.

    Args:
        every_n: iterations between probes (and a probe at the start of the fit).
        threshold: a probe counts as forgotten when the judged forget rate is at most this, in [0, 1].
        patience: forgotten probes in a row that stop the fit.
        budget: the most iterations the fit may use (at least `every_n`); None: the trainer's
            `max_steps` only.
        max_drift: stop when the RMS distance of the remain samples (fixed noise) to those of the
            start exceeds this (data units, images in [-1, 1]); None: the drift is only logged.
        num_samples: forget and remain samples per probe.
        sigmas: the judge's noise levels σ.
        draws: noise draws per level.
        seed: seed of every fixed draw.
        classifier_ua: optionally, a function of the module giving a classifier's UA (0..1) of what
            it would ship now (or None when it has no reading), logged beside the judge's
            (`completion/classifier_ua`).
        average_after: "EMA after forgetting": at the first probe that judges the concept gone,
            restart the module's EMA as the average of the generator iterates from there on
            (`SFDModule.restart_ema`, power `average_power`), and stop as forgotten only once it
            averages at least this many iterations (at least `every_n`). None: off, the EMA keeps
            its schedule.
        average_power: γ of that average (0: the plain mean of the iterates since the restart).
        override_floor: also judge the shipped generator's samples for the override conditions (same
            noise; `judge.forget_rate(sampled="override")`, logged as `completion/override_rate`)
            and count a probe as forgotten when the forget samples are judged forget at most
            `threshold` more often than those: where the teacher itself confuses the pair, a
            generator that draws the override exactly for the forget condition is judged that
            often, and a bare `threshold` below it never stops. False: the bare threshold.
        stall_window: probes per window of the "stalled" stop: the fit stops as stalled once
            none of the last 2·`stall_window` probes counted as forgotten and the mean judged
            forget rate of the last `stall_window` probes is more than `stall_margin` above the
            forgotten level and not at least the share `stall_drop` below the mean of the
            `stall_window` probes before them. None: never stalled.
        stall_drop: the least relative drop of that mean, in [0, 1], that counts as progress.
        stall_margin: how far above the forgotten level (`threshold`, plus the override floor)
            the mean must stay to stall, in [0, 1]: a generator a sample or two from the threshold
            is left to finish.
    """

    def __init__(
        self,
        every_n: int = PROBE_EVERY,
        threshold: float = 0.01,
        patience: int = 3,
        budget: int | None = None,
        max_drift: float | None = None,
        num_samples: int = 64,
        sigmas: Sequence[float] = judge.DEFAULT_SIGMAS,
        draws: int = 2,
        seed: int = 0,
        classifier_ua: Callable[[Any], float | None] | None = None,
        average_after: int | None = None,
        average_power: float = 0.0,
        override_floor: bool = False,
        stall_window: int | None = STALL_WINDOW,
        stall_drop: float = STALL_DROP,
        stall_margin: float = STALL_MARGIN,
    ) -> None:
        check_count("UntilForgotten every_n", every_n)
        check_count("UntilForgotten patience", patience)
        check_number("UntilForgotten threshold", threshold, low=0, high=1)
        if budget is not None:
            check_count("UntilForgotten budget", budget, every_n, f"every_n={every_n}")
        if max_drift is not None:
            check_number("UntilForgotten max_drift", max_drift, low=0, low_open=True)
        if average_after is not None:
            check_count(
                "UntilForgotten average_after", average_after, every_n, f"every_n={every_n}"
            )
        check_number("UntilForgotten average_power", average_power, low=0)
        if stall_window is not None:
            check_count("UntilForgotten stall_window", stall_window)
        check_number("UntilForgotten stall_drop", stall_drop, low=0, high=1)
        check_number("UntilForgotten stall_margin", stall_margin, low=0, high=1)
        self.sigmas = judge.check_judge_settings(num_samples, sigmas, draws)
        self.every_n = every_n
        self.threshold = float(threshold)
        self.patience = patience
        self.budget = budget
        self.max_drift = max_drift
        self.num_samples = num_samples
        self.draws = draws
        self.seed = seed
        self.classifier_ua = classifier_ua
        self.average_after = average_after
        self.average_power = float(average_power)
        self.override_floor = bool(override_floor)
        self.stall_window = stall_window
        self.stall_drop = float(stall_drop)
        self.stall_margin = float(stall_margin)
        # the rule's state (kept across resumes)
        self.streak = 0
        self.reason: str | None = None
        self.stopped_at: int | None = None
        self.averaged_from: int | None = None  # the iteration of the EMA's restart
        self.probe_seconds = 0.0  # wall time of the probes (the rule's own cost)
        self.probes: list[dict[str, Any]] = []
        self.reference: torch.Tensor | None = None  # remain samples at the start, (N, C, H, W)
        self._draws: judge.JudgeDraws | None = None

    # --- the probe ------------------------------------------------------------------------------

    def _fixed_draws(self, module: Any) -> judge.JudgeDraws:
        if self._draws is None:
            self._draws = judge.JudgeDraws.draw(
                module.conditions,
                tuple(module.teacher.sample_shape),
                self.num_samples,
                self.sigmas,
                self.draws,
                self.seed,
                module.device,
            )
        return self._draws

    @torch.no_grad()
    def probe(self, module: Any) -> dict[str, Any]:
        """Judge the shipped and the raw generator now: {iteration, forget_rate, forget_rate_raw,
        drift, classifier_ua} (and `override_rate`, the shipped generator's floor, with
        `override_floor`).

        With adversarial SFD (`module.adversarial`), each generator is also judged on the
        attacked pool's conditions (`forget_rate_attacked`, `forget_rate_raw_attacked`), and
        `forget_rate` / `forget_rate_raw` are the larger of that and the plain forget
        conditions' rate (`forget_rate_plain`, `forget_rate_raw_plain`): a run does not stop as
        forgotten while the conditions its own attacker found still give the concept.
        """
        clock = time.perf_counter()
        draws = self._fixed_draws(module)
        shipped = module.export_generator
        networks = {"forget_rate": shipped, "forget_rate_raw": module.generator}
        modes = {name: net.training for name, net in networks.items()}
        try:
            for net in networks.values():
                net.eval()
            point: dict[str, Any] = {"iteration": int(module.global_step)}
            attacked = self._attacked(module)
            for name, net in networks.items():
                point[name] = judge.forget_rate(module.teacher, net, draws)
                if attacked is not None:
                    # Adversarial SFD: the concept counts as gone only where the attacked rows
                    # give it no more than the plain forget conditions do.
                    rate = judge.forget_rate(module.teacher, net, draws, attacked)
                    point[f"{name}_plain"], point[f"{name}_attacked"] = point[name], rate
                    point[name] = max(point[name], rate)
            if self.override_floor:
                point["override_rate"] = judge.forget_rate(
                    module.teacher, shipped, draws, sampled="override"
                )
            remain = judge.remain_samples(shipped, draws)
        finally:
            for name, net in networks.items():
                net.train(modes[name])
        if self.reference is None:
            self.reference = remain.detach().cpu()
        point["drift"] = judge.remain_drift(remain.cpu(), self.reference)
        self.probe_seconds += time.perf_counter() - clock  # the classifier's time is not the rule's
        reading = None if self.classifier_ua is None else self.classifier_ua(module)
        if reading is not None:
            point["classifier_ua"] = float(reading)
        return point

    def _attacked(self, module: Any) -> tuple[Any, Any, Any] | None:
        """The adversarial pool's attacked conditions for the probe (`num_samples` rows), or None
        when the module trains without adversarial SFD or has not attacked yet."""
        adversarial = getattr(module, "adversarial", None)
        if adversarial is None:
            return None
        return adversarial.probe_conditions(self.num_samples, module.device)

    def _averaged(self, iteration: int) -> bool:
        """Whether the shipped average is long enough to stop on (always, without `average_after`)."""
        if self.average_after is None:
            return True
        return (
            self.averaged_from is not None and iteration - self.averaged_from >= self.average_after
        )

    def level(self, point: dict[str, Any]) -> float:
        """The judged forget rate at or below which a probe counts as forgotten: `threshold`, plus
        the override floor with `override_floor`.

        The floor stands for how much the teacher confuses the pair, not for what the generator
        draws: it is the lower of the override samples' rate now and at the fit's first probe (a
        generator that loses the override on the way does not raise it), and none at all when
        that is above `MAX_FLOOR` (override samples judged forget more often than not are not the
        override: e.g. a generator drawing the forget concept for both conditions, both rates 1).
        """
        floor = 0.0
        if self.override_floor:
            now = point.get("override_rate", 0.0)
            first = self.probes[0].get("override_rate", now) if self.probes else now
            floor = min(now, first)
            floor = floor if floor <= MAX_FLOOR else 0.0
        return floor + self.threshold

    def forgotten(self, point: dict[str, Any]) -> bool:
        """Whether a probe judges the concept gone: the forget rate at most `level`."""
        return point["forget_rate"] <= self.level(point)

    def stalled(self, point: dict[str, Any]) -> bool:
        """Whether the judged forget rate has stopped falling well above the forgotten level, with
        `point` the newest probe (not yet recorded): none of the last 2·`stall_window` probes
        counted as forgotten, and the mean forget rate of the last `stall_window` is more than
        `stall_margin` above `level`, and neither it nor the mean of the last `STALL_LATEST`
        probes is the share `stall_drop` below the mean of the `stall_window` before them (a fall
        that began a few probes ago goes on). Always False without `stall_window` or with fewer
        probes.

        Only the probes of the fit count (the one at its start included), so a resumed fit
        decides as the uninterrupted one would.
        """
        window = self.stall_window
        if window is None or len(self.probes) + 1 < 2 * window:
            return False
        recent = [*self.probes[len(self.probes) + 1 - 2 * window :], point]
        if any(self.forgotten(probe) for probe in recent):
            return False
        rates = [p["forget_rate"] for p in recent]
        before = sum(rates[:window]) / window
        after = sum(rates[window:]) / window
        latest = rates[-STALL_LATEST:]
        high = after > self.level(point) + self.stall_margin
        flat = min(after, sum(latest) / len(latest)) > (1 - self.stall_drop) * before
        return high and flat

    def _decide(self, point: dict[str, Any]) -> str | None:
        self.streak = self.streak + 1 if self.forgotten(point) else 0
        if self.max_drift is not None and point["drift"] > self.max_drift:
            return "drift"
        if self.streak >= self.patience and self._averaged(point["iteration"]):
            return "forgotten"
        if self.stalled(point):
            return "stalled"
        if self.budget is not None and point["iteration"] >= self.budget:
            return "budget"
        return None

    # --- Lightning hooks ------------------------------------------------------------------------

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.reason in RULE_REASONS:  # resumed after the rule itself stopped it
            rank_zero_info(
                f"UntilForgotten: this run already stopped at iteration {self.stopped_at} "
                f"({self.reason}); nothing to do"
            )
            trainer.should_stop = True
            return
        if self.average_after is not None and getattr(pl_module, "ema", None) is None:
            raise SFDConfigError(
                "UntilForgotten average_after restarts the generator's EMA: this module has none "
                "(model.ema_decay is null)"
            )
        self.reason = self.stopped_at = None  # a resumed run with a larger max_steps goes on
        if not self.probes or self.probes[-1]["iteration"] != pl_module.global_step:
            self._record(trainer, pl_module, self.probe(pl_module))

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(pl_module.global_step)
        at_budget = self.budget is not None and step >= self.budget
        at_end = 0 < trainer.max_steps <= step
        if step % self.every_n != 0 and not (at_budget or at_end):
            return
        point = self.probe(pl_module)
        reason = self._decide(point)
        stop = trainer.strategy.reduce_boolean_decision(reason is not None, all=False)
        first_forgotten = (
            self.average_after is not None and self.averaged_from is None and self.forgotten(point)
        )
        # Restart only while training goes on: at the last iteration a restart would ship one raw
        # iterate in place of the average.
        restart = trainer.strategy.reduce_boolean_decision(first_forgotten, all=False)
        if restart and not stop and not at_end:
            pl_module.restart_ema(self.average_power)  # the average of the iterates from here on
            self.averaged_from = step
            point["averaged_from"] = step
        self._record(trainer, pl_module, point)
        if stop:
            self._stop(trainer, pl_module, reason or "budget")
        elif at_end:  # the trainer's own limit came first; before the last checkpoint is saved
            self.reason = "max_steps"
            self._publish(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.reason is None:  # ended by another limit (epochs, another callback)
            self.reason = "max_steps"
            self._publish(trainer, pl_module)

    def _stop(self, trainer: pl.Trainer, module: Any, reason: str) -> None:
        trainer.should_stop = True
        self.reason = reason
        self._publish(trainer, module)
        last = self.probes[-1]
        rank_zero_info(
            f"UntilForgotten: stopped at iteration {last['iteration']} ({reason}): judged forget "
            f"rate {last['forget_rate']:.3f} (raw generator {last['forget_rate_raw']:.3f}"
            + (f"; override samples {last['override_rate']:.3f}" if "override_rate" in last else "")
            + f"), remain drift {last['drift']:.4f}"
        )

    def _record(self, trainer: pl.Trainer, module: Any, point: dict[str, Any]) -> None:
        self.probes.append(point)
        module.completion = self.summary()
        if trainer.is_global_zero:
            metrics = {f"completion/{k}": v for k, v in point.items() if k != "iteration"}
            metrics["completion/streak"] = self.streak
            for logger in trainer.loggers:  # straight to the loggers, at the probe's iteration
                logger.log_metrics(metrics, step=point["iteration"])

    def _publish(self, trainer: pl.Trainer, module: Any) -> None:
        step = self.stopped_at = int(module.global_step)
        module.completion = self.summary()
        if trainer.is_global_zero:
            code = {f"completion/stopped_{self.reason}": 1.0, "completion/iterations": step}
            for logger in trainer.loggers:
                logger.log_metrics(code, step=step)
                logger.log_hyperparams({"completion/stop_reason": self.reason})

    def summary(self) -> dict[str, Any]:
        """What the checkpoint's training record (and the model card) shows of the rule."""
        last = self.probes[-1] if self.probes else {}
        return {
            "stop_reason": self.reason,
            "iterations": self.stopped_at,
            "last_probe": dict(last),
            "probes": len(self.probes),
            "probe_seconds": self.probe_seconds,
            "averaged_from": self.averaged_from,
            "settings": {name: getattr(self, name) for name in SETTINGS}
            | {"sigmas": list(self.sigmas)},
        }

    # --- resume ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "streak": self.streak,
            "reason": self.reason,
            "stopped_at": self.stopped_at,
            "averaged_from": self.averaged_from,
            "probe_seconds": self.probe_seconds,
            "probes": [dict(p) for p in self.probes],
            "reference": self.reference,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.streak = int(state_dict["streak"])
        self.reason = state_dict["reason"]
        self.stopped_at = state_dict["stopped_at"]
        self.averaged_from = state_dict.get("averaged_from")
        self.probe_seconds = float(state_dict.get("probe_seconds", 0.0))
        self.probes = [dict(p) for p in state_dict["probes"]]
        self.reference = state_dict["reference"]
