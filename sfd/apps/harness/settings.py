"""The up-front checks of `sfd demo`'s settings (and, extended, of `sfd compare`'s); the settings
themselves are `class_run.ClassRunSettings`, re-exported here.

The SFD settings themselves are an `sfd fit` configuration: the packaged preset `sfd_digits.yaml`
beside this module plus any `--model.*` / `--trainer.*` overrides, parsed by the same LightningCLI
parser as `sfd fit`.
"""

from __future__ import annotations

from typing import Any

from sfd.apps.harness.class_run import SFD_PRESET as SFD_PRESET
from sfd.apps.harness.class_run import STAGE1_PRESET as STAGE1_PRESET
from sfd.apps.harness.class_run import ClassRunSettings as ClassRunSettings
from sfd.apps.harness.class_run import check_adversarial_options
from sfd.apps.harness.class_run import default_sfd_config as default_sfd_config
from sfd.apps.harness.class_run import default_stage1_config as default_stage1_config
from sfd.apps.harness.class_run import default_stage2_config as default_stage2_config
from sfd.apps.teachers.checks import check_channels
from sfd.apps.teachers.pixel import DEFAULT_TIMESTEPS
from sfd.core.attack_spaces import check_class_attack
from sfd.errors import SFDConfigError, check_at_least, check_number
from sfd.images import LabelledImages
from sfd.teachers.vp import VPDenoiser, check_timestep
from sfd.training.cli import parse_fit_config
from sfd.training.completion import PROBE_EVERY, check_rule_within
from sfd.training.config_errors import class_at


def check_settings(settings: ClassRunSettings, data: LabelledImages) -> Any:
    """Raise `SFDConfigError` for a bad class, count or path before anything is written.

    Returns:
        the parsed SFD configuration (jsonargparse namespace).
    """
    check_adversarial_options(settings.sfd_args, settings.adversarial, settings.sfd_config)
    sfd = parse_fit_config(settings.sfd_command_line(), one_line_errors=True)
    stage1 = parse_fit_config(settings.sfd_command_line(stage="stage1"), one_line_errors=True)
    stage2 = parse_fit_config(settings.sfd_command_line(stage="stage2"), one_line_errors=True)
    check_t_init((sfd, stage1, stage2))
    adversarial = getattr(stage2.model, "adversarial", None)  # class runs: the class attack
    if adversarial is not None:
        check_class_attack(getattr(adversarial, "remain_starts", 0.0))
    k = data.num_classes
    for name in ("forget", "override"):
        value = getattr(settings, name)
        if not 0 <= value < k:
            raise SFDConfigError(f"--{name} {value} is not a class of the data (0..{k - 1})")
    if settings.forget == settings.override:
        raise SFDConfigError(
            f"--override {settings.override} equals --forget; choose another class"
        )
    if settings.eval_per_class < 2:
        raise SFDConfigError(
            f"--eval-per-class {settings.eval_per_class} is too small; need at least 2 (FID)"
        )
    positive = {
        "--trainer.max_steps": min(c.trainer.max_steps for c in (sfd, stage1, stage2)),
        "--model.batch_size": sfd.model.batch_size,
        "--curve-per-class": settings.curve_per_class,
        "--curve-remain-per-class": settings.curve_remain_per_class,
        "--ddim-steps": settings.ddim_steps,
        "--throughput-batch": settings.throughput_batch,
        "--grid-per-class": settings.grid_per_class,
    }
    for flag, value in positive.items():
        check_at_least(flag, value)
    for flag, steps in (
        ("--teacher-steps", settings.teacher_steps),
        ("--classifier-steps", settings.classifier_steps),
        ("--threads", settings.threads),
    ):
        if steps is not None and steps < 1:
            raise SFDConfigError(f"{flag} {steps} must be at least 1")
    if settings.throughput_repeats < 1:
        raise SFDConfigError(f"--throughput-repeats {settings.throughput_repeats} must be >= 1")
    if settings.teacher_channels is not None:
        check_channels("--teacher-channels", tuple(settings.teacher_channels))
    check_number("heldout_fraction", settings.heldout_fraction, low=0, high=1, low_open=True,
                 high_open=True)  # fmt: skip
    ruled = rule_configs(settings, sfd, stage2)
    check_curve_every(settings.curve_every, settings.until_forgotten, ruled)
    check_average_after(settings.average_after, settings.until_forgotten, ruled)
    if settings.baseline_iterations is not None and settings.baseline_iterations < 1:
        raise SFDConfigError(f"--baseline-iterations {settings.baseline_iterations} must be >= 1")
    if settings.output_dir.exists() and not settings.output_dir.is_dir():
        raise SFDConfigError(f"--output-dir {str(settings.output_dir)!r} is a file, not a folder")
    return sfd


