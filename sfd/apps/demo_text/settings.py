"""The settings of `sfd demo-text` and its packaged SFD presets, torch-free: the command line's
help reads their defaults. Their up-front checks are `run.check_settings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfd.apps.data.names import DIGITS, FASHION
from sfd.apps.harness.class_run import ADVERSARIAL_ARGS, STAGE1_ARGS, stage1_overrides
from sfd.eval.attack_budget import AttackBudget, DiscreteAttackBudget, RevivalBudget

if TYPE_CHECKING:
    from sfd.apps.demo_text.prompts import DemoPrompts

PRESETS = {DIGITS: "sfd_text_digits.yaml", FASHION: "sfd_text_fashion.yaml"}
STAGE1_PRESETS = {DIGITS: "sfd_text_digits_stage1.yaml", FASHION: "sfd_text_fashion_stage1.yaml"}
# The flow-matching (SD3 transformer) teacher's presets; stage 1 composes the same overlays.
FLOW_PRESETS = {DIGITS: "sfd_text_digits_sd3.yaml", FASHION: "sfd_text_fashion_sd3.yaml"}


def default_sfd_config(data: str, stage: str = "sfd", family: str = "unet") -> Path:
    """The packaged SFD preset of a data set and teacher family, or its stage-1 overlay
    (`stage="stage1"`, composed after the preset)."""
    key = DIGITS if data == DIGITS else FASHION
    if stage == "stage1":
        name = STAGE1_PRESETS[key]
    else:
        name = (FLOW_PRESETS if family == "sd3" else PRESETS)[key]
    return Path(str(resources.files("sfd.apps.demo_text") / name))


TEACHER_ATTACKS = ("soft",)  # the teacher (4-step DDIM, 4x a generator's cost) is the reference
# The teacher has forgotten nothing, so its attack row is a reference that no target reads; one
# restart of the soft prompt (with guidance, 8 network calls a sample against a generator's 1, it
# was about 4/5 of the suite's time at 3). The generators, whose rows the targets compare, keep
# the full budget (`TextDemoSettings.teacher_attack_restarts`).
TEACHER_ATTACK_RESTARTS = 1


def default_attacks() -> dict[str, Any]:
    """The demo's attack suite: both prompt attacks at their strong default budgets (16 tokens,
    200 steps, 3 restarts), so plain SFD's weakness shows."""
    return {"soft": AttackBudget(), "discrete": DiscreteAttackBudget()}


@dataclass
class TextDemoSettings:
    """Everything one text-demo run depends on."""

    output_dir: Path = Path("demo-text-output")
    data: str = DIGITS
    family: str = "unet"  # the teacher: "unet" (DDPM UNet) or "sd3" (flow-matching transformer)
    forget: str | None = None  # class index or name; default per data set
    override: str | None = None
    neighbours: list[int] | None = None  # default: the 2 nearest classes in classifier features
    paraphrases: Path | None = None  # "{name}" template file; default the shipped set
    seed: int = 0
    heldout_fraction: float = 0.2
    teacher_cache: Path | None = None
    teacher_steps: int | None = None
    teacher_channels: tuple[int, ...] | None = None
    vae_steps: int | None = None
    text_encoder: str | None = None
    classifier_steps: int | None = None
    sfd_config: Path | None = None
    sfd_args: list[str] = field(default_factory=list)
    adversarial: bool = False  # adversarial SFD (docs/method.md §9), its default settings
    baseline_iterations: int | None = None
    curve_every: int | None = None
    until_forgotten: bool = True  # the completion rule; False: the fixed max_steps
    # EMA after forgetting (docs/method.md §4), as in `sfd demo`: iterations the average restarted
    # at the first forgotten probe holds at the rule's stop (at least one probe interval); 0: off
    average_after: int = 150
    curve_per_class: int = 16
    forget_images: int = 200
    remain_per_class: int = 100
    ddim_steps: int | None = None  # the teacher's sampler steps; None: `teacher_sampler_steps`
    attacks: dict[str, Any] = field(default_factory=default_attacks)  # name -> budget
    attack_prompts: int = 1
    attack_ddim_steps: int = 4
    teacher_attack_restarts: int = TEACHER_ATTACK_RESTARTS  # at most this many on the teacher
    # `OBJECTIVE_CHOICES`: transfer (or both) trains the attacker classifier once (cached)
    attack_objective: str = "white-box"
    revival: RevivalBudget | None = None
    grid_per_prompt: int = 8
    threads: int | None = None
    progress: bool = True

    def teacher_sampler_steps(self) -> int:
        """The teacher's sampler steps in the evaluation: --ddim-steps, else the count its users
        run: 25 DDIM steps (UNet), 28 flow Euler steps (SD3, StableDiffusion3Pipeline's default)."""
        if self.ddim_steps is not None:
            return self.ddim_steps
        return 28 if self.family == "sd3" else 25

    def sfd_command_line(
        self,
        teacher_dir: str = "set-by-sfd-demo-text",
        prompts: DemoPrompts | None = None,
        stage: str = "sfd",
    ) -> list[str]:
        """The `sfd fit`-style arguments of one SFD run: preset, user overrides, demo settings.

        `stage="sfd"` is SFD itself (also stage 2 of the two-stage path, which adds the stage-1
        networks). `stage="stage1"` is distillation without forgetting: the packaged preset
        plus its stage-1 overlay (or the user's `sfd_config` alone), the user's overrides, every
        class's captions as the prompts to keep, both forget weights 0, no adversarial SFD and
        `baseline_iterations` if given.
        """
        if stage not in ("sfd", "stage1"):
            raise ValueError(f"unknown stage {stage!r}")
        init = "--model.conditions.init_args."
        args = ["-c", str(self.sfd_config or default_sfd_config(self.data, family=self.family))]
        if stage == "stage1" and self.sfd_config is None:
            args += ["-c", str(default_sfd_config(self.data, "stage1"))]
        if self.adversarial and stage == "sfd":
            args += ADVERSARIAL_ARGS
        args += self.sfd_args if stage == "sfd" else stage1_overrides(self.sfd_args)
        args += ["--model.teacher.init_args.pretrained_model_name_or_path", teacher_dir]
        if prompts is not None:
            import json

            keep = prompts.files["distill_prompts" if stage == "stage1" else "remain_prompts"]
            args += [f"{init}concepts", json.dumps(prompts.concepts)]
            args += [f"{init}forget_prompts", str(prompts.files["forget_prompts"])]
            args += [f"{init}remain_prompts", str(keep)]
        # The demo seeds every phase itself (`pl.seed_everything(seed, verbose=False)`).
        args += ["--model.seed", str(self.seed), "--seed_everything", "false"]
        if stage == "stage1":
            args += STAGE1_ARGS
            if self.baseline_iterations is not None:
                args += ["--trainer.max_steps", str(self.baseline_iterations)]
        return args
