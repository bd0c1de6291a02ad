"""What the sweep scripts share: `name:key=value,...` settings, a quality-trace callback and the
results page docs/results/one_step_quality.md written from their JSON-lines records."""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from results_page import Refusal, command_line, markdown_table, number, run_context, write_page

PAGE = "one_step_quality"


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
    add(
        "--page-from",
        nargs="+",
        type=Path,
        metavar="FILE.jsonl",
        help=f"measure nothing: write docs/results/{PAGE}.md from these --results files",
    )
    add("configs", nargs="*", help="name:key=value,... (sfd fit keys)")


def parse_sweep_options(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    measuring_needs: Sequence[str] = (),
) -> argparse.Namespace | None:
    """Parse, check --stage1 for two-stage runs and set the thread count.

    With `--page-from` the page is written here and None returned (measure nothing); otherwise at least one
    configuration and every option in `measuring_needs` (attribute names) must be given."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parser.parse_args(argv)
    options.argv = argv
    if options.page_from:
        print(write_quality_page(options.page_from, parser.prog, argv))
        return None
    if not options.configs:
        parser.error("give at least one name:key=value,... configuration (or --page-from)")
    for need in measuring_needs:
        if getattr(options, need) is None:
            parser.error(f"--{need.replace('_', '-')} is required unless --page-from is given")
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
        self.seconds = 0.0  # spent evaluating (to subtract from the training time)

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
        start = time.perf_counter()
        point: dict[str, Any] = {"iteration": step}
        for name, network in [("ema", module.export_generator)] + [
            (f"ema{decay:g}", average)
            for decay, average in zip(self.decays, self.averages, strict=True)
        ]:
            point[name] = self.evaluate(network)
        module.generator.train()
        self.points.append(point)
        self.seconds += time.perf_counter() - start
        print(f"  it {step}: {point}", flush=True)


def sweep_row(
    script: str, argv: Sequence[str], spec: str, load_start: Sequence[float], **fields: Any
) -> dict[str, Any]:
    """One --results line: the run's fields plus its command, spec and run context."""
    command = command_line(script, argv)
    return {"spec": spec, "command": command, "run": run_context(command, load_start), **fields}


def write_quality_page(files: Sequence[Path], script: str, argv: Sequence[str]) -> Path:
    """docs/results/one_step_quality.md: every run of these --results files under its command.

    A section per command (in the files' order): a table of the runs (their `name:key=value`
    settings, iterations, UA, remain accuracy, remain FID, FID / teacher's, training seconds
    without evaluations, load average), then the quality traces of runs evaluated during training
    (FID / teacher's of the shipped EMA generator and the extra EMA decays per iteration)."""
    rows = [json.loads(line) for file in files for line in Path(file).read_text().splitlines()]
    if not rows:
        raise Refusal(f"{', '.join(map(str, files))}: no runs")
    by_command: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_command.setdefault(row["command"], []).append(row)
    sections = {
        "How to read it": (
            "One section per sweep command, in the order run. Each run is `name:key=value,...` over "
            "the demo's packaged presets at the commit shown (`(preset)`: no change), started from "
            "the cached teacher (`--stage distill`: stage 1; `two_stage`: stage 2 from the stage-1 "
            "folder named). UA, remain accuracy and FID are the shipped (EMA) generator's at the "
            "end, with the demo's evaluation protocol; FID / teacher divides by the teacher's "
            "remain FID named in the section; train s is the training time without the "
            "evaluations during it, on a shared 2-core machine (load average in the last column)."
        )
    }
    for index, (command, runs) in enumerate(by_command.items(), 1):
        first = runs[0]
        body = [
            "```bash",
            command,
            "```",
            "",
            f"{first['run']['date']}, commit {first['run']['commit']['hash']}, stage "
            f"`{first['stage']}`"
            + (f" from `{first['stage1']}`" if first.get("stage1") else "")
            + f", teacher's remain FID {number(first['teacher_fid'])} "
            + ("(the `--demo` run's multi-step teacher)." if first.get("demo") else "(DDIM-50)."),
            "",
            markdown_table(
                (
                    "run",
                    "settings",
                    "iterations",
                    "UA",
                    "remain acc.",
                    "FID",
                    "FID / teacher",
                    "train s",
                    "load",
                ),  # fmt: skip
                [_run_cells(row) for row in runs],
            ),
        ]
        traced = [row for row in runs if len(row.get("quality_trace", [])) > 1]
        if traced:
            body += ["", "FID / teacher's FID during training:", ""]
            body.append(_trace_table(traced))
        sections[f"{index}. {', '.join(row['name'] for row in runs)}"] = "\n".join(body)
    record = {"run": rows[-1]["run"]}
    page_command = command_line(script, argv)
    return write_page(
        PAGE,
        "One-step quality: what limits it",
        page_command,
        ", ".join(map(str, files)),
        record,
        sections,
    )


def _run_cells(row: dict[str, Any]) -> list[Any]:
    settings = row["spec"].partition(":")[2] or "(preset)"
    load = row["run"]["machine"]
    return [
        row["name"],
        f"`{settings}`",
        row["settings"]["iterations"],
        f"{100 * row['ua']:.1f} %",
        f"{100 * row['remain_accuracy']:.1f} %",
        number(row["fid_remain"]),
        number(row["fid_remain"] / row["teacher_fid"]),
        None if row["train_seconds"] is None else round(row["train_seconds"]),
        f"{load['load_average_start'][0]:.1f}–{load['load_average_end'][0]:.1f}",
    ]


def _trace_table(rows: list[dict[str, Any]]) -> str:
    extra = sorted({key for row in rows for point in row["quality_trace"] for key in point})
    extra = [key for key in extra if key not in ("iteration", "ema")]
    table = []
    for row in rows:
        for point in row["quality_trace"]:
            cells = [row["name"], point["iteration"], f"{row['settings']['model']['ema_decay']:g}"]
            for key in ["ema", *extra]:
                value = point.get(key)
                ratio = None if value is None else value["fid_remain"] / row["teacher_fid"]
                cells.append(number(ratio))
            table.append(cells)
    header = ["run", "iteration", "EMA decay", "shipped EMA", *(f"EMA {k[3:]}" for k in extra)]
    return markdown_table(header, table)
