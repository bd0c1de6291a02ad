"""The metric columns of the reports, by name: title, how a cell is written, where the value is.

One registry for every table that shows a `ModelEvaluation` (report.md of `sfd demo` and
`sfd compare`, their printed summaries). A new metric is a field of `ModelEvaluation` computed
in `evaluate_sampler`, plus one entry here; a report lists the names of the columns it shows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import attrgetter

from sfd.eval.evaluate import ModelEvaluation


@dataclass(frozen=True)
class Column:
    """One metric column.

    Attributes:
        title: the header of the column.
        value: where the number is in a `ModelEvaluation` (None where it was not measured).
        digits: decimals of a cell.
        percent: write the value, a share in [0, 1], as a percentage ("12.3 %").
        spread: where the value's standard deviation is, written after it as "± std" where it
            was measured (None: the column has none).
    """

    title: str
    value: Callable[[ModelEvaluation], float | int | None]
    digits: int = 2
    percent: bool = False
    spread: Callable[[ModelEvaluation], float | None] | None = None

    def cell(self, evaluation: ModelEvaluation) -> str:
        """The column's cell for one model ("n/a" for a value that is None or NaN)."""
        cell = format_value(self.value(evaluation), self.digits, self.percent)
        std = None if self.spread is None else self.spread(evaluation)
        if cell == "n/a" or std is None or math.isnan(std):
            return cell
        return f"{cell} ± {format_value(std, self.digits, self.percent)}"


def format_value(value: float | int | None, digits: int = 2, percent: bool = False) -> str:
    """`value` with `digits` decimals, as a percentage of a share if `percent`; "n/a" if missing."""
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100 * value:.{digits}f} %" if percent else f"{value:.{digits}f}"


COLUMNS: dict[str, Column] = {
    "nfe": Column("NFE", attrgetter("nfe"), digits=0),
    "ua": Column("UA", attrgetter("ua"), digits=1, percent=True),
    "forget_as_override": Column(
        "forget → override", attrgetter("forget_as_override"), digits=1, percent=True
    ),
    "remain_accuracy": Column(
        "remain accuracy", attrgetter("remain_accuracy"), digits=1, percent=True
    ),
    "fid_remain": Column("remain FID", attrgetter("fid_remain")),
    "kid_remain": Column(
        "remain KID", attrgetter("kid_remain"), digits=4, spread=attrgetter("kid_remain_std")
    ),
    "images_per_second": Column("images/s", attrgetter("images_per_second"), digits=1),
}


def column_titles(names: Sequence[str]) -> list[str]:
    """The headers of the named columns, in order."""
    return [COLUMNS[name].title for name in names]


def row_cells(evaluation: ModelEvaluation, names: Sequence[str]) -> list[str]:
    """One model's cells of the named columns, in order."""
    return [COLUMNS[name].cell(evaluation) for name in names]
