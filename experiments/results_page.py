"""Results pages docs/results/<name>.md, written by the benchmark scripts from their JSON output.

A script measures, saves its JSON record (which carries `run_context`: the command, date, commit,
machine and library versions of the run) and calls `write_page`; `--page-from FILE.json` re-writes
the page from such a record without measuring again, so every number on a page is the output of the
command printed on it. Standard library only: `cli_startup.py` must not import torch.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from sfd.folders import follow_umask

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "docs" / "results"
LIBRARIES = (
    "torch", "lightning", "diffusers", "transformers", "peft", "torchmetrics", "numpy",
    "scikit-learn", "sfd",
)  # fmt: skip


class Refusal(SystemExit):
    """Bad input to a benchmark script: its one-line message on stderr, exit status 2.

    Raised before anything is measured or written. The message is printed when the refusal is
    made (a `SystemExit` with an integer code prints nothing), and `str()` of it is the message.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = " ".join(message.split())  # one line
        print(f"{Path(sys.argv[0]).name}: error: {self.message}", file=sys.stderr)

    def __str__(self) -> str:
        return self.message


def add_page_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--page-from FILE.json` and `--no-page` (one or the other) to a script's parser."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--page-from",
        metavar="FILE.json",
        help="re-write the results page from this earlier run's JSON record; measure nothing",
    )
    group.add_argument(
        "--no-page", action="store_true", help="do not write the page in docs/results/"
    )


def command_line(script: str | os.PathLike[str], args: Sequence[str]) -> str:
    """The command as typed from the repository root: `python experiments/<script>.py ARGS`,
    each absolute path in ARGS (also after `--option=` or `name=`) as `shown_path` shows it."""
    return shlex.join(["python", f"experiments/{Path(script).name}", *map(shown_argument, args)])


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as a page shows it: an absolute path inside the repository relative to its root (a
    worktree's `runs/` is `runs/` on the page, as the command is typed from the root); a relative
    path (from the repository root, where the scripts run) or any other as given."""
    text = os.fspath(path)
    if not os.path.isabs(text):
        return text
    resolved, root = Path(text).resolve(), REPO.resolve()
    return (
        str(resolved.relative_to(root))
        if resolved.is_relative_to(root) and resolved != root
        else text
    )


def shown_argument(argument: str) -> str:
    """`shown_path` of a command-line argument that is a path, `--option=PATH` or `name=PATH`."""
    head, equals, tail = argument.partition("=") if "=" in argument else ("", "", argument)
    if not os.path.isabs(tail):
        return argument
    return head + equals + shown_path(tail)


def run_context(
    command: str,
    load_average_start: Sequence[float],
    torch_threads: int | str | None = None,
    commit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a page shows about the run that is ending now; store it as the record's "run".

    Args:
        command: `command_line(...)` of the run.
        load_average_start: `os.getloadavg()` taken before measuring.
        torch_threads: threads torch used; None reads `torch.get_num_threads()` when torch is
            imported (a script that runs torch only in subprocesses passes their count).
        commit: `git_commit()` taken before measuring, for a run long enough that the tree may
            move while it runs (subprocesses load the code they start with); None: now.

    Returns:
        {"command", "date", "commit": {"hash", "dirty"}, "machine": {...}, "libraries": {...}}.
    """
    if torch_threads is None and "torch" in sys.modules:
        torch_threads = sys.modules["torch"].get_num_threads()
    return {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit() if commit is None else commit,
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch_threads,
            "load_average_start": [round(x, 2) for x in load_average_start],
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
        },
        "libraries": library_versions(),
    }


def git_commit() -> dict[str, Any]:
    """Short hash of HEAD and whether files differ from it (the pages themselves do not count)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()

    return {
        "hash": git("rev-parse", "--short", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", ".", ":(exclude)docs/results")),
    }


def library_versions() -> dict[str, str]:
    """Python and the installed versions of `LIBRARIES` (importlib.metadata, nothing imported)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def measure_and_write(
    args: argparse.Namespace,
    argv: Sequence[str],
    script: str | os.PathLike[str],
    measure: Callable[[], dict[str, Any]],
    summary: Callable[[dict[str, Any]], str],
    write_results_page: Callable[[dict[str, Any], str], str],
) -> None:
    """The common tail of a timing script: `--page-from` rewrites the page from a record; otherwise
    set `--threads`, run `measure`, stamp the record with its run context, print the summary, save
    the record to `--json` and write the page (unless `--no-page`)."""
    if args.page_from:
        print(write_results_page(read_record(args.page_from), args.page_from))
        return
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    measured = measure()  # before the run context: its end load and date are after measuring
    record = {"run": run_context(command_line(script, argv), load_start), **measured}
    print(summary(record))
    save_record(record, args.json)
    if not args.no_page:
        print(write_results_page(record, args.json))


COMMAND_FILE = "command.txt"  # beside a measured file: the command that wrote it


def reused_command(file: Path, command: Sequence[str]) -> None:
    """Refuse to reuse a measured file that another command wrote (or that names none)."""
    saved = file.parent / COMMAND_FILE
    recorded = saved.read_text().strip() if saved.is_file() else None
    if recorded != shlex.join(command):
        raise Refusal(
            f"{file} was written by "
            + (f"`{recorded}`" if recorded else "a command it does not record")
            + f", not `{shlex.join(command)}`; remove {file.parent} to measure it again"
        )


def sfd_run(command: Sequence[str], quiet: bool = False) -> Callable[[], None]:
    """`command` (`sfd VERB ...`) as a call that runs it with this checkout's `sfd`, one thread."""

    def run() -> None:
        print("running:", shlex.join(command), flush=True)
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        python = [sys.executable, "-m", "sfd.cli", *command[1:]]
        output = subprocess.DEVNULL if quiet else None
        subprocess.run(python, cwd=REPO, env=env, check=True, stdout=output)

    return run


def measured_once(file: Path, command: Sequence[str], run: Callable[[], None]) -> None:
    """`run()` measures `command` into `file` unless `file` exists; an existing file is reused
    only when the command kept beside it (COMMAND_FILE) is this one, so a page never shows
    numbers under a command that did not produce them."""
    if file.exists():
        reused_command(file, command)
        return
    (file.parent / COMMAND_FILE).unlink(missing_ok=True)
    run()
    (file.parent / COMMAND_FILE).write_text(shlex.join(command) + "\n")


def save_record(record: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Write a JSON record (folders created), atomically."""
    _write_atomically(Path(path), json.dumps(record, indent=2) + "\n")


def read_record(path: str | os.PathLike[str], flag: str = "--page-from") -> dict[str, Any]:
    """A record written by `save_record`; one clear error, naming the option `flag` that gave
    it, if it is missing or has no "run"."""
    if not Path(path).is_file():
        raise Refusal(f"{flag} {path}: no such file")
    try:
        record = json.loads(Path(path).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise Refusal(f"{flag} {path}: not a JSON record ({error})") from error
    if not isinstance(record, dict) or "run" not in record:
        raise Refusal(
            f"{path} has no 'run' section (command, date, commit, machine): it was written before "
            "results pages existed; run the benchmark again"
        )
    return record


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as a markdown table; cells are `str()`-ed, None shown as "–", `|` escaped."""

    def cell(value: Any) -> str:
        return "–" if value is None else str(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_page(
    name: str,
    title: str,
    command: str,
    json_file: str,
    record: Mapping[str, Any],
    sections: Mapping[str, str],
    results_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Write docs/results/<name>.md (atomically): provenance, then the body sections.

    Args:
        name: page name, without `.md`.
        title: the page's heading.
        command: the command line that produced the record, as typed from the repository root
            (`python experiments/<script>.py ...`).
        json_file: the record's path as the command line named it (shown as `shown_path` shows
            it, never resolved otherwise).
        record: the script's JSON record; its "run" section comes from `run_context`.
        sections: {heading: markdown} in page order (tables rendered from the record).
        results_dir: where pages go; default `RESULTS_DIR` (docs/results/).

    Returns:
        the page's path.
    """
    json_file = ", ".join(shown_path(file) for file in json_file.split(", "))
    words = shlex.split(command)
    if len(words) < 2 or words[0] != "python" or not words[1].startswith("experiments/"):
        raise ValueError(f"command {command!r} must start with `python experiments/<script>.py`")
    run = record["run"]
    machine, commit = run["machine"], run["commit"]
    libraries = ", ".join(f"{k} {v}" for k, v in run["libraries"].items())
    lines = [
        f"# {title}",
        "",
        f"Written by `python {words[1]}` from `{json_file}`; do not edit by hand.",
        "",
        "```bash",
        command,
        "```",
        "",
        markdown_table(
            ("run", ""),
            [
                ("date", run["date"]),
                ("commit", commit["hash"] + (" + uncommitted changes" if commit["dirty"] else "")),
                (
                    "machine",
                    f"{machine['cpu_count']} CPUs ({machine['processor']}, {machine['platform']}), "
                    f"torch threads {machine['torch_threads'] or 'torch default'}",
                ),
                (
                    "load average (1, 5, 15 min)",
                    f"{_load(machine['load_average_start'])} at the start, "
                    f"{_load(machine['load_average_end'])} at the end",
                ),
                ("libraries", libraries),
            ],
        ),
    ]
    for heading, body in sections.items():
        lines += ["", f"## {heading}", "", body.rstrip("\n")]
    text = "\n".join(lines) + "\n"
    temporary = tempfile.gettempdir().rstrip("/") + "/"
    if temporary in text and temporary not in command + json_file:
        raise ValueError(
            f"page {name!r} shows a temporary path (under {temporary}) that its command line "
            "does not name; show run folders as the command line gave them"
        )
    path = Path(results_dir if results_dir is not None else RESULTS_DIR) / f"{name}.md"
    _write_atomically(path, text)
    return path


