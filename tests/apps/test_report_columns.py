"""The model tables of `sfd demo` and `sfd compare` take their metric columns from `COLUMNS`."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import sfd.apps.compare.report as compare_report
import sfd.apps.demo.report as demo_report
from sfd.apps.compare.report import CompareResults, MethodReport
from sfd.apps.demo.report import DemoResults
from sfd.eval.columns import COLUMNS, Column
from sfd.eval.evaluate import ModelEvaluation, Throughput

EVALUATION = ModelEvaluation(
    ua=0.9876,
    forget_as_override=0.5,
    forget_histogram=[1, 0, 3],
    remain_accuracy=0.75,
    remain_per_class={0: 0.5, 2: 1.0},
    fid_remain=12.345,
    kid_remain=0.012345,
    kid_remain_std=0.001,
    nfe=1,
    images_per_second=250.0,
    sampler="one-step generator",
    throughput=Throughput(250.0, 8, 2, 0.064),
)
FILES = {name: f"{name}.png" for name in ("forgetting_curve", "forget_histogram", "samples")}
FILES["forgetting_curves"] = "forgetting_curves.png"


def demo_results() -> DemoResults:
    models = {"teacher": dataclasses.replace(EVALUATION, nfe=50), "sfd": EVALUATION}
    curve = [{"iteration": 0, "ua": 0.1, "remain_accuracy": 0.7}]
    return DemoResults(3, 1, 2, models, curve, [], 10, {}, {"seed": 0}, {})


def compare_results() -> CompareResults:
    curve = [{"iteration": 4, "seconds": 7.0, "ua": 0.96, "remain_accuracy": 0.7}]
    ua95 = {"iteration": 4, "seconds": 7.0}
    method = MethodReport("sfd", "SFD", EVALUATION, 10, 42.0, curve, ua95)
    teacher = dataclasses.replace(EVALUATION, nfe=50)
    return CompareResults(3, 1, 2, teacher, {"sfd": method}, {"seed": 0}, {"sfd": torch.zeros(0)})


def table_lines(markdown: str) -> list[str]:
    """The lines of the first table of a report.md."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| model |"))
    end = next(i for i in range(start, len(lines)) if not lines[i].startswith("|"))
    return lines[start:end]


def test_demo_table_and_summary_use_the_registry() -> None:
    results = demo_results()
    header, _, teacher, sfd = table_lines(demo_report.markdown_report(results, FILES))
    assert header == (
        "| model | NFE | UA | forget → override | remain accuracy | remain FID | remain KID "
        "| images/s |"
    )
    assert sfd == (
        "| one-step SFD (forgetting) | 1 | 98.8 % | 50.0 % | 75.0 % | 12.35 "
        "| 0.0123 ± 0.0010 | 250.0 |"
    )
    assert teacher.startswith("| teacher (DDIM) | 50 |")
    summary = demo_report.summary_table(results.to_json()).splitlines()
    assert summary[0].split() == ["model", "NFE", "UA", "remain", "accuracy", "remain", "FID",
                                  "images/s"]  # fmt: skip
    assert summary[2].split() == ["sfd", "1", "98.8", "%", "75.0", "%", "12.35", "250.0"]


def test_compare_table_and_summary_use_the_registry() -> None:
    results = compare_results()
    header, _, teacher, sfd = table_lines(compare_report.markdown(results, FILES))
    assert header.endswith("| remain KID | images/s | iterations | training time | UA ≥ 95 % at |")
    assert sfd == (
        "| SFD | 1 | 98.8 % | 50.0 % | 75.0 % | 12.35 | 0.0123 ± 0.0010 | 250.0 | 10 | 42 s "
        "| it. 4 / 7 s |"
    )
    assert teacher.startswith("| teacher (DDIM) | 50 | 98.8 % |")
    summary = compare_report.summary_table(results.to_json()).splitlines()
    assert summary[0].split()[-5:] == ["FID", "train", "s", "UA95", "s"]
    assert summary[2].split() == ["sfd", "1", "98.8", "%", "75.0", "%", "12.35", "42", "7"]


def test_a_new_column_is_one_registry_entry_and_one_name(monkeypatch: pytest.MonkeyPatch) -> None:
    forget_samples = Column("forget samples", lambda m: sum(m.forget_histogram), digits=0)
    monkeypatch.setitem(COLUMNS, "forget_samples", forget_samples)
    for report in (demo_report, compare_report):
        monkeypatch.setattr(report, "REPORT_COLUMNS", [*report.REPORT_COLUMNS, "forget_samples"])
        monkeypatch.setattr(report, "SUMMARY_COLUMNS", ["forget_samples"])
    header, _, _, sfd = table_lines(demo_report.markdown_report(demo_results(), FILES))
    assert header.endswith("| images/s | forget samples |") and sfd.endswith("| 250.0 | 4 |")
    header, _, _, sfd = table_lines(compare_report.markdown(compare_results(), FILES))
    assert "| images/s | forget samples | iterations |" in header
    assert "| 250.0 | 4 | 10 |" in sfd
    summary = demo_report.summary_table(demo_results().to_json()).splitlines()
    assert summary[0].split() == ["model", "forget", "samples"] and summary[2].split() == [
        "sfd",
        "4",
    ]


def test_the_ua_ceiling_stands_beside_ua_in_the_reports_and_summaries() -> None:
    results = demo_results()
    results.protocol["ua_ceiling"] = 0.842
    line = "UA ceiling under this classifier: 84.2 %"
    assert line in demo_report.markdown_report(results, FILES)
    assert line in demo_report.summary_table(results.to_json())
    compared = compare_results()
    compared.protocol["ua_ceiling"] = 0.842
    assert line in compare_report.summary_table(compared.to_json())
    assert "ceiling" not in demo_report.summary_table(demo_results().to_json())  # old records
