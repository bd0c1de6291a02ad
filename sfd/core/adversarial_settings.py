"""The settings of adversarial SFD (docs/method.md §9) and their checks.

`AdversarialSettings` is `SFDModule(adversarial=...)`, `model.adversarial` in a configuration
(`configs/adversarial.yaml`); `check_adversarial_settings` checks a mapping of them before anything
is built (configurations, checkpoints' hyperparameters); `adversarial_rows` is how many rows a
share of a batch attacks. The attack and training that use them: `sfd.core.adversarial`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from sfd.core.judge import DEFAULT_SIGMAS
from sfd.errors import SFDConfigError, check_number


@dataclass
class AdversarialSettings:
    """The settings of adversarial SFD (`SFDModule(adversarial=...)`, `model.adversarial`).

    Attributes:
        steps: inner attack steps (Adam) per iteration, warm-started from the vectors and Adam
            moments the rows last had; 0 keeps the freshly drawn ones.
        tokens: learned soft-prompt tokens inserted into each forget prompt (text teachers).
        share: adversarial samples per device, as a share of `batch_size` (in [0, 1]; rounded
            up, so any positive share attacks at least one row).
        refresh_every: iterations between fresh draws of the whole pool (its prompts or classes,
            starting vectors, zero Adam moments).
        restart_share: share of the attacked rows drawn afresh (as at a refresh) before the inner
            steps of each iteration that does not refresh the pool, in [0, 1], rounded up: the
            rows of the block in turn, so a row lives about K/⌈share·K⌉ visits of its block (K:
            the attacked rows per device). 0 (the default): rows live until the next refresh.
        pool: the persistent pool, in multiples of the attacked rows: it holds `pool` ×
            ⌈share·batch_size⌉ rows per device, and iteration t refines and trains on block
            t mod `pool` of them (1: the same rows every iteration).
        samples: generator draws z per row in the attack objective (each with its own
            `noise_levels` (σ, ε) draws).
        sigmas: fixed noise levels of the attack objective, each taken `noise_levels` times
            with fresh ε (default: the judge's 0.4, 0.8, 1.6, where the condition decides the
            teacher's answer); None draws `noise_levels` σ from the loss's sampler instead.
        lr: the inner Adam's learning rate.
        noise_levels: (σ, ε) draws per sample (per level of `sigmas`) in the attack objective.
        weight: weight of the adversarial terms relative to the plain forget terms (λ_sg_f,
            λ_g_f).
        anchor: weight of the remain anchor relative to the plain remain terms (λ_sg_r, λ_g_r):
            each row's learned tokens also go into a remain prompt, and the generator under
            remain ⊕ tokens is distilled towards the teacher at the remain prompt (soft prompts
            only; a class attack replaces the forget label's own embedding, which no remain
            class has). 0 (the default) turns it off.
        rivals: remain concepts the attack objective and the completion rule's reading of the
            pool weigh the forget concept against, besides its override (the teacher as a
            diffusion classifier over them all, docs/method.md §9): one from each of `rivals`
            equal slices of the remain classes or prompts, drawn afresh each step (every remain
            class or prompt when there are no more than `rivals`). 0: the forget condition
            against its override only (the pairwise margin).
        posterior_weight: weigh each attacked row's unlearning term (step 2) by the teacher's
            posterior p(forget | x) of its samples at the row's last inner step (detached), so
            that rows whose samples the teacher reads as another concept are not redirected to
            the override (needs `rivals` ≥ 1 and `steps` ≥ 1). False: every row weighs 1.
        remain_starts: share of the attacked rows (per device, rounded up like `share`) whose
            learned tokens go into a remain prompt instead of a forget prompt (soft prompts
            only): the inner attack then searches tokens that make the generator draw the
            forget concept from a remain prompt (the same objective: the forget concept against
            its override and rivals), and the unlearning term sends those rows to the teacher at
            the override of the row's forget prompt, as every attacked row. The last rows of
            each device's block start from remain prompts. 0 (the default): every row starts
            from a forget prompt.
    """

    steps: int = 2
    tokens: int = 16
    share: float = 0.25
    refresh_every: int = 100
    lr: float = 0.05
    noise_levels: int = 1
    weight: float = 0.25
    anchor: float = 0.0
    pool: int = 1
    samples: int = 1
    rivals: int = 9
    sigmas: list[float] | None = field(default_factory=lambda: list(DEFAULT_SIGMAS))
    posterior_weight: bool = False
    remain_starts: float = 0.0
    restart_share: float = 0.0

    def __post_init__(self) -> None:
        check_adversarial_settings(asdict(self))
        if self.sigmas is not None:  # a list from a configuration or a checkpoint
            self.sigmas = [float(s) for s in self.sigmas]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(
        cls, value: AdversarialSettings | Mapping[str, Any] | None
    ) -> AdversarialSettings | None:
        """Settings from settings, their `as_dict()` (a checkpoint's hyperparameters) or None."""
        return cls(**value) if isinstance(value, Mapping) else value


def adversarial_rows(share: float, batch_size: int) -> int:
    """Adversarial samples per device: ⌈share·batch_size⌉ (a positive share attacks a row)."""
    return math.ceil(round(share * batch_size, 6))  # 0.1·30 is 3, not 3.0000000000000004


def check_adversarial_settings(settings: Mapping[str, Any], prefix: str = "adversarial") -> None:
    """Raise `SFDConfigError` naming the first bad adversarial setting (`prefix.name=value`)."""
    integers = ("steps", 0), ("tokens", 1), ("refresh_every", 1), ("noise_levels", 1)
    optional = {"pool": 1, "samples": 1, "rivals": 9}  # settings added later: their defaults
    for name, low in (*integers, ("pool", 1), ("samples", 1), ("rivals", 0)):
        value = settings.get(name, optional.get(name))
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise SFDConfigError(f"{prefix}.{name}={value!r} must be an integer of at least {low}")
    check_number(f"{prefix}.share", settings.get("share"), low=0, high=1)
    check_number(f"{prefix}.restart_share", settings.get("restart_share", 0.0), low=0, high=1)
    check_number(f"{prefix}.lr", settings.get("lr"), low=0, low_open=True)
    check_number(f"{prefix}.weight", settings.get("weight"), low=0)
    check_number(f"{prefix}.anchor", settings.get("anchor", 0.0), low=0)
    check_number(f"{prefix}.remain_starts", settings.get("remain_starts", 0.0), low=0, high=1)
    if settings.get("anchor", 0.0) > 0 and settings.get("remain_starts", 0.0) > 0:
        raise SFDConfigError(
            f"{prefix}.anchor={settings.get('anchor')!r} with {prefix}.remain_starts="
            f"{settings.get('remain_starts')!r}: a row that starts from a remain prompt would be "
            "sent to the override and anchored to that remain prompt at once (set one to 0)"
        )
    posterior = settings.get("posterior_weight", False)
    if not isinstance(posterior, bool):
        raise SFDConfigError(f"{prefix}.posterior_weight={posterior!r} must be true or false")
    if posterior and (settings.get("rivals", 9) == 0 or settings.get("steps") == 0):
        raise SFDConfigError(
            f"{prefix}.posterior_weight=True needs {prefix}.rivals ≥ 1 and {prefix}.steps ≥ 1 "
            f"(got rivals {settings.get('rivals', 9)!r}, steps {settings.get('steps')!r}): the "
            "weight is the teacher's posterior of the forget concept at the row's last inner step"
        )
    sigmas = settings.get("sigmas")
    if sigmas is None:
        return
    if isinstance(sigmas, (str, bytes)) or not isinstance(sigmas, Sequence) or not sigmas:
        raise SFDConfigError(
            f"{prefix}.sigmas={sigmas!r} must be a non-empty list of positive noise levels "
            "(or null: the loss's sampler)"
        )
    for level in sigmas:
        check_number(f"{prefix}.sigmas", level, low=0, low_open=True)
