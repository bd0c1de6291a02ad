"""The forgetting targets the demos' reports and the benchmarks under experiments/ check: one home
for the thresholds (issue 24's, and issue 20's on the flow-matching teacher) and their wording.

The remain / neighbour accuracy targets are one-sided: SFD's accuracy may be at most `POINTS` below
the teacher's, and any amount above it is met.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

UA_TRAIN = 0.99  # UA on the training forget prompts (a class model: on the forgotten class)
UA_PARAPHRASES = 0.95  # UA on held-out paraphrases of the forget prompts
POINTS = 0.02  # remain / neighbour accuracy: at most this far below the teacher's (above: met)
ATTACK_SHARE = 0.5  # soft-prompt attack success: at most this share of no forgetting's
# Remain FID over the teacher's own multi-step remain FID, per text teacher family: issue 24 item 3
# (UNet text demos, the teacher's DDIM sampler) and issue 20 (the flow teacher, its Euler sampler).
TEXT_FID_RATIO = {"unet": 1.2, "sd3": 1.5}
ADV_FID_RATIO = 1.1  # adversarial SFD's remain FID at most this times plain SFD's
CLASS_FID_RATIO = (
    1.2  # the class demo's: shipped remain FID at most this times the teacher's (DDIM)
)
ONE_SIDED = (
    "The remain / neighbour accuracy targets are one-sided: met when SFD's accuracy is no more "
    "than the stated points below the teacher's, however far above it."
)
DIFFERENCE = "Their value is SFD's accuracy minus the teacher's."


def points_below(name: str) -> str:
    """`"remain"` -> "remain accuracy no more than 2 points below the teacher's"."""
    return f"{name} accuracy no more than {100 * POINTS:.0f} points below the teacher's"


def not_below_teacher(model: float, teacher: float) -> bool:
    """Whether `model`'s accuracy is at most `POINTS` below `teacher`'s (rounded to 1e-9, so
    exactly 2 points below is met)."""
    return round(model - teacher, 9) >= -POINTS


def at_most_times(
    value: float | None, reference: float | None, ratio: float
) -> tuple[float | None, bool | None]:
    """(value / reference, whether value <= ratio · reference); (None, None), "not measured", when
    either is missing or the reference is not positive (no ratio to judge)."""
    if value is None or reference is None or not reference > 0:
        return None, None
    return value / reference, value <= ratio * reference


def text_targets(
    models: Mapping[str, Mapping[str, Any]], family: str = "unet", sfd: str = "sfd"
) -> dict[str, dict[str, Any]]:
    """The text demo's targets for the SFD model `sfd` ("sfd" or "adversarial_sfd").

    Args:
        models: model key ("teacher", "distilled_without_forgetting", `sfd`) -> its numbers:
            "ua", "ua_paraphrases", "remain_accuracy", "neighbour_accuracy", "fid_remain" and
            "attack_success" (the white-box soft-prompt attack); None where not measured.
        family: the teacher's family, "unet" or "sd3" (its FID ratio target, `TEXT_FID_RATIO`).
        sfd: which model the targets judge.

    Returns:
        target name -> {"value", "met"}; both None for a number the run did not measure.
    """
    model, teacher = models[sfd], models["teacher"]
    base = models.get("distilled_without_forgetting", {}).get("attack_success")
    attack = model.get("attack_success")
    ratio = TEXT_FID_RATIO[family]

    def at_least(value: float | None, bound: float) -> tuple[float | None, bool | None]:
        return (None, None) if value is None else (value, value >= bound)

    def below(key: str) -> tuple[float | None, bool | None]:
        if model.get(key) is None or teacher.get(key) is None:
            return None, None
        return model[key] - teacher[key], not_below_teacher(model[key], teacher[key])

    checks = {
        f"ua_train_at_least_{100 * UA_TRAIN:.0f}": at_least(model["ua"], UA_TRAIN),
        f"ua_paraphrases_at_least_{100 * UA_PARAPHRASES:.0f}": at_least(
            model.get("ua_paraphrases"), UA_PARAPHRASES
        ),
        f"remain_accuracy_at_most_{100 * POINTS:.0f}_points_below_teacher": below(
            "remain_accuracy"
        ),
        f"neighbour_accuracy_at_most_{100 * POINTS:.0f}_points_below_teacher": below(
            "neighbour_accuracy"
        ),
        f"fid_at_most_{ratio:g}x_teacher": at_most_times(
            model.get("fid_remain"), teacher.get("fid_remain"), ratio
        ),
        "soft_attack_at_most_half_of_no_forgetting": (None, None)
        if attack is None or base is None
        else (attack / base if base > 0 else float("nan"), attack <= ATTACK_SHARE * base),
    }
    return {name: {"value": value, "met": met} for name, (value, met) in checks.items()}


ADV_ATTACK = 0.05  # issue 22: adversarial SFD's success under each attack at most this


def adversarial_targets(
    model: Mapping[str, Any],
    teacher: Mapping[str, Any],
    plain_fid: float | None,
    attacks: Mapping[str, float | None],
) -> dict[str, dict[str, Any]]:
    """Issue 22's targets for adversarial SFD: each attack's success at most `ADV_ATTACK`, UA on
    training prompts and paraphrases, remain and neighbour accuracy at most `POINTS` below the
    teacher's, remain FID at most `ADV_FID_RATIO` times plain SFD's.

    Args:
        model: adversarial SFD's numbers: "ua", "ua_paraphrases", "remain_accuracy",
            "neighbour_accuracy", "fid_remain"; None (or absent) where not measured.
        teacher: the teacher's numbers (the same keys).
        plain_fid: plain SFD's remain FID; None where the run trained no plain SFD.
        attacks: attack name ("soft", "discrete", "class-embedding") -> adversarial SFD's
            success under it; None where not measured.

    Returns:
        target name -> {"title" (the words a page shows), "value", "met", "unit"}; value and met
        None where not measured (an attack not run, no teacher's number, no plain SFD). The UA
        on paraphrases and the accuracy targets are left out where the model has no such number
        (a run without paraphrases; a class model has no neighbours). Units: "share" (a fraction), "points" (the model's accuracy
        minus the teacher's, a fraction), "ratio" (the FID over plain SFD's).
    """
    found: dict[str, dict[str, Any]] = {}

    def add(name: str, title: str, value: float | None, met: bool | None, unit: str) -> None:
        found[name] = {"title": title, "value": value, "met": met, "unit": unit}

    for attack, success in attacks.items():
        add(
            f"{attack}_attack_success_at_most_{100 * ADV_ATTACK:.0f}_percent",
            f"adversarial SFD {attack} success ≤ {100 * ADV_ATTACK:.0f} %",
            success,
            None if success is None else success <= ADV_ATTACK,
            "share",
        )
    for key, bound, title in (
        ("ua", UA_TRAIN, "UA (training prompts / class)"),
        ("ua_paraphrases", UA_PARAPHRASES, "UA paraphrases"),
    ):
        value = model.get(key)
        if value is None and key != "ua":  # no paraphrases in this run (a class model)
            continue
        name = f"{'ua_train' if key == 'ua' else key}_at_least_{100 * bound:.0f}"
        add(name, f"{title} ≥ {100 * bound:.0f} %", value,
            None if value is None else value >= bound, "share")  # fmt: skip
    for key, word in (("remain_accuracy", "remain"), ("neighbour_accuracy", "neighbour")):
        value, reference = model.get(key), teacher.get(key)
        name = f"{key}_at_most_{100 * POINTS:.0f}_points_below_teacher"
        if value is None:  # no such prompts in this run (a class model has no neighbours)
            continue
        if reference is None:
            add(name, points_below(word), None, None, "points")
        else:
            add(name, points_below(word), value - reference,
                not_below_teacher(value, reference), "points")  # fmt: skip
    ratio, met = at_most_times(model.get("fid_remain"), plain_fid, ADV_FID_RATIO)
    add(f"fid_at_most_{ADV_FID_RATIO:g}x_plain_sfd",
        f"remain FID ≤ {ADV_FID_RATIO:g}× plain SFD's", ratio, met, "ratio")  # fmt: skip
    return found


# Issue 20: the digits set-up on the flow teacher with fresh caches (teacher, classifier and stage 1
# trained in the run) in at most this many wall minutes on the 2-core machine.
FRESH_MINUTES = {"digits": 25}


def fresh_wall_target(setup: str, wall_seconds: float) -> dict[str, dict[str, Any]]:
    """The wall-time target of a set-up run with fresh caches: name -> {"value" (minutes), "met"};
    empty for a set-up without one."""
    if setup not in FRESH_MINUTES:
        return {}
    minutes = wall_seconds / 60
    name = f"{setup}_fresh_wall_at_most_{FRESH_MINUTES[setup]}_minutes"
    return {name: {"value": minutes, "met": minutes <= FRESH_MINUTES[setup]}}
