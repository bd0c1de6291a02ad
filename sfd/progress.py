"""What sfd prints while it works: one progress style for every verb.

Work is counted in its natural unit against its total (training iterations, sampling steps,
images), with the current losses beside the count. In a terminal this is a tqdm bar on stdout
(where Lightning draws its bar too); in a log that is not a terminal (a SLURM log, `| tee`) the
bar becomes a plain line each time the work crosses another `PLAIN_EVERY_PERCENT` %, and at its
end, with no carriage returns:

    Iterations 50/1000 (5%) loss_fake=0.0312 loss_gen=0.118
    sampling DDIM 50 steps 20/200 (10%)

`ProgressBar` is that bar for loops sfd runs itself; `sfd.training.IterationProgressBar` draws
the same lines for Lightning runs (`progress_line`, `PlainMarks`). This module imports no torch.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

PLAIN_EVERY_PERCENT = 5  # progress lines in a log that is not a terminal


def plain_output() -> bool:
    """True when stdout is not a terminal (progress then goes as plain lines)."""
    return not sys.stdout.isatty()


def progress_line(what: str, done: int, total: int | None, values: Mapping[str, Any]) -> str:
    """One plain progress line: `what done/total (pct%) key=value ...` (floats to 4 digits)."""
    share = f"/{total} ({done * 100 // total}%)" if total else ""
    shown = " ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in values.items()
    )
    return f"{what} {done}{share} {shown}".rstrip()


class PlainMarks:
    """Which counts get a plain line: the first past each `PLAIN_EVERY_PERCENT` % mark, and the
    end of the work; never 0 and never the same count twice."""

    def __init__(self) -> None:
        self.last_mark = -1
        self.last_count = 0

    def due(self, done: int, total: int | None) -> bool:
        """Whether `done` of `total` deserves a line (recording it when it does)."""
        if not total or done <= 0 or done == self.last_count:
            return False
        mark = min(done, total) * 100 // total // PLAIN_EVERY_PERCENT
        if mark <= self.last_mark and done < total:
            return False
        self.last_mark, self.last_count = mark, done
        return True


class _Discard:
    """Where a plain-mode bar sends tqdm's own drawing (its lines go to stdout instead)."""

    encoding = "utf-8"

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


class ProgressBar(tqdm):
    """tqdm with sfd's plain-line mode; takes tqdm's arguments (iterable, total, desc, unit,
    disable, leave, ...) and `set_postfix` values, which the plain lines show as key=value.

    Args:
        plain: plain lines instead of a bar (default: when stdout is not a terminal).
    """

    def __init__(self, *args: Any, plain: bool | None = None, **kwargs: Any) -> None:
        self.plain = plain_output() if plain is None else plain
        self._marks = PlainMarks()
        self._values: dict[str, Any] = {}
        self._lines_to = sys.stdout
        if self.plain:  # every update reaches `display`, which prints only at the marks
            kwargs.update(file=_Discard(), mininterval=0, miniters=1)
        else:
            kwargs.setdefault("file", sys.stdout)
        super().__init__(*args, **kwargs)

    def set_postfix(
        self, ordered_dict: Mapping[str, Any] | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        """tqdm's `set_postfix`; the values also go on the plain lines."""
        self._values = {**dict(ordered_dict or {}), **kwargs}
        super().set_postfix(ordered_dict, refresh, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Draw the bar, or in plain mode print a line when a mark is crossed."""
        if not self.plain:
            return super().display(msg, pos)
        if self._marks.due(self.n, self.total):
            line = progress_line(self.desc.rstrip(": "), self.n, self.total, self._values)
            print(line, file=self._lines_to, flush=True)
        return True
