"""What the sweep scripts share: `name:key=value,...` settings and a quality-trace callback."""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch


def parse(spec: str) -> tuple[str, list[str]]:
    """`name:key=value,...` -> (name, ["--key", "value", ...]) (`sfd fit` options)."""
    name, _, assignments = spec.partition(":")
    args = []
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        args += [f"--{key}", value]
    return name, args


def add_sweep_options(parser: argparse.ArgumentParser) -> None:
    """The options both SFD sweeps take: stage, stage-1 folders, trace, threads, configs."""
    add = parser.add_argument
    add("--stage", choices=("sfd", "distill", "two_stage"), default="sfd")
    add("--stage1", type=Path, help="stage-1 folder (generator/, fake_score/, run.json)")
    add("--save-stage1", type=Path, help="save distill runs here, one per name")
    add("--eval-every", type=int, help="evaluate every N iterations")
    add("--extra-ema", default="", help="more EMA decays to trace, e.g. 0.99,0.995")
    add("--threads", type=int, help="torch CPU threads")
    add("configs", nargs="+", help="name:key=value,... (sfd fit keys)")


def parse_sweep_options(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """Parse, check --stage1 for two-stage runs and set the thread count."""
    options = parser.parse_args()
    if options.stage == "two_stage" and options.stage1 is None:
        parser.error("--stage two_stage needs --stage1")
    if options.threads:
        torch.set_num_threads(options.threads)
    options.extra_ema = [float(d) for d in options.extra_ema.split(",") if d]
    return options


class QualityTrace(pl.Callback):
    """`evaluate(generator)` of the shipped (EMA) generator every `every` iterations.

    `extra_ema` decays keep further exponential moving averages of the generator beside the
    module's own, so one run shows how the EMA decay changes quality.

    Args:
        every: iterations between evaluations (the last iteration is always evaluated).
        evaluate: one-step generator -> JSON-ready metrics (e.g. UA, remain accuracy, FID).
        extra_ema: further EMA decays to trace.
    """

    def __init__(
        self, every: int, evaluate: Callable[[Any], dict[str, Any]], extra_ema: list[float]
    ) -> None:
        self.every = every
        self.evaluate = evaluate
        self.decays = extra_ema
        self.averages: list[Any] = []
        self.points: list[dict[str, Any]] = []

    def on_train_start(self, trainer, module) -> None:  # noqa: ANN001
        self.averages = [copy.deepcopy(module.generator).eval() for _ in self.decays]

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        live = [p.detach() for p in module.generator.parameters()]
        for decay, average in zip(self.decays, self.averages, strict=True):
            torch._foreach_lerp_(list(average.parameters()), live, 1.0 - decay)
        step = module.global_step
        if step % self.every and step < trainer.max_steps:
            return
        point: dict[str, Any] = {"iteration": step}
        for name, network in [("ema", module.export_generator)] + [
            (f"ema{decay:g}", average)
            for decay, average in zip(self.decays, self.averages, strict=True)
        ]:
            point[name] = self.evaluate(network)
        module.generator.train()
        self.points.append(point)
        print(f"  it {step}: {point}", flush=True)
