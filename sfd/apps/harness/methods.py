"""The methods `sfd compare` runs, behind one interface: fit with a Lightning `Trainer`, then sample.

Each `Method` trains its own module (`SFDModule`, `ESDModule`, `SalUnModule`, the teacher recipe)
on the same teacher and returns a `Fitted`: the network to evaluate (`sfd.baselines.Unlearned`:
one-step generators are sampled directly, fine-tuned denoisers with the teacher's DDIM), its
forgetting curve with training seconds, and its training wall time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lightning.pytorch as pl

from sfd.apps.harness.curve import TimedForgettingCurve, raw_generator, until_forgotten
from sfd.apps.harness.settings import ClassRunSettings
from sfd.apps.harness.stages import StageOne, fit_module, stage_one, train_sfd
from sfd.apps.harness.workspace import Workspace, build_teacher, teacher_recipe
from sfd.baselines import BASELINES
from sfd.baselines.method import Unlearned, unlearned
from sfd.core.conditions import ClassConditions
from sfd.teachers.unet import PretrainedVPTeacher
from sfd.training.cli import parse_fit_config
from sfd.training.completion import PROBE_EVERY

RAW_SUFFIX = "_raw"  # the key of SFD's raw generator beside its EMA: "sfd_two_stage_raw"
TITLES = {
    "teacher": "teacher (DDIM)",
    "sfd": "SFD, one stage (from the teacher)",
    "sfd_two_stage": "SFD, two-stage (from the distilled generator)",
    "distill": "distillation without forgetting",
    "esd": "ESD (fine-tuned teacher)",
    "salun": "SalUn (fine-tuned teacher, data-free)",
    "retrain": "Retrain on the remain classes (reference)",
}


@dataclass
class Fitted:
    """A trained method, ready for evaluation.

    Attributes:
        key: the method's key.
        unlearned: what to sample.
        iterations: training iterations.
        train_seconds: training wall time (curve evaluations left out; recorded at build time
            for cached pieces).
        curve: {iteration, seconds, ua, remain_accuracy} points (empty: not traced).
        cached: whether the trained network came from the cache.
        extra: method-specific facts (stage 1 of the two-stage run, settings).
        raw: for SFD with an EMA, the raw generator beside the shipped EMA (None otherwise).
        raw_curve: its forgetting curve, same noise and clock (empty: not traced).
    """

    key: str
    unlearned: Unlearned
    iterations: int
    train_seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    raw: Unlearned | None = None
    raw_curve: list[dict[str, float]] = field(default_factory=list)


def curve_every(settings: ClassRunSettings, iterations: int, under_rule: bool = False) -> int:
    """The forgetting curve's interval: `--curve-every`; else, for SFD under the completion rule,
    the rule's probe interval (the rule probes at the curve's points; `max_steps` is only its
    cap); else 20 points over the `iterations` of the run."""
    if settings.curve_every:
        return settings.curve_every
    return PROBE_EVERY if under_rule else max(1, iterations // 20)


@dataclass
class Run:
    """What every method of one harness run shares."""

    settings: ClassRunSettings
    workspace: Workspace
    baselines: dict[str, dict[str, Any]]
    logs: Path
    accelerator: str = "cpu"
    stage1: StageOne | None = None

    def curve(
        self, iterations: int, raw: bool = False, under_rule: bool = False
    ) -> TimedForgettingCurve:
        """A fresh forgetting curve at the run's interval (`curve_every`); `raw`: SFD's raw
        generator beside its EMA too, and the remain FID of one-step models."""
        settings = self.settings
        assert self.workspace.classifier is not None
        every = curve_every(settings, iterations, under_rule)
        return TimedForgettingCurve(
            self.workspace.classifier,
            self.workspace.data.num_classes,
            [settings.forget],
            every,
            settings.curve_per_class,
            settings.ddim_steps,
            settings.seed,
            settings.curve_remain_per_class,
            raw,
            self.workspace.real_remain([settings.forget]) if raw else None,
        )

    @property
    def teacher_dir(self) -> str:
        assert self.workspace.teacher_dir is not None
        return str(self.workspace.teacher_dir)

    def stage_one(self) -> StageOne:
        """Stage 1 (distillation, forget weights 0): cached by content hash, built once per run."""
        if self.stage1 is None:
            args = self.settings.sfd_command_line(self.teacher_dir, "stage1")
            iterations = _iterations(args)
            curve = self.curve(iterations)
            self.stage1 = stage_one(
                self.workspace.cache,
                Path(self.teacher_dir).name,
                args,
                curve,
                self.logs / "stage1",
                self.settings.progress,
                self.settings.seed,
            )
        return self.stage1


class Method(Protocol):
    """A forgetting method of the harness: fits on the run's teacher, returns what to sample."""

    key: str

    def fit(self, run: Run) -> Fitted: ...


