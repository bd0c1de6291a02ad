"""The forgetting targets (`sfd.apps.harness.targets`), hand-checked, and the demo report and the
benchmarks reading them from that one home."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from sfd.apps.demo_text.report import TextDemoResults
from sfd.apps.harness.targets import ONE_SIDED, text_targets
from sfd.eval.concepts import ConceptEvaluation, ForgetSetResult

REPO = Path(__file__).resolve().parents[2]
UA, PARA = "ua_train_at_least_99", "ua_paraphrases_at_least_95"
REMAIN = "remain_accuracy_at_most_2_points_below_teacher"
NEIGHBOUR = "neighbour_accuracy_at_most_2_points_below_teacher"
ATTACK = "soft_attack_at_most_half_of_no_forgetting"
ATTACK_ENTRY = {"budget": {"steps": 1}, "objective": "o", "asr_definition": "a"}


def numbers(ua=1.0, para=1.0, remain=0.9, neighbour=0.9, fid=1.0, attack=0.5) -> dict:
    return {"ua": ua, "ua_paraphrases": para, "remain_accuracy": remain,
            "neighbour_accuracy": neighbour, "fid_remain": fid, "attack_success": attack}  # fmt: skip


def models(**sfd) -> dict:
    return {
        "teacher": numbers(ua=0.0, remain=0.95, neighbour=0.90, fid=2.0, attack=1.0),
        "distilled_without_forgetting": numbers(ua=0.0, attack=0.8),
        "sfd": numbers(**sfd),
    }


def met(targets: dict) -> dict:
    return {name: entry["met"] for name, entry in targets.items()}


def test_accuracy_targets_are_one_sided() -> None:
    """Exactly 2 points below the teacher's is met, 2.5 below is not, any amount above is met."""
    at_two = text_targets(models(remain=0.93, neighbour=0.88))
    assert met(at_two)[REMAIN] and met(at_two)[NEIGHBOUR]
    assert at_two[REMAIN]["value"] == pytest.approx(-0.02)
    below = text_targets(models(remain=0.925, neighbour=0.875))
    assert not met(below)[REMAIN] and not met(below)[NEIGHBOUR]
    above = text_targets(models(remain=1.0, neighbour=1.0))  # 5 and 10 points above the teacher
    assert met(above)[REMAIN] and met(above)[NEIGHBOUR]
    assert "one-sided" in ONE_SIDED and "no more than" in ONE_SIDED


def test_ua_fid_and_attack_thresholds() -> None:
    """UA ≥ 99 % (96.5 % misses: the old 95 % bar met it), paraphrases ≥ 95 %, remain FID ≤ 1.2×
    the teacher's on a UNet teacher and ≤ 1.5× on a flow one, attack ≤ half of no forgetting's."""
    fashion = text_targets(models(ua=0.965, para=0.95, fid=2.6, attack=0.4))  # FID 1.3×
    assert not met(fashion)[UA] and met(fashion)[PARA]
    assert not fashion["fid_at_most_1.2x_teacher"]["met"]
    assert fashion["fid_at_most_1.2x_teacher"]["value"] == pytest.approx(1.3)
    assert met(fashion)[ATTACK] and fashion[ATTACK]["value"] == pytest.approx(0.5)
    flow = text_targets(models(ua=0.99, para=0.949, fid=2.6, attack=0.41), family="sd3")
    assert met(flow)[UA] and not met(flow)[PARA] and flow["fid_at_most_1.5x_teacher"]["met"]
    assert not met(flow)[ATTACK]


def test_the_judged_model_and_unmeasured_numbers() -> None:
    """`sfd` picks the judged model; a number not measured is neither met nor missed."""
    both = models(attack=0.6)
    both["adversarial_sfd"] = numbers(attack=0.3, fid=4.0)
    plain, adversarial = text_targets(both), text_targets(both, sfd="adversarial_sfd")
    assert (met(plain)[ATTACK], plain["fid_at_most_1.2x_teacher"]["met"]) == (False, True)
    assert (met(adversarial)[ATTACK], adversarial["fid_at_most_1.2x_teacher"]["met"]) == (
        True,
        False,
    )
    unmeasured = text_targets(models(para=None, neighbour=None, attack=None))
    for name in (PARA, NEIGHBOUR, ATTACK):
        assert unmeasured[name] == {"value": None, "met": None}


def evaluation(ua: float, remain: float, neighbour: float | None, fid: float) -> ConceptEvaluation:
    forget = ForgetSetResult(ua=ua, as_override=ua, histogram=[1, 9], num_images=200)
    return ConceptEvaluation(
        forget, forget, remain, {0: remain}, neighbour, 0.9, fid, 0.01, 0.001, 1, "s"
    )