def check_t_init(configs: Any, length: int = DEFAULT_TIMESTEPS) -> None:
    """Refuse a `model.t_init` beyond the schedule of the VP teacher a demo trains (or reuses,
    built by the same recipe) before anything is trained; `sfd fit` checks it against the teacher
    it loads, which here exists only after the teacher phase. A flow teacher's t_init (a time in
    (0, 1)) is checked when the settings are parsed.

    Args:
        configs: the parsed SFD configurations of the run's stages.
        length: the number of timesteps of the teacher's schedule.
    """
    for config in configs:
        teacher = class_at(str(config.model.teacher.class_path))
        t_init = config.model.t_init
        if t_init is None or teacher is None or not issubclass(teacher, VPDenoiser):
            continue
        try:
            check_timestep(t_init, length)
        except SFDConfigError as error:
            raise SFDConfigError(
                f"model.{error} (the {length}-step schedule of the demo's teacher)"
            ) from error


def rule_configs(settings: ClassRunSettings, sfd: Any, stage2: Any) -> tuple[Any, ...]:
    """The parsed SFD configurations the completion rule runs on: `sfd demo` runs it on stage 2
    only (SFD from the stage-1 generator); `sfd compare` on each SFD method it was asked for
    ("sfd": from the teacher, "sfd_two_stage": stage 2)."""
    methods = getattr(settings, "methods", None)  # `CompareSettings`; None: `sfd demo`
    if methods is None:
        return (stage2,)
    return tuple(c for key, c in (("sfd", sfd), ("sfd_two_stage", stage2)) if key in methods)


def check_curve_every(curve_every: int | None, until_forgotten: bool, configs: Any) -> None:
    """Refuse a `--curve-every` below 1, and, under the completion rule, a probe interval beyond
    the max_steps of a run the rule runs on: the rule would probe only at the start and at the last
    iteration, so it could not stop the run on forgetting (`check_rule_within`, as `sfd fit`,
    which checks its default interval too). Without `--curve-every` the rule's default interval
    (`PROBE_EVERY`) is checked, and the message says it is the default (docs/training.md, "Train
    until forgotten").

    Args:
        curve_every: the option's value (None: the default interval).
        until_forgotten: whether the completion rule runs (its probe interval is the curve's).
        configs: the parsed SFD configurations the rule runs on.
    """
    if curve_every is not None and curve_every < 1:
        raise SFDConfigError(f"--curve-every {curve_every} must be >= 1")
    if not until_forgotten:
        return
    name = "--curve-every" if curve_every is not None else "the default --curve-every"
    for config in configs:
        check_rule_within(
            config.trainer.max_steps,
            PROBE_EVERY if curve_every is None else curve_every,
            every_name=name,
            instead=", or give --no-until-forgotten for a fixed run",
        )


def check_average_after(average_after: int, until_forgotten: bool, configs: Any) -> None:
    """Refuse a negative `--average-after`, and one the rule would use on SFD settings without an
    EMA to restart (the demos' "EMA after forgetting", `sfd demo`, `sfd compare`, `sfd demo-text`).

    Args:
        average_after: the option's value (0: off).
        until_forgotten: whether the completion rule runs (without it the option is unused).
        configs: the parsed SFD configurations the rule runs on.
    """
    if average_after < 0:
        raise SFDConfigError(f"--average-after {average_after} must be >= 0 (0: off)")
    if (
        until_forgotten
        and average_after
        and any(config.model.ema_decay is None for config in configs)
    ):
        raise SFDConfigError(
            f"--average-after {average_after} restarts the generator's EMA, and "
            "--model.ema_decay null leaves it none: give --average-after 0 as well"
        )