class SFDMethod:
    """SFD from the teacher in one stage (`two_stage=False`) or from the stage-1 networks."""

    def __init__(self, two_stage: bool) -> None:
        self.two_stage = two_stage
        self.key = "sfd_two_stage" if two_stage else "sfd"

    def fit(self, run: Run) -> Fitted:
        stage = "stage2" if self.two_stage else "sfd"
        args = run.settings.sfd_command_line(run.teacher_dir, stage)
        extra: dict[str, Any] = {}
        if self.two_stage:
            stage1 = run.stage_one()  # networks, or adapters of the teacher (shared base)
            args += stage1.stage_two_arguments()  # the teacher stays the original
            extra = {
                "stage1_seconds": stage1.seconds,
                "stage1_iterations": stage1.iterations,
                "stage1_cached": stage1.cached,
                "stage1_folder": str(stage1.folder),
            }
        rule_on = run.settings.until_forgotten
        curve = run.curve(_iterations(args), raw=True, under_rule=rule_on)  # raw beside the EMA
        callbacks: list[pl.Callback] = [curve]
        if rule_on:
            rule = until_forgotten(
                curve, run.settings.average_after, override_floor=run.settings.override_floor
            )
            callbacks.append(rule)
        module, seconds, _ = train_sfd(
            args, callbacks, run.logs / self.key, run.settings.progress, run.settings.seed
        )
        if run.settings.until_forgotten:
            extra["completion"] = rule.summary()
        extra["ema"] = {k: module.hparams[k] for k in ("ema_decay", "ema_power")}
        extra["module"] = module  # for tests and exports; dropped from the report
        return Fitted(
            self.key,
            unlearned(module),
            int(module.global_step),  # fewer than max_steps when the completion rule stopped it
            seconds - curve.evaluation_seconds,
            curve.as_dicts(),
            extra=extra,
            raw=None if raw_generator(module) is None else Unlearned(module.generator),
            raw_curve=curve.raw_dicts(),
        )


class DistillMethod:
    """Distillation without forgetting: the stage-1 generator (cached by content hash)."""

    key = "distill"

    def fit(self, run: Run) -> Fitted:
        stage1 = run.stage_one()
        generator = stage1.generator(run.teacher_dir)
        return Fitted(
            self.key,
            Unlearned(generator),
            stage1.iterations,
            stage1.seconds,
            stage1.curve,
            cached=stage1.cached,
            extra={"folder": str(stage1.folder)},
        )


class BaselineMethod:
    """A fine-tuning baseline (`ESDModule`, `SalUnModule`) on a copy of the teacher."""

    def __init__(self, key: str) -> None:
        self.key = key

    def fit(self, run: Run) -> Fitted:
        settings = dict(run.baselines[self.key])
        max_steps = settings.pop("max_steps")
        conditions = ClassConditions(run.settings.forget, run.settings.override)
        module = BASELINES[self.key](
            run.workspace.teacher(),
            conditions,
            **settings,
            seed=run.settings.seed,
            steps_per_epoch=max_steps,
        )
        curve = run.curve(max_steps)
        pl.seed_everything(run.settings.seed, verbose=False)
        seconds = fit_module(module, max_steps, run.logs / self.key, run.settings.progress, [curve])
        return Fitted(
            self.key,
            unlearned(module),
            max_steps,
            seconds - curve.evaluation_seconds,
            curve.as_dicts(),
            extra={"settings": {"max_steps": max_steps, **settings}, "module": module},
        )


class RetrainMethod:
    """The teacher's recipe trained on the remain classes only (cached like the teacher)."""

    key = "retrain"

    def fit(self, run: Run) -> Fitted:
        s = run.settings
        recipe = teacher_recipe(s.seed, s.teacher_steps, s.teacher_channels)
        remain = [c for c in range(run.workspace.data.num_classes) if c != s.forget]
        folder, cached, description, seconds = build_teacher(
            run.workspace, recipe, run.accelerator, s.progress, classes=remain
        )
        return Fitted(
            self.key,
            Unlearned(PretrainedVPTeacher(str(folder))),
            description["max_steps"],
            seconds,
            cached=cached,
            extra={"folder": str(folder), "classes": remain},
        )


METHODS: dict[str, Method] = {
    "sfd": SFDMethod(two_stage=False),
    "sfd_two_stage": SFDMethod(two_stage=True),
    "distill": DistillMethod(),
    **{key: BaselineMethod(key) for key in BASELINES},  # the fine-tuning baselines' registry
    "retrain": RetrainMethod(),
}


def _iterations(args: list[str]) -> int:
    return parse_fit_config(args, one_line_errors=True).trainer.max_steps
