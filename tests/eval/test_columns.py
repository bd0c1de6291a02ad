"""`COLUMNS`: every metric column reads its field of `ModelEvaluation` and writes it as the reports do."""

from __future__ import annotations

import dataclasses
import math

from sfd.eval.columns import COLUMNS, column_titles, format_value, row_cells
from sfd.eval.evaluate import ModelEvaluation

EVALUATION = ModelEvaluation(
    ua=0.9876,
    forget_as_override=math.nan,
    forget_histogram=[0, 3],
    remain_accuracy=0.5,
    remain_per_class={1: 0.5},
    fid_remain=12.345,
    kid_remain=0.012345,
    kid_remain_std=0.001,
    nfe=1,
    images_per_second=None,
    sampler="one-step generator",
)


def test_cells_and_titles() -> None:
    names = ["nfe", "ua", "forget_as_override", "remain_accuracy", "fid_remain", "kid_remain",
             "images_per_second"]  # fmt: skip
    assert row_cells(EVALUATION, names) == [
        "1",
        "98.8 %",
        "n/a",
        "50.0 %",
        "12.35",
        "0.0123 ± 0.0010",
        "n/a",
    ]
    assert column_titles(["ua", "fid_remain"]) == ["UA", "remain FID"]
    assert format_value(0.25, 1, percent=True) == "25.0 %" and format_value(None) == "n/a"


def test_kid_shows_its_std_only_where_it_was_measured() -> None:
    unmeasured = dataclasses.replace(EVALUATION, kid_remain_std=math.nan)
    assert row_cells(unmeasured, ["kid_remain"]) == ["0.0123"]


def test_an_evaluation_reads_back_from_its_dict() -> None:
    data = {"title": "a method's other facts", **EVALUATION.to_dict()}
    assert ModelEvaluation.from_dict(data) == EVALUATION


def test_every_column_is_a_field_of_the_evaluation() -> None:
    fields = {field.name for field in dataclasses.fields(ModelEvaluation)}
    for name, column in COLUMNS.items():
        assert name in fields, name
        column.cell(EVALUATION)
