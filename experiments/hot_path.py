"""One `SFDModule` iteration against a plain PyTorch loop of the same math, in alternating blocks.

    python experiments/hot_path.py [--threads 1] [--block 10] [--blocks 8] [--batch-size 8] \
        [--json runs/hot_path/hot_path.json]
    python experiments/hot_path.py --page-from runs/hot_path/hot_path.json

Both sides train the tests' tiny 8×8 class-conditional teacher's generator and fake score with
the same batch, losses, Adam settings, value clipping and EMA. The module runs in a real
`lightning.Trainer` fit (no logger, progress bar or checkpoints: what the framework and the
module add themselves); inside that fit, after every `--block` module iterations, a callback
runs `--block` iterations of a hand-written loop on its own copies of the networks. A module
block is timed from the start of its first batch to the start of the batch after its last (the
whole training loop between them), a plain block around its iterations, each on the wall clock
and by the CPU time of the process. Alternating blocks share whatever load the machine carries at
that moment; the ratio of each pair and their median are reported. Writes the JSON record and
docs/results/hot_path.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from results_page import (
    add_page_arguments,
    markdown_table,
    measure_and_write,
    number,
    write_page,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import save_tiny_teacher  # noqa: E402

from sfd.core.conditions import ClassConditions  # noqa: E402
from sfd.core.losses import fake_score_loss, generator_loss  # noqa: E402
from sfd.core.module import SFDModule  # noqa: E402
from sfd.core.sigma import UniformTimestepSigma  # noqa: E402
from sfd.teachers import PretrainedVPTeacher  # noqa: E402

LR = 1e-5


class PlainLoop:
    """The SFD iteration (docs/method.md §4) as a user would write it by hand, nothing else."""

    def __init__(self, module: SFDModule) -> None:
        hp = module.hparams
        self.hp = hp
        self.teacher = module.teacher
        self.conditions = module.conditions
        self.sampler = module.sigma_sampler
        self.generator = copy.deepcopy(module.generator)
        self.fake = copy.deepcopy(module.fake_score)
        self.ema = copy.deepcopy(module.ema)
        self.fake_opt = torch.optim.Adam(self.fake.parameters(), lr=LR, betas=(0.0, 0.999))
        self.gen_opt = torch.optim.Adam(self.generator.parameters(), lr=LR, betas=(0.0, 0.999))
        self.shape = (hp.batch_size, *self.teacher.sample_shape)
        self.step = 0

    def draws(self, rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = torch.randn(self.shape, generator=rng)
        sigma = self.sampler.sample(self.hp.batch_size, rng, self.teacher.sigma_table)
        return z, sigma, torch.randn(self.shape, generator=rng)

    def iteration(self) -> None:
        hp = self.hp
        rng = torch.Generator().manual_seed(self.step)
        conds = self.conditions.sample(hp.batch_size, rng)

        self.generator.eval().requires_grad_(False)
        self.fake.train().requires_grad_(True)
        loss = 0.0
        for weight, cond in (
            (hp.lambda_sg_remain, conds.remain),
            (hp.lambda_sg_forget, conds.forget),
        ):
            z, sigma, noise = self.draws(rng)
            with torch.no_grad():
                x_g = self.generator(z, cond)
            x = x_g + sigma.view(-1, 1, 1, 1) * noise
            loss = loss + weight * fake_score_loss(self.fake(x, sigma, cond), x_g, sigma).mean()
        self.fake_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(self.fake.parameters(), hp.fake_grad_clip)
        self.fake_opt.step()

        self.generator.train().requires_grad_(True)
        self.fake.eval().requires_grad_(False)
        loss = 0.0
        pairs = ((hp.lambda_g_remain, conds.remain, conds.remain),)
        pairs += ((hp.lambda_g_forget, conds.forget, conds.override),)
        for weight, cond, teacher_cond in pairs:
            z, sigma, noise = self.draws(rng)
            x_g = self.generator(z, cond)
            x = x_g + sigma.view(-1, 1, 1, 1) * noise
            term = generator_loss(
                self.teacher(x, sigma, teacher_cond), self.fake(x, sigma, cond), x_g, hp.alpha
            )
            loss = loss + weight * term.mean()
        self.gen_opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(self.generator.parameters(), hp.generator_grad_clip)
        self.gen_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(
                list(self.ema.parameters()),
                [p.detach() for p in self.generator.parameters()],
                1.0 - hp.ema_decay,
            )
        self.step += 1


class AlternatingBlocks(pl.Callback):
    """Times module blocks batch start to batch start; runs a plain block between them.

    Each block is timed twice: wall-clock seconds, and the CPU seconds this process used
    (`time.process_time`), which on a loaded machine leave out the time other processes ran.
    """

    def __init__(self, block: int, warmup: int) -> None:
        self.block = block
        self.warmup = warmup
        self.module_seconds: list[float] = []
        self.plain_seconds: list[float] = []
        self.module_cpu_seconds: list[float] = []
        self.plain_cpu_seconds: list[float] = []
        self._block_start: tuple[float, float] | None = None
        self._in_block = 0
        self.plain: PlainLoop | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.plain = PlainLoop(pl_module)
        for _ in range(self.warmup):
            self.plain.iteration()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step < self.warmup:
            return
        now = clocks()
        if self._block_start is not None and self._in_block == self.block:
            self.module_seconds.append((now[0] - self._block_start[0]) / self.block)
            self.module_cpu_seconds.append((now[1] - self._block_start[1]) / self.block)
            assert self.plain is not None
            start = clocks()
            for _ in range(self.block):
                self.plain.iteration()
            end = clocks()
            self.plain_seconds.append((end[0] - start[0]) / self.block)
            self.plain_cpu_seconds.append((end[1] - start[1]) / self.block)
            self._block_start, self._in_block = None, 0
        if self._block_start is None:
            self._block_start = clocks()
        self._in_block += 1


def clocks() -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of this process) now."""
    return time.perf_counter(), time.process_time()