def fill_marked_block(name: str, text: str, path: str | os.PathLike[str] | None = None) -> bool:
    """Replace what stands between `<!-- results:NAME -->` and `<!-- /results:NAME -->` in a page.

    The README's headline table is such a block: the script that writes a results page also
    writes the numbers the front door shows, beside the command that produced them.

    Args:
        name: the block's name.
        text: its new content (markdown).
        path: the page holding the block (default: README.md).

    Returns:
        whether the page holds the block (a page without it, or no page, is left as it is).
    """
    page = Path(path) if path is not None else REPO / "README.md"
    if not page.is_file():
        return False
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    current = page.read_text(encoding="utf-8")
    if start not in current or end not in current:
        return False
    head, rest = current.split(start, 1)
    _, tail = rest.split(end, 1)
    _write_atomically(page, f"{head}{start}\n{text.strip()}\n{end}{tail}")
    return True


def number(value: float | None, digits: int = 2) -> str | None:
    """A table cell: `value` with `digits` decimals; None for a missing (None or NaN) value."""
    if value is None or value != value:  # NaN
        return None
    return f"{value:.{digits}f}"


def _load(values: Sequence[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def _write_atomically(path: Path, text: str) -> None:
    """Write a temporary file beside `path`, then rename it over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        follow_umask(staging)  # mkstemp makes 0600 files
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise
