"""The phases of one application run: each announced on stderr, timed, and recorded.

Every application (`sfd demo`, `sfd compare`, `sfd demo-text`) is a list of phases. A phase is
announced as `[sfd demo] 3/6 stage 1: ...`, its wall time is recorded under a key, and the
report's protocol carries the seconds as `phase_seconds` (with `total`, counted from the start of
the run) and, where the app records them, the process's CPU seconds as `phase_cpu_seconds`. Artefacts that take minutes are built once per content hash (`harness.cache`); `built`
says whether one was reused or trained now.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def announce(tool: str, text: str) -> None:
    """One line on stderr: `[sfd compare] 3/9 ESD`."""
    print(f"[{tool}] {text}", file=sys.stderr, flush=True)


@contextmanager
def timed(
    seconds: dict[str, float], key: str, cpu_seconds: dict[str, float] | None = None
) -> Iterator[None]:
    """Record the wall time of the block in `seconds[key]` (when the block completes) and, given
    `cpu_seconds`, the process's CPU time in `cpu_seconds[key]`."""
    clock, cpu = time.perf_counter(), time.process_time()
    yield
    seconds[key] = time.perf_counter() - clock
    if cpu_seconds is not None:
        cpu_seconds[key] = time.process_time() - cpu


class Phases:
    """Announce, time and record the phases of one run.

    Args:
        tool: the announcing command, e.g. "sfd demo".
        total: the number of phases the run announces.
    """

    def __init__(self, tool: str, total: int) -> None:
        self.tool = tool
        self.total = total
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}  # the process's CPU time (all its threads)
        self._count = 0
        self._started = time.perf_counter()
        self._cpu_started = time.process_time()

    @contextmanager
    def phase(self, key: str | None, title: str) -> Iterator[None]:
        """Announce the next phase `k/total title`; time the block into `seconds[key]`.

        Args:
            key: the phase's key in `phase_seconds` (None: announced, not timed).
            title: what the phase does.
        """
        self._count += 1
        self.say(f"{self._count}/{self.total} {title}")
        if key is None:
            yield
            return
        with timed(self.seconds, key, self.cpu_seconds):
            yield

    def say(self, text: str) -> None:
        """A line of the run's own, between phase announcements."""
        announce(self.tool, text)

    def built(self, what: str, folder: Path, reused: bool) -> None:
        """Say whether a cached artefact was reused or trained now, and where it is."""
        self.say(f"{what} {'reused from' if reused else 'trained into'} {folder}")

    def finish(self) -> dict[str, float]:
        """The seconds of every timed phase and `total` since the run started, rounded to 0.1 s."""
        self.seconds["total"] = time.perf_counter() - self._started
        return {key: round(value, 1) for key, value in self.seconds.items()}

    def finish_cpu(self) -> dict[str, float]:
        """The CPU seconds of every timed phase and `total`, rounded to 0.1 s: on a shared machine
        the work a phase did, where its wall time also counts the other processes' load."""
        self.cpu_seconds["total"] = time.process_time() - self._cpu_started
        return {key: round(value, 1) for key, value in self.cpu_seconds.items()}
