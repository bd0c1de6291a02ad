"""The settings of one class-conditional run (`sfd demo`; `sfd compare` extends them), torch-free:
the command lines' help reads their defaults. Their up-front checks are in `settings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from sfd.apps.data.names import DIGITS
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import ClassEmbeddingBudget, RevivalBudget
from sfd.training.config_files import check_config_files, lone_adversarial_setting

SFD_PRESET = "sfd_digits.yaml"  # beside this module (demo and compare): SFD from the teacher
STAGE1_PRESET = "sfd_digits_stage1.yaml"  # composed after it for stage 1 (distillation)
STAGE2_PRESET = "sfd_digits_stage2.yaml"  # composed after it for stage 2 (forgetting)
# composed after the stage-2 overlay when the options turn the shared base on (`shared_base_on`)
STAGE2_SHARED_BASE_PRESET = "sfd_digits_stage2_shared_base.yaml"
# `--adversarial`: adversarial SFD with the defaults of `sfd.core.adversarial_settings.AdversarialSettings`
# (SFD itself only; stage 1 does not forget). `--model.adversarial.*` options refine it.
ADVERSARIAL_ARGS = ["--model.adversarial", "{}"]
# stage 1 does not forget: both forget weights 0 and no adversarial SFD, even where the user's
# --sfd-config holds a `model.adversarial` block (its cache key stays plain stage 1's)
STAGE1_ARGS = ["--model.lambda_sg_forget", "0", "--model.lambda_g_forget", "0"]
STAGE1_ARGS += ["--model.adversarial", "null"]
START_FROM = "--model.adapters.start_from"  # the demos' own: stage 2 from the stage-1 adapters


def check_adversarial_options(
    args: list[str], adversarial: bool, sfd_config: Path | None = None
) -> None:
    """Refuse `--model.adversarial.*` options while adversarial SFD is off: they refine it, and
    the demo turns it on only with `--adversarial` or a user's `--sfd-config` (or an earlier
    option) with a `model.adversarial` block that is not null (`lone_adversarial_setting`; its
    report names the method the parsed settings ran). `--model.adversarial null` is no setting.
    """
    before = [] if sfd_config is None else ["-c", str(sfd_config)]
    check_config_files(before + args)
    lone = lone_adversarial_setting(before + args, on=adversarial)
    if lone is not None:
        raise SFDConfigError(
            f"{lone}: a setting of adversarial SFD, which is off; add "
            "--adversarial to train adversarial SFD, or leave the option out"
        )


def stage1_overrides(args: list[str]) -> list[str]:
    """The user's `sfd fit` overrides for stage 1: all but `--model.adversarial*` (with their
    values). Stage 1 does not forget, so they would change nothing there but its cache key.

    Raises:
        SFDConfigError: for `--model.adapters.start_from`, which the demos set themselves (a
            shared base's stage 2 starts from its stage-1 adapters).
    """
    if any(arg.startswith(START_FROM) for arg in args):
        raise SFDConfigError(
            f"{START_FROM}: the demo sets it (a shared base's stage 2 starts from the stage-1 "
            "adapters, stage 1 from the teacher); leave it out"
        )
    kept, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith("--model.adversarial"):
            skip = "=" not in arg
        else:
            kept.append(arg)
    return kept


def shared_base_on(args: list[str]) -> bool:
    """Whether `sfd fit` options turn the shared base on: any `--model.adapters.*` option, or
    `--model.adapters` with a value other than null (the last such option decides)."""
    on = False
    for index, arg in enumerate(args):
        key, given, value = arg.partition("=")
        if key == "--model.adapters":
            if not given:
                value = args[index + 1] if index + 1 < len(args) else ""
            on = value.strip().lower() not in ("", "null", "none")
        elif key.startswith("--model.adapters."):
            on = True
    return on


def default_sfd_config() -> Path:
    """The packaged preset of the demo's SFD settings."""
    return Path(str(resources.files("sfd.apps.harness") / SFD_PRESET))


def default_stage1_config() -> Path:
    """The packaged overlay that turns the SFD preset into stage 1 (distillation, no forgetting)."""
    return Path(str(resources.files("sfd.apps.harness") / STAGE1_PRESET))


def default_stage2_config() -> Path:
    """The packaged overlay that turns the SFD preset into stage 2 (forgetting from stage 1)."""
    return Path(str(resources.files("sfd.apps.harness") / STAGE2_PRESET))


def default_stage2_shared_base_config() -> Path:
    """The packaged overlay of stage 2 in the shared-base mode (after `default_stage2_config`)."""
    return Path(str(resources.files("sfd.apps.harness") / STAGE2_SHARED_BASE_PRESET))


@dataclass
class ClassRunSettings:
    """Everything one demo run depends on."""

    output_dir: Path = Path("demo-output")
    data: str = DIGITS
    forget: int | str = 0  # an index, or a class name (`start_run` resolves it)
    override: int | str = 1
    seed: int = 0
    heldout_fraction: float = 0.2
    teacher_cache: Path | None = None
    teacher_steps: int | None = None
    teacher_channels: tuple[int, ...] | None = None
    classifier_steps: int | None = None
    sfd_config: Path | None = None
    sfd_args: list[str] = field(default_factory=list)
    adversarial: bool = False  # adversarial SFD (docs/method.md §9), its default settings
    baseline_iterations: int | None = None
    curve_every: int | None = None
    until_forgotten: bool = True  # the completion rule; False: the fixed max_steps
    # EMA after forgetting (docs/method.md §4): iterations the average restarted at the first
    # forgotten probe holds at the rule's stop (at least one probe interval); 0: off
    average_after: int = 150
    # the rule counts a probe as forgotten at most its threshold above the judged forget rate of the
    # generator's own override samples (docs/method.md §8); False: the bare threshold
    override_floor: bool = True
    curve_per_class: int = 32
    curve_remain_per_class: int = 8
    eval_per_class: int = 200
    ddim_steps: int = 50
    throughput_batch: int = 64
    throughput_repeats: int = 3
    time_full_schedule: bool = True
    grid_per_class: int = 10
    attack: ClassEmbeddingBudget | None = None  # `sfd demo`: the class-embedding attack
    revival: RevivalBudget | None = None  # `sfd demo`: the revival test (None: not run)
    attack_ddim_steps: int = 4
    # `OBJECTIVE_CHOICES`: transfer (or both) trains the attacker classifier once (cached)
    attack_objective: str = "white-box"
    threads: int | None = None
    progress: bool = True

    def sfd_command_line(
        self, teacher_dir: str = "set-by-sfd-demo", stage: str = "sfd"
    ) -> list[str]:
        """The `sfd fit`-style arguments of one SFD run: preset, user overrides, demo settings.

        The demo owns the teacher, the forget/override classes and the seed. `stage="sfd"` is
        SFD itself, from the teacher. `stage="stage1"` is distillation without forgetting, the
        first stage of the two-stage path: the packaged preset plus its stage-1 overlay (or the
        user's `sfd_config` alone), then the user's overrides, both forget weights 0, no adversarial SFD and
        `baseline_iterations` if given; it trains what stage 2 trains: full copies, or with
        `--model.adapters.*` adapters of the frozen teacher. `stage="stage2"` is SFD from the
        stage-1 networks or adapters (the caller adds them): the packaged preset plus its stage-2
        overlay (or `sfd_config` alone), in the shared-base mode (`shared_base_on`) then its
        shared-base overlay, then the user's overrides.
        """
        if stage not in ("sfd", "stage1", "stage2"):
            raise ValueError(f"unknown stage {stage!r}")
        conditions = "--model.conditions.init_args."
        args = ["-c", str(self.sfd_config or default_sfd_config())]
        if stage == "stage1" and self.sfd_config is None:
            args += ["-c", str(default_stage1_config())]
        if stage == "stage2" and self.sfd_config is None:
            args += ["-c", str(default_stage2_config())]
            if shared_base_on(self.sfd_args):
                args += ["-c", str(default_stage2_shared_base_config())]
        if self.adversarial and stage != "stage1":
            args += ADVERSARIAL_ARGS
        if stage == "sfd":
            args += self.sfd_args
        else:  # stage 1 leaves out the adversarial options (it does not forget), stage 2 not
            user = stage1_overrides(self.sfd_args)  # (also refuses the demo's own options)
            args += user if stage == "stage1" else self.sfd_args
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
            args += STAGE1_ARGS
            if self.baseline_iterations is not None:
                args += ["--trainer.max_steps", str(self.baseline_iterations)]
        return args
