"""The settings of `sfd demo` (and, extended, of `sfd compare`) and their up-front checks.

The SFD settings themselves are an `sfd fit` configuration: the packaged preset `sfd_digits.yaml`
beside this module plus any `--model.*` / `--trainer.*` overrides, parsed by the same LightningCLI
parser as `sfd fit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from sfd.apps.data.images import DIGITS
from sfd.apps.teachers.checks import check_channels
from sfd.errors import SFDConfigError, check_number
from sfd.images import LabelledImages
from sfd.training.cli import parse_fit_config

SFD_PRESET = "sfd_digits.yaml"  # beside this module (demo and compare): SFD, and stage 2 of the two-stage path
STAGE1_PRESET = "sfd_digits_stage1.yaml"  # composed after it for stage 1 (distillation)


def default_sfd_config() -> Path:
    """The packaged preset of the demo's SFD settings."""
    return Path(str(resources.files("sfd.apps.harness") / SFD_PRESET))


def default_stage1_config() -> Path:
    """The packaged overlay that turns the SFD preset into stage 1 (distillation, no forgetting)."""
    return Path(str(resources.files("sfd.apps.harness") / STAGE1_PRESET))


@dataclass
class ClassRunSettings:
    """Everything one demo run depends on."""

    output_dir: Path = Path("demo-output")
    data: str = DIGITS
    forget: int = 0
    override: int = 1
    seed: int = 0
    heldout_fraction: float = 0.2
    teacher_cache: Path | None = None
    teacher_steps: int | None = None
    teacher_channels: tuple[int, ...] | None = None
    classifier_steps: int | None = None
    sfd_config: Path | None = None
    sfd_args: list[str] = field(default_factory=list)
    baseline_iterations: int | None = None
    curve_every: int | None = None
    curve_per_class: int = 32
    curve_remain_per_class: int = 8
    eval_per_class: int = 200
    ddim_steps: int = 50
    throughput_batch: int = 64
    throughput_repeats: int = 3
    time_full_schedule: bool = True
    grid_per_class: int = 10
    threads: int | None = None
    progress: bool = True

    def sfd_command_line(
        self, teacher_dir: str = "set-by-sfd-demo", stage: str = "sfd"
    ) -> list[str]:
        """The `sfd fit`-style arguments of one SFD run: preset, user overrides, demo settings.

        The demo owns the teacher, the forget/override classes and the seed. `stage="sfd"` is
        SFD itself (also stage 2 of the two-stage path, which adds the stage-1 networks).
        `stage="stage1"` is distillation without forgetting, the first stage: the packaged
        preset plus its stage-1 overlay (or the user's `sfd_config` alone), then the user's
        overrides, both forget weights 0 and `baseline_iterations` if given.
        """
        if stage not in ("sfd", "stage1"):
            raise ValueError(f"unknown stage {stage!r}")
        conditions = "--model.conditions.init_args."
        args = ["-c", str(self.sfd_config or default_sfd_config())]
        if stage == "stage1" and self.sfd_config is None:
            args += ["-c", str(default_stage1_config())]
        args += self.sfd_args
        args += ["--model.teacher.init_args.pretrained_model_name_or_path", teacher_dir]
        args += [
            f"{conditions}forget",
            str(self.forget),
            f"{conditions}override",
            str(self.override),
        ]
        args += ["--model.seed", str(self.seed)]
        # The harness seeds every phase itself (`pl.seed_everything(seed, verbose=False)`); a
        # LightningCLI seed would also print "Seed set to ..." beside a one-line error.
        args += ["--seed_everything", "false"]
        if stage == "stage1":
            args += ["--model.lambda_sg_forget", "0", "--model.lambda_g_forget", "0"]
            if self.baseline_iterations is not None:
                args += ["--trainer.max_steps", str(self.baseline_iterations)]
        return args


def check_settings(settings: ClassRunSettings, data: LabelledImages) -> Any:
    """Raise `SFDConfigError` for a bad class, count or path before anything is written.

    Returns:
        the parsed SFD configuration (jsonargparse namespace).
    """
    sfd = parse_fit_config(settings.sfd_command_line(), one_line_errors=True)
    stage1 = parse_fit_config(settings.sfd_command_line(stage="stage1"), one_line_errors=True)
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
        "--trainer.max_steps": min(sfd.trainer.max_steps, stage1.trainer.max_steps),
        "--model.batch_size": sfd.model.batch_size,
        "--curve-per-class": settings.curve_per_class,
        "--curve-remain-per-class": settings.curve_remain_per_class,
        "--ddim-steps": settings.ddim_steps,
        "--throughput-batch": settings.throughput_batch,
        "--grid-per-class": settings.grid_per_class,
    }
    for flag, value in positive.items():
        if value < 1:
            raise SFDConfigError(f"{flag} is too small (got {value}; need at least 1)")
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
    if settings.curve_every is not None and settings.curve_every < 1:
        raise SFDConfigError(f"--curve-every {settings.curve_every} must be >= 1")
    if settings.baseline_iterations is not None and settings.baseline_iterations < 1:
        raise SFDConfigError(f"--baseline-iterations {settings.baseline_iterations} must be >= 1")
    if settings.output_dir.exists() and not settings.output_dir.is_dir():
        raise SFDConfigError(f"--output-dir {str(settings.output_dir)!r} is a file, not a folder")
    return sfd
