"""What an attacker may spend, torch-free: `sfd demo-text --help` and `sfd eval-text --help` read
the defaults.

`AttackBudget` is the soft-prompt attack's (`soft_prompt`), `DiscreteAttackBudget` the discrete
prompt attack's (`discrete_prompt`), `ClassEmbeddingBudget` the class-embedding attack's
(`class_embedding`), `RevivalBudget` the revival fine-tune's (`revival`). Every field is checked
when the budget is made, so a bad setting is refused before a model is loaded. Budgets are made
with keywords.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from sfd.errors import SFDConfigError

# Which classifier an attack's objective differentiates (`sfd.eval.attack_outcome`): the judge
# itself ("white-box") or the attacker classifier ("transfer"); the CLI's --attack-objective
# choices name one or both.
OBJECTIVE_CHOICES = {
    "white-box": ("white-box",),
    "transfer": ("transfer",),
    "both": ("white-box", "transfer"),
}
ATTACKER_SEED_OFFSET = 1  # the attacker classifier trains with the judge's seed + this


def attack_objectives(choice: str) -> tuple[str, ...]:
    """The objectives an --attack-objective choice runs (checked)."""
    if choice not in OBJECTIVE_CHOICES:
        raise SFDConfigError(
            f"--attack-objective {choice!r}; choose from {', '.join(OBJECTIVE_CHOICES)}"
        )
    return OBJECTIVE_CHOICES[choice]


def checked_objectives(choice: str, attacker_given: bool) -> tuple[str, ...]:
    """`attack_objectives`, and a refusal of an attacker classifier folder
    (--attacker-classifier) that the objective would never read (white-box)."""
    objectives = attack_objectives(choice)
    if attacker_given and "transfer" not in objectives:
        raise SFDConfigError(
            f"--attacker-classifier is read only by a transfer attack; --attack-objective {choice} "
            "has none (give --attack-objective transfer or both, or leave the folder out)"
        )
    return objectives


def suite_key(name: str, objective: str) -> str:
    """An attack's key in a suite's results: its name (white-box), or name-transfer."""
    return name if objective == "white-box" else f"{name}-{objective}"


def _check_counts(budget: object, label: str, names: tuple[str, ...]) -> None:
    """Refuse a count below 1 (or a non-integer) among the budget's fields `names`."""
    for name in names:
        value = getattr(budget, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise SFDConfigError(f"{label} {name}={value!r} must be an integer of at least 1")


def _check_lr(label: str, lr: float) -> None:
    if not lr > 0:
        raise SFDConfigError(f"{label} lr={lr} must be positive")


@dataclass(kw_only=True)
class SearchBudget:
    """What every attack search spends besides its own knobs.

    Attributes:
        steps: optimisation steps per restart.
        batch_size: noise samples per step (fresh each step).
        eval_samples: held-out noise samples the success rate is measured on.
        seed: seed of the initial point and the training / evaluation noise.
        restarts: independent starts; the one with the lowest attack loss on a selection noise
            batch (not the evaluation noise) is reported.
    """

    LABEL: ClassVar[str] = "attack"  # how a bad value is named
    COUNTS: ClassVar[tuple[str, ...]] = ()  # the subclass's own integer fields, each at least 1

    steps: int = 200
    batch_size: int = 16
    eval_samples: int = 64
    seed: int = 0
    restarts: int = 3

    def __post_init__(self) -> None:
        shared = ("steps", "batch_size", "eval_samples", "restarts")
        _check_counts(self, self.LABEL, (*self.COUNTS, *shared))
        if hasattr(self, "lr"):
            _check_lr(self.LABEL, self.lr)


@dataclass(kw_only=True)
class AttackBudget(SearchBudget):
    """What a soft-prompt attacker may spend (defaults: 16 tokens, 200 steps, 3 restarts).

    Attributes:
        num_tokens: learned token embeddings appended to the prompt.
        lr: Adam learning rate (the embeddings start at random vocabulary tokens).
    """

    COUNTS = ("num_tokens",)

    num_tokens: int = 16
    lr: float = 0.05


@dataclass(kw_only=True)
class DiscreteAttackBudget(SearchBudget):
    """What a discrete prompt attacker (real vocabulary tokens only) may spend.

    Attributes:
        num_tokens: vocabulary tokens appended to the prompt (whole words of the tokenizer).
        top_k: candidate tokens per position, ranked by the one-hot gradient.
        candidates: substitutions (position, one of its top-k tokens) evaluated per step; the
            best replaces the current prompt when it lowers the attack loss. Each step changes
            at most one token.
    """

    LABEL = "discrete attack"
    COUNTS = ("num_tokens", "top_k", "candidates")

    num_tokens: int = 16
    top_k: int = 32
    candidates: int = 8
    batch_size: int = 8


@dataclass(kw_only=True)
class ClassEmbeddingBudget(SearchBudget):
    """What a class-embedding attacker (class-conditional models) may spend; the first restart
    starts from the forgotten class's own embedding, the others from other classes' embeddings.

    Attributes:
        lr: Adam learning rate.
    """

    LABEL = "class-embedding attack"

    lr: float = 0.05


@dataclass(kw_only=True)
class RevivalBudget:
    """The revival fine-tune: k real images of the forgotten concept, `steps` Adam steps.

    Attributes:
        steps: fine-tuning steps N; UA is measured after 0, N/4, N/2 and N.
        images: k, real images of the forgotten class (from the held-out split).
        lr: Adam learning rate; the default is the generator learning rate of the text presets
            (1e-4), what a user fine-tuning these small UNets picks (DreamBooth's 5e-6 is for
            860M-parameter Stable Diffusion UNets).
        batch_size: images per step (drawn with replacement from the k).
        seed: seed of the image choice, the draws of noise and σ, and the UA noise.
    """

    steps: int = 40
    images: int = 8
    lr: float = 1e-4
    batch_size: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        _check_counts(self, "revival", ("steps", "images", "batch_size"))
        _check_lr("revival", self.lr)