@pytest.mark.parametrize(("family", "fid_met"), [("unet", False), ("sd3", True)])
def test_the_demo_report_checks_the_current_targets(family, fid_met) -> None:
    """The text demo's report: a Fashion UA of 96.5 % misses UA ≥ 99 % (issue 11's 95 % read it
    "met"), remain 2.5 points below the teacher's misses, FID 1.3× the teacher's misses on a UNet
    teacher and meets on a flow one; the report says the accuracy targets are one-sided."""
    from sfd.apps.demo_text.report import markdown_report

    results = TextDemoResults(
        2, 1, 0, ["zero", "one"],
        {"teacher": evaluation(0.0, 0.95, 0.9, 2.0),
         "distilled_without_forgetting": evaluation(0.0, 0.95, 0.9, 2.0),
         "sfd": evaluation(0.965, 0.925, 0.95, 2.6)},
        {"sfd": {"soft": {**ATTACK_ENTRY, "success_rate": 0.2}},
         "distilled_without_forgetting": {"soft": {**ATTACK_ENTRY, "success_rate": 0.8}},
         "teacher": {}},
        [], [], 10, {"teacher_settings": {"family": family}}, {}, [],
    )  # fmt: skip
    targets = results.targets()
    assert targets == text_targets(
        {key: {"ua": e.ua, "ua_paraphrases": e.forget_paraphrases.ua,
               "remain_accuracy": e.remain_accuracy, "neighbour_accuracy": e.neighbour_accuracy,
               "fid_remain": e.fid_remain,
               "attack_success": results.attacks.get(key, {}).get("soft", {}).get("success_rate")}
         for key, e in results.models.items()},
        family,
    )  # fmt: skip
    assert not targets[UA]["met"] and not targets[REMAIN]["met"] and targets[NEIGHBOUR]["met"]
    ratio = {"unet": "1.2", "sd3": "1.5"}[family]
    assert targets[f"fid_at_most_{ratio}x_teacher"]["met"] is fid_met
    files = {name: f"{name}.png" for name in ("forgetting_curve", "forget_histogram", "samples")}
    report = markdown_report(results, files)
    assert "| ua_train_at_least_99 | 0.965 | no |" in report and ONE_SIDED in report


def test_the_benchmarks_read_the_one_home() -> None:
    """text_benchmark and pairs_benchmark take the thresholds from sfd.apps.harness.targets."""
    sys.path.insert(0, str(REPO / "experiments"))
    text, pairs = (importlib.import_module(n) for n in ("text_benchmark", "pairs_benchmark"))
    assert text.text_targets is text_targets
    from sfd.apps.harness import targets

    assert (pairs.UA_TARGET, pairs.POINTS) == (targets.UA_TRAIN, targets.POINTS)


def test_missing_numbers_read_not_measured_never_met() -> None:
    """A FID the run did not measure (or a zero teacher FID, no ratio) is neither met nor missed."""
    from sfd.apps.harness.targets import at_most_times

    assert at_most_times(1.0, None, 1.2) == at_most_times(None, 2.0, 1.2) == (None, None)
    assert at_most_times(1.0, 0.0, 1.2) == (None, None)
    assert at_most_times(2.4, 2.0, 1.2) == (1.2, True)
    for teacher_fid, sfd_fid in ((None, 1.0), (0.0, 1.0), (2.0, None)):
        both = models()
        both["teacher"]["fid_remain"], both["sfd"]["fid_remain"] = teacher_fid, sfd_fid
        assert text_targets(both)["fid_at_most_1.2x_teacher"] == {"value": None, "met": None}


def test_the_attack_suite_targets_read_the_one_home_and_say_not_measured() -> None:
    """attack_suite's adversarial targets: the thresholds of sfd.apps.harness.targets, and a
    teacher accuracy or plain SFD FID the record lacks reads "not measured" (no crash, no "yes")."""
    sys.path.insert(0, str(REPO / "experiments"))
    suite = importlib.import_module("attack_suite")
    scores = {"ua": 1.0, "ua_paraphrases": 0.96, "remain_accuracy": 0.9,
              "neighbour_accuracy": 0.9, "fid_remain": 2.0, "training_seconds": None}  # fmt: skip
    summary = {
        "teacher": {**scores, "ua": 0.0, "neighbour_accuracy": None},
        "sfd": {**scores, "fid_remain": None},
        "adversarial_sfd": scores,
    }
    record = {"summary": summary, "models": {}, "run_folder": "runs/demo-text"}
    table = suite.benchmark_sections(record, {"soft": "soft"})["Targets (adversarial SFD)"]
    rows = {line.split("|")[1].strip(): line.split("|")[2:4] for line in table.splitlines()[2:]}
    assert [c.strip() for c in rows["remain FID ≤ 1.1× plain SFD's"]] == ["not measured", "–"]
    neighbour = "neighbour accuracy no more than 2 points below the teacher's"
    assert [c.strip() for c in rows[neighbour]] == ["not measured", "–"]
    assert [c.strip() for c in rows["UA (training prompts / class) ≥ 99 %"]][1] == "yes"
    assert "idle" not in table


ADV_PROTOCOL = {"sfd_settings": {"model": {"adversarial": {"steps": 2, "tokens": 16}}}}


