"""sfd's one progress style (sfd.progress): a bar in a terminal, plain lines every 5 % of the work
in a log that is not a terminal, the losses beside the count."""

from __future__ import annotations

import io
import subprocess
import sys

from sfd.progress import ProgressBar, progress_line


def test_plain_lines_at_every_five_percent_with_values(capsys) -> None:
    with ProgressBar(total=40, desc="classifier", plain=True) as bar:
        for step in range(40):
            bar.set_postfix(loss=1.0 / (step + 1), refresh=False)
            bar.update(1)
    lines = capsys.readouterr().out.splitlines()
    # the first unit of work (the run has started), then the first count past each 5 % mark
    assert [line.split()[1] for line in lines] == ["1/40"] + [f"{2 * k}/40" for k in range(1, 21)]
    assert lines[0] == "classifier 1/40 (2%) loss=1" and lines[1] == "classifier 2/40 (5%) loss=0.5"
    assert lines[-1] == "classifier 40/40 (100%) loss=0.025"
    assert "\r" not in "".join(lines)


def test_plain_lines_over_an_iterable_and_a_coarse_total(capsys) -> None:
    assert list(ProgressBar(range(3), desc="sampling", plain=True)) == [0, 1, 2]
    assert capsys.readouterr().out.splitlines() == [
        "sampling 1/3 (33%)",
        "sampling 2/3 (66%)",
        "sampling 3/3 (100%)",
    ]
    for _ in ProgressBar(range(1000), desc="big", plain=True):
        pass
    lines = capsys.readouterr().out.splitlines()
    assert (
        len(lines) == 21 and lines[1] == "big 50/1000 (5%)" and lines[-1] == "big 1000/1000 (100%)"
    )


def test_disabled_bars_print_nothing(capsys) -> None:
    for _ in ProgressBar(range(5), desc="quiet", disable=True, plain=True):
        pass
    assert capsys.readouterr().out == ""


def test_a_terminal_gets_a_bar_not_lines() -> None:
    stream = io.StringIO()
    with ProgressBar(total=4, desc="sampling", plain=False, file=stream) as bar:
        bar.update(4)
    assert "sampling: 100%" in stream.getvalue() and "4/4" in stream.getvalue()


def test_progress_line_format() -> None:
    assert progress_line("Iterations", 50, 1000, {"loss_fake": 0.031234, "v": 2}) == (
        "Iterations 50/1000 (5%) loss_fake=0.03123 v=2"
    )
    assert progress_line("steps", 3, None, {}) == "steps 3"


def test_the_progress_module_imports_no_torch() -> None:
    code = "import sys, sfd.progress; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
