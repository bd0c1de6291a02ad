"""Every script in experiments/ imports and answers `--help`, and every script a page names exists.

One subprocess runs them all (each with `runpy`, as `python experiments/<name>.py --help` would),
so the heavy imports are paid once and a broken import in any script fails here.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
LIBRARIES = {"results_page.py", "sweep_tools.py"}  # imported by the scripts; no command line

HELP_ALL = """
import contextlib, io, json, runpy, sys
experiments, names = sys.argv[1], sys.argv[2:]
sys.path.insert(0, experiments)  # the scripts import their neighbours, as when run directly
answers = {}
for name in names:
    sys.argv = [f"{experiments}/{name}", "--help"]
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(sys.argv[0], run_name="__main__")
        answers[name] = "ran to the end without exiting on --help"
    except SystemExit as stop:
        answers[name] = out.getvalue() if stop.code in (0, None) else f"exit {stop.code}"
    except BaseException as error:
        answers[name] = f"{type(error).__name__}: {error}"
import results_page, sweep_tools  # the neighbours without a command line import too
print(json.dumps(answers))
"""


def scripts() -> list[str]:
    return sorted(p.name for p in EXPERIMENTS.glob("*.py") if p.name not in LIBRARIES)


def test_every_experiment_script_answers_help() -> None:
    """`--help` of each script prints its usage and exits 0: its imports (sfd's and its
    neighbours') resolve, and its parser builds. The neighbours without a command line
    (`LIBRARIES`) are imported in the same process."""
    done = subprocess.run(
        [sys.executable, "-c", HELP_ALL, str(EXPERIMENTS), *scripts()],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.splitlines()[-1])
    broken = {name: answer for name, answer in answers.items() if "usage:" not in answer}
    assert not broken, broken
    assert sorted(answers) == scripts()


def test_every_script_a_page_names_exists() -> None:
    """Each `experiments/<name>.py` named in docs/ or README.md is a file of experiments/."""
    pages = [*REPO.joinpath("docs").rglob("*.md"), REPO / "README.md"]
    named = {
        match
        for page in pages
        for match in re.findall(r"experiments/([\w-]+\.py)", page.read_text())
    }
    assert named, "no page names a script: the pattern is wrong"
    assert not sorted(n for n in named if not (EXPERIMENTS / n).is_file())
