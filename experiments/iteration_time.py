"""Seconds per SFD iteration of the tiny config (and any other) on this machine.

    python experiments/iteration_time.py [--batch-size 8] [--iterations 30] [--warmup 5]

Builds the tests' tiny 8×8 class-conditional teacher in a temporary folder, runs a real
`lightning.Trainer` fit on `SFDModule`, and reports the median wall time per iteration (one
fake-score update + one generator update) after warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import save_tiny_teacher  # noqa: E402

from sfd.core.conditions import ClassConditions  # noqa: E402
from sfd.core.module import SFDModule  # noqa: E402
from sfd.core.sigma import UniformTimestepSigma  # noqa: E402
from sfd.teachers import PretrainedVPTeacher  # noqa: E402


class IterationTimer(pl.Callback):
    """Wall time of each training batch."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self.start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="remain and forget batch each")
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        teacher = PretrainedVPTeacher(str(save_tiny_teacher(Path(tmp) / "teacher")))
        module = SFDModule(
            teacher,
            ClassConditions(0, 1),
            UniformTimestepSigma(38, 712),
            batch_size=args.batch_size,
            lambda_sg_forget=1.0,
            lambda_g_forget=1.0,
            ema_decay=0.99,
        )
        timer = IterationTimer()
        trainer = pl.Trainer(
            max_steps=args.warmup + args.iterations,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module)
    measured = timer.times[args.warmup :]
    params = sum(p.numel() for p in teacher.parameters())
    print(
        f"teacher params {params}, batch {args.batch_size}+{args.batch_size}, "
        f"torch threads {torch.get_num_threads()}: median {statistics.median(measured):.4f} s/iteration "
        f"(min {min(measured):.4f}, max {max(measured):.4f}, n={len(measured)})"
    )


if __name__ == "__main__":
    main()
