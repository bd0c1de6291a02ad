"""Seconds per SFD iteration of the tiny config (and any other) on this machine.

    python experiments/iteration_time.py [--batch-size 8] [--iterations 30] [--warmup 5] \
        [--threads N] [--json runs/iteration_time/iteration_time.json]
    python experiments/iteration_time.py --page-from runs/iteration_time/iteration_time.json

Builds the tests' tiny 8×8 class-conditional teacher in a temporary folder, runs a real
`lightning.Trainer` fit on `SFDModule`, and reports the median wall time per iteration (one
fake-score update + one generator update) after warm-up. Writes the JSON record and the page
docs/results/iteration_time.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from results_page import (
    add_page_arguments,
    markdown_table,
    measure_and_write,
    write_page,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import save_tiny_teacher  # noqa: E402

from sfd.core.conditions import ClassConditions  # noqa: E402
from sfd.core.module import SFDModule  # noqa: E402
from sfd.core.sigma import UniformTimestepSigma  # noqa: E402
from sfd.teachers import PretrainedVPTeacher  # noqa: E402


class IterationTimer(pl.Callback):
    """Wall time of each training batch, and the CPU time of this process over it (`cpu_times`:
    less sensitive than wall time to other processes on a shared machine)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu_times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self.start)
        self.cpu_times.append(time.process_time() - self.cpu_start)


def measure(batch_size: int, iterations: int, warmup: int) -> dict[str, Any]:
    """Fit SFD on the tiny teacher; seconds of each iteration after `warmup`."""
    with tempfile.TemporaryDirectory() as tmp:
        teacher = PretrainedVPTeacher(str(save_tiny_teacher(Path(tmp) / "teacher")))
        module = SFDModule(
            teacher,
            ClassConditions(0, 1),
            UniformTimestepSigma(38, 712),
            batch_size=batch_size,
            lambda_sg_forget=1.0,
            lambda_g_forget=1.0,
            ema_decay=0.99,
        )
        timer = IterationTimer()
        trainer = pl.Trainer(
            max_steps=warmup + iterations,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module)
    measured = timer.times[warmup:]
    return {
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "batch_size": batch_size,
        "warmup": warmup,
        "seconds_per_iteration": {
            "median": statistics.median(measured),
            "min": min(measured),
            "max": max(measured),
            "n": len(measured),
        },
        "iteration_seconds": [round(t, 5) for t in measured],
    }


def summary(record: dict[str, Any]) -> str:
    """The one-line result the script prints."""
    timing = record["seconds_per_iteration"]
    return (
        f"teacher params {record['teacher_params']}, batch {record['batch_size']}+"
        f"{record['batch_size']}, torch threads {record['run']['machine']['torch_threads']}: "
        f"median {timing['median']:.4f} s/iteration "
        f"(min {timing['min']:.4f}, max {timing['max']:.4f}, n={timing['n']})"
    )


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/iteration_time.md from a record of `main`."""
    timing = record["seconds_per_iteration"]
    table = markdown_table(
        ("teacher params", "batch (remain + forget)", "warm-up", "timed iterations",
         "median s/iteration", "fastest s", "slowest s"),
        [(
            f"{record['teacher_params']:,}", f"{record['batch_size']} + {record['batch_size']}",
            record["warmup"], timing["n"], f"{timing['median']:.4f}", f"{timing['min']:.4f}",
            f"{timing['max']:.4f}",
        )],
    )  # fmt: skip
    return write_page(
        "iteration_time",
        "Seconds per SFD iteration (tiny configuration, CPU)",
        record["run"]["command"],
        json_file,
        record,
        {
            "Wall time per iteration": (
                "One iteration is one fake-score update and one generator update of `SFDModule` "
                "in a real `lightning.Trainer` fit on the tests' tiny 8×8 class-conditional "
                "teacher; the first iterations are warm-up and not timed.\n\n" + table
            )
        },
        results_dir,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="remain and forget batch each")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--json", default="runs/iteration_time/iteration_time.json", help="the record"
    )
    add_page_arguments(parser)
    args = parser.parse_args(argv)
    measure_and_write(
        args,
        argv,
        __file__,
        lambda: measure(args.batch_size, args.iterations, args.warmup),
        summary,
        write_results_page,
    )


if __name__ == "__main__":
    main()