def measure(batch_size: int, block: int, blocks: int, warmup: int) -> dict[str, Any]:
    """Fit the module with a plain block after each module block; seconds per iteration of each."""
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
            fake_optimizer=lambda p: torch.optim.Adam(p, lr=LR, betas=(0.0, 0.999)),
            generator_optimizer=lambda p: torch.optim.Adam(p, lr=LR, betas=(0.0, 0.999)),
        )
        timer = AlternatingBlocks(block, warmup)
        trainer = pl.Trainer(
            max_steps=warmup + block * blocks + 1,  # the last batch start closes the last block
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[timer],
        )
        trainer.fit(module)
    wall = list(zip(timer.module_seconds, timer.plain_seconds, strict=True))
    cpu = list(zip(timer.module_cpu_seconds, timer.plain_cpu_seconds, strict=True))
    return {
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "batch_size": batch_size,
        "warmup": warmup,
        "block": block,
        "pairs": [
            {
                "module": round(m, 5),
                "plain": round(p, 5),
                "ratio": round(m / p, 4),
                "module_cpu": round(mc, 5),
                "plain_cpu": round(pc, 5),
                "cpu_ratio": round(mc / pc, 4),
            }
            for (m, p), (mc, pc) in zip(wall, cpu, strict=True)
        ],
        "median_ratio": statistics.median(m / p for m, p in wall),
        "total_ratio": sum(timer.module_seconds) / sum(timer.plain_seconds),
        "median_module_seconds": statistics.median(timer.module_seconds),
        "median_plain_seconds": statistics.median(timer.plain_seconds),
        "median_module_cpu_seconds": statistics.median(timer.module_cpu_seconds),
        "median_plain_cpu_seconds": statistics.median(timer.plain_cpu_seconds),
        "median_cpu_ratio": statistics.median(m / p for m, p in cpu),
        "total_cpu_ratio": sum(timer.module_cpu_seconds) / sum(timer.plain_cpu_seconds),
    }


