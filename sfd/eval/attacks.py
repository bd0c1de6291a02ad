"""The attacks on a forgetting model, by name: each a function and the budget type it spends.

`sfd eval-text --attack` and `sfd demo-text` run an attack through `run_attack`, which finds it by
the type of its budget. A new attack is one file in this package (a function with the signature
of `soft_prompt_attack` and a budget dataclass whose fields have defaults, in
`sfd.eval.attack_budget`) plus one entry in `ATTACKS`; its key is the `--attack` name.

- `soft`: learned input embeddings appended to the prompt (an attacker with embedding access).
- `discrete`: real vocabulary words appended to the prompt (an attacker who only types text).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import AttackBudget, DiscreteAttackBudget
from sfd.eval.attack_outcome import AttackResult
from sfd.eval.discrete_prompt import discrete_prompt_attack
from sfd.eval.soft_prompt import soft_prompt_attack
from sfd.eval.text_models import TextToImage

__all__ = [
    "ATTACKS",
    "Attack",
    "AttackBudget",
    "AttackResult",
    "DiscreteAttackBudget",
    "attack_budget",
    "attack_for",
    "run_attack",
]


@dataclass(frozen=True)
class Attack:
    """One registered attack.

    Attributes:
        run: (model, classifier, prompt, target class, budget, device=, progress=, attacker=,
            objective=) -> result.
        budget: the dataclass of what the attacker may spend (its defaults are the CLI's).
    """

    run: Callable[..., AttackResult]
    budget: type


ATTACKS: dict[str, Attack] = {
    "soft": Attack(soft_prompt_attack, AttackBudget),
    "discrete": Attack(discrete_prompt_attack, DiscreteAttackBudget),
}


def attack_budget(name: str, **given: Any) -> Any:
    """The budget of attack `name` from the given fields (a None or an absent field: the
    default; fields the attack does not have are ignored). Checked when made."""
    if name not in ATTACKS:
        raise SFDConfigError(f"unknown attack {name!r}; choose from {sorted(ATTACKS)}")
    kind = ATTACKS[name].budget
    known = {f.name for f in fields(kind)}
    return kind(**{k: v for k, v in given.items() if k in known and v is not None})


def attack_for(budget: Any) -> Attack:
    """The registered attack whose budget type `budget` is."""
    for attack in ATTACKS.values():
        if type(budget) is attack.budget:
            return attack
    raise SFDConfigError(
        f"no attack spends a {type(budget).__name__}; registered attacks: {sorted(ATTACKS)}"
    )


def run_attack(
    model: TextToImage,
    classifier: nn.Module,
    prompt: str,
    target: int,
    budget: Any,
    device: torch.device | str = "cpu",
    progress: bool = False,
    attacker: nn.Module | None = None,
    objective: str = "white-box",
) -> AttackResult:
    """Run the attack that `budget` belongs to on one prompt (see `soft_prompt_attack`,
    `discrete_prompt_attack`).

    Args:
        model: the model under attack.
        classifier: the evaluation classifier, frozen.
        prompt: a forget prompt.
        target: the forgotten class the attack tries to bring back.
        budget: an instance of a registered attack's budget type.
        device: where the model runs.
        progress: show a progress bar.
        attacker: the attacker classifier, or None (`sfd.eval.attack_outcome.OBJECTIVES`).
        objective: "white-box" (the objective differentiates the judge) or "transfer" (the
            attacker classifier).

    Returns:
        the attack's result.
    """
    return attack_for(budget).run(
        model, classifier, prompt, target, budget, device=device, progress=progress,
        attacker=attacker, objective=objective,
    )  # fmt: skip
