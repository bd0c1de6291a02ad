"""What a soft-prompt attacker may spend (`soft_prompt`), torch-free: `sfd demo-text --help` reads
its defaults."""

from __future__ import annotations

from dataclasses import dataclass

from sfd.errors import SFDConfigError


@dataclass
class AttackBudget:
    """What the attacker may spend.

    Attributes:
        num_tokens: learned token embeddings appended to the prompt.
        steps: Adam steps.
        lr: Adam learning rate (the embeddings start at random vocabulary tokens).
        batch_size: noise samples per step (fresh each step).
        eval_samples: held-out noise samples the success rate is measured on.
        seed: seed of the initial tokens and the training / evaluation noise.
    """

    num_tokens: int = 4
    steps: int = 40
    lr: float = 0.05
    batch_size: int = 16
    eval_samples: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_tokens", "steps", "batch_size", "eval_samples"):
            if getattr(self, name) < 1:
                raise SFDConfigError(f"attack {name}={getattr(self, name)} must be at least 1")
        if not self.lr > 0:
            raise SFDConfigError(f"attack lr={self.lr} must be positive")