def summary(record: dict[str, Any]) -> str:
    """The one-line result the script prints."""
    return (
        f"{len(record['pairs'])} block pairs of {record['block']} iterations, batch "
        f"{record['batch_size']}+{record['batch_size']}, torch threads "
        f"{record['run']['machine']['torch_threads']}: module {record['median_module_seconds']:.4f} "
        f"s/iteration, plain loop {record['median_plain_seconds']:.4f}; ratio median "
        f"{record['median_ratio']:.3f}×, over all blocks {record['total_ratio']:.3f}×"
        + (
            f"; CPU time ratio median {record['median_cpu_ratio']:.3f}×, over all blocks "
            f"{record['total_cpu_ratio']:.3f}×"
            if "median_cpu_ratio" in record
            else ""
        )
    )


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/hot_path.md from a record of `main` (records before CPU times show "–")."""

    def seconds(value: float | None) -> str | None:
        return number(value, 4)

    def ratio(value: float | None) -> str | None:
        cell = number(value, 3)
        return None if cell is None else f"{cell}×"

    pairs = markdown_table(
        ("block pair", "SFDModule s/iteration", "plain loop s/iteration", "ratio",
         "SFDModule CPU s/iteration", "plain loop CPU s/iteration", "CPU ratio"),
        [
            (i + 1, seconds(p["module"]), seconds(p["plain"]), ratio(p["ratio"]),
             seconds(p.get("module_cpu")), seconds(p.get("plain_cpu")), ratio(p.get("cpu_ratio")))
            for i, p in enumerate(record["pairs"])
        ],
    )  # fmt: skip
    result = markdown_table(
        ("clock", "SFDModule s/iteration (median)", "plain loop s/iteration (median)",
         "median ratio", "ratio over all blocks", "target"),
        [
            ("wall", seconds(record["median_module_seconds"]),
             seconds(record["median_plain_seconds"]), ratio(record["median_ratio"]),
             ratio(record["total_ratio"]), "≤ 1.0×"),
            ("CPU time of the process", seconds(record.get("median_module_cpu_seconds")),
             seconds(record.get("median_plain_cpu_seconds")), ratio(record.get("median_cpu_ratio")),
             ratio(record.get("total_cpu_ratio")), "≤ 1.0×"),
        ],
    )  # fmt: skip
    setting = (
        f"Teacher {record['teacher_params']:,} parameters, batch {record['batch_size']} remain + "
        f"{record['batch_size']} forget, {record['block']} iterations per block, "
        f"{len(record['pairs'])} block pairs."
    )
    return write_page(
        "hot_path",
        "SFDModule against a plain PyTorch loop (tiny configuration, CPU)",
        record["run"]["command"],
        json_file,
        record,
        {
            "Cost of one iteration": (
                "One `SFDModule` iteration (one fake-score and one generator update, in a real "
                "`lightning.Trainer` fit without logger, progress bar or checkpoints, timed from "
                "batch start to batch start) against the same iteration written as a plain "
                "PyTorch loop (same teacher, batch, losses, Adam, value clipping and EMA, its own "
                "copies of the networks), in alternating blocks inside the same process. Each "
                "block is timed on the wall clock and by the CPU time the process used: on a "
                "loaded machine the CPU time leaves out the time other processes ran. The "
                "module's extra work is Lightning's loop and hooks (batch fetch, hook calls, "
                "the backward and optimizer-step wrappers, clipping through the precision "
                "plugin), the non-finite watch (on the CPU one read of the loss terms and one "
                "fused check of every gradient per update; the count and the repair only for an "
                "update with a non-finite element; on an accelerator they run on the device, "
                "never read back) and logging at the logger's interval. Where the plain loop "
                "walks the module trees on every iteration (`.train()` / `.eval()`, "
                "`requires_grad_`, the EMA's `parameters()`), the module replays cached plans "
                "and tensor lists, rebuilt whenever a network changes."
                "\n\n" + setting + "\n\n" + result
            ),
            "Block pairs": pairs,
        },
        results_dir,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=8, help="remain and forget batch each")
    parser.add_argument("--block", type=int, default=10, help="iterations per block")
    parser.add_argument("--blocks", type=int, default=8, help="block pairs")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", default="runs/hot_path/hot_path.json", help="the record")
    add_page_arguments(parser)
    args = parser.parse_args(argv)
    measure_and_write(
        args,
        argv,
        __file__,
        lambda: measure(args.batch_size, args.block, args.blocks, args.warmup),
        summary,
        write_results_page,
    )


if __name__ == "__main__":
    main()