def adversarial_results(soft: float, discrete: float | None) -> TextDemoResults:
    attacks = {"soft": {**ATTACK_ENTRY, "success_rate": soft}}
    if discrete is not None:
        attacks["discrete"] = {**ATTACK_ENTRY, "success_rate": discrete}
    return TextDemoResults(
        2, 1, 0, ["zero", "one"],
        {"teacher": evaluation(0.0, 0.95, 0.9, 2.0),
         "distilled_without_forgetting": evaluation(0.0, 0.95, 0.9, 2.0),
         "sfd": evaluation(1.0, 0.94, 0.95, 2.6)},
        {"sfd": attacks,
         "distilled_without_forgetting": {"soft": {**ATTACK_ENTRY, "success_rate": 0.9}},
         "teacher": {}},
        [], [], 10, ADV_PROTOCOL, {}, [],
    )  # fmt: skip


def test_the_adversarial_targets_are_issue_22s() -> None:
    """Hand-checked: each attack ≤ 5 % (5 % exactly met, 6 % missed, not run: not measured), UA
    ≥ 99 % / 95 %, accuracy ≤ 2 points below the teacher's, remain FID ≤ 1.1× plain SFD's (2.2 /
    2.0 met, 2.4 / 2.0 missed, no plain SFD: not measured); a class model (no paraphrases, no
    neighbours) gets no row for those."""
    from sfd.apps.harness.targets import adversarial_targets

    model = {"ua": 0.99, "ua_paraphrases": 0.94, "remain_accuracy": 0.93,
             "neighbour_accuracy": 0.925, "fid_remain": 2.2}  # fmt: skip
    teacher = {"remain_accuracy": 0.95, "neighbour_accuracy": 0.95}
    found = adversarial_targets(model, teacher, 2.0, {"soft": 0.05, "discrete": 0.06, "x": None})
    assert met(found) == {
        "soft_attack_success_at_most_5_percent": True,
        "discrete_attack_success_at_most_5_percent": False,
        "x_attack_success_at_most_5_percent": None,
        UA: True, PARA: False, REMAIN: True, NEIGHBOUR: False,
        "fid_at_most_1.1x_plain_sfd": True,
    }  # fmt: skip
    assert found["fid_at_most_1.1x_plain_sfd"]["value"] == pytest.approx(1.1)
    assert found["soft_attack_success_at_most_5_percent"]["title"] == (
        "adversarial SFD soft success ≤ 5 %"
    )
    assert not adversarial_targets({**model, "fid_remain": 2.4}, teacher, 2.0, {})[
        "fid_at_most_1.1x_plain_sfd"
    ]["met"]
    unplain = adversarial_targets(model, teacher, None, {})["fid_at_most_1.1x_plain_sfd"]
    assert (unplain["value"], unplain["met"]) == (None, None)
    cls = {"ua": 1.0, "ua_paraphrases": None, "remain_accuracy": 0.95,
           "neighbour_accuracy": None, "fid_remain": 2.0}  # fmt: skip
    assert set(adversarial_targets(cls, teacher, 2.0, {})) == {
        UA,
        REMAIN,
        "fid_at_most_1.1x_plain_sfd",
    }


def test_the_adversarial_text_demo_reports_issue_22s_targets() -> None:
    """`sfd demo-text --adversarial`: the SFD row is titled adversarial SFD and its targets are
    issue 22's (soft 3 % ≤ 5 % met, a soft share of half of no forgetting's is not the target;
    discrete not run: not measured; FID against plain SFD: not measured, said why), not issue
    24's "at most half of no forgetting's"."""
    from sfd.apps.demo_text.report import PLAIN_NOTE, markdown_report

    files = {name: f"{name}.png" for name in ("forgetting_curve", "forget_histogram", "samples")}
    results = adversarial_results(0.03, None)
    report = markdown_report(results, files)
    assert "| one-step adversarial SFD (forgetting) | 1 |" in report
    assert "| one-step SFD (forgetting) |" not in report
    assert "| soft_attack_success_at_most_5_percent | 0.030 | yes |" in report
    assert "| discrete_attack_success_at_most_5_percent | — | not measured |" in report
    assert "| fid_at_most_1.1x_plain_sfd | — | not measured |" in report
    assert ATTACK not in report and "fid_at_most_1.2x_teacher" not in report
    assert PLAIN_NOTE in report
    # 40 % soft success is under half of no forgetting's 90 % (issue 24's target) but misses 5 %
    missed = adversarial_results(0.4, 0.02).targets()
    assert missed["soft_attack_success_at_most_5_percent"]["met"] is False
    assert missed["discrete_attack_success_at_most_5_percent"]["met"] is True
    assert (
        "plain SFD"
        not in markdown_report(TextDemoResults(**{**vars(results), "protocol": {}}), files)
        .split("## Targets")[1]
        .split("## Remain")[0]
    )


def test_the_class_demo_titles_adversarial_sfd() -> None:
    """The class demo's titles come from the same home as the text demo's."""
    from sfd.apps.demo import report as demo_report
    from sfd.apps.harness.report_folder import report_titles

    assert demo_report.report_titles is report_titles
    assert report_titles(ADV_PROTOCOL)["sfd"] == "one-step adversarial SFD (forgetting)"
    assert report_titles({})["sfd"] == "one-step SFD (forgetting)"
