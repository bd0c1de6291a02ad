"""Stage 1 of the class digits demo as adapters: what limits the shared base's stage-1 quality.

    python experiments/shared_base_stage1.py --teacher DIR --classifier DIR --threads 1 \
        --eval-every 200 --output runs/sb-stage1/stage1.jsonl \
        "default:" "lr4x:model.generator_optimizer.init_args.lr=1.2e-3"
    python experiments/shared_base_stage1.py --page-from runs/sb-stage1/stage1.jsonl

Each argument is `name:key=value,...` over the demo's stage-1 settings (the packaged preset and
its stage-1 overlay, `sfd fit` keys) with `--model.adapters.rank RANK` added (a `full` name
prefix, e.g. "full:", runs full copies instead). Every `--eval-every` iterations three
generators of the same run are evaluated (remain FID over the teacher's DDIM-50 FID, remain
accuracy): the raw generator, the shipped EMA (the module's own), and a reference EMA of the
merged weights: W0 + EMA_t(ΔW_t) with ΔW_t = s·B_t·A_t of every adapted layer (dense, beside the
run), the average full copies ship. Appends one JSON line per run to --output; `--page-from`
writes docs/results/shared_base_stage1.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from results_page import command_line, markdown_table, run_context, write_page
from sweep_tools import parse

from sfd.apps.data.images import load_images, train_heldout_split
from sfd.apps.demo.run import ClassRunSettings
from sfd.apps.harness.stages import train_sfd
from sfd.core.generator import OneStepGenerator
from sfd.core.module import ema_decay_at
from sfd.eval.classifier import load_classifier
from sfd.eval.evaluate import ddim_sampler, evaluate_sampler, one_step_sampler
from sfd.teachers.adapter_settings import EMA_ADAPTER, GENERATOR_ADAPTER
from sfd.teachers.adapters import low_rank_lerp
from sfd.teachers.unet import PretrainedVPTeacher

PAGE = "shared_base_stage1"


def tuner_layers(network: torch.nn.Module) -> dict[str, BaseTunerLayer]:
    return {n: m for n, m in network.named_modules() if isinstance(m, BaseTunerLayer)}


def merged_copy(network: torch.nn.Module, deltas: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A plain copy of the adapted network's base with `deltas` added to its adapted weights."""
    copied = copy.deepcopy(network).float()
    layers = tuner_layers(copied)
    with torch.no_grad():
        for name, layer in layers.items():
            base = layer.get_base_layer()
            base.weight += deltas[name]
            parent_name, _, child = name.rpartition(".")
            setattr(copied.get_submodule(parent_name) if parent_name else copied, child, base)
    return copied.requires_grad_(False).eval()


class MergedTrace(pl.Callback):
    """Evaluate the raw, shipped-EMA and merged-EMA generators every `every` iterations."""

    def __init__(self, every: int, evaluate: Any) -> None:
        self.every = every
        self.evaluate = evaluate
        self.deltas: dict[str, torch.Tensor] = {}
        self.low_rank: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.points: list[dict[str, Any]] = []
        self.seconds = 0.0

    def _current(self, module: Any) -> dict[str, torch.Tensor]:
        return {
            n: layer.get_delta_weight(GENERATOR_ADAPTER).detach().float().clone()
            for n, layer in tuner_layers(module.teacher).items()
        }

    def on_train_start(self, trainer, module) -> None:  # noqa: ANN001
        if module.adapters is not None:
            self.deltas = self._current(module)
            self.low_rank = {
                n: tuple(f.detach().float().clone() for f in self._factors(layer))
                for n, layer in tuner_layers(module.teacher).items()
            }

    @staticmethod
    def _factors(layer: Any, name: str = GENERATOR_ADAPTER) -> tuple[torch.Tensor, torch.Tensor]:
        return layer.lora_B[name].weight, layer.lora_A[name].weight

    @torch.no_grad()
    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        step = module.global_step
        adapters = module.adapters is not None
        if adapters:
            decay = ema_decay_at(step, module.hparams.ema_decay, module.hparams.get("ema_power"))
            current = self._current(module)
            for name, delta in self.deltas.items():
                delta.lerp_(current[name], 1.0 - decay)
            for name, layer in tuner_layers(module.teacher).items():
                low_rank_lerp(self.low_rank[name], self._factors(layer), 1.0 - decay)
        if step % self.every and step < trainer.max_steps:
            return
        start = time.perf_counter()
        point: dict[str, Any] = {"iteration": step}
        point["raw"] = self.evaluate(module.generator)
        point["ema"] = self.evaluate(module.export_generator)
        if adapters:
            merged = merged_copy(module.teacher, self.deltas)
            gen = module.generator
            point["merged_ema"] = self.evaluate(OneStepGenerator(merged, gen.sigma_init))
            saved = {}  # the module's EMA adapter swapped for the low-rank merged EMA
            for name, layer in tuner_layers(module.teacher).items():
                ema_factors = self._factors(layer, EMA_ADAPTER)
                saved[name] = [f.detach().clone() for f in ema_factors]
                for target, value in zip(ema_factors, self.low_rank[name], strict=True):
                    target.copy_(value)
            point["low_rank_ema"] = self.evaluate(module.export_generator)
            for name, layer in tuner_layers(module.teacher).items():
                for target, value in zip(
                    self._factors(layer, EMA_ADAPTER), saved[name], strict=True
                ):
                    target.copy_(value)
        module.generator.train()
        self.points.append(point)
        self.seconds += time.perf_counter() - start
        print(f"  it {step}: {json.dumps(point)}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="shared_base_stage1.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--teacher")
    parser.add_argument("--classifier")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--num-per-class", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=200)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--output", type=Path, default=Path("runs/sb-stage1/stage1.jsonl"))
    parser.add_argument("--page-from", nargs="+", type=Path, metavar="FILE.jsonl")
    parser.add_argument("configs", nargs="*")
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parser.parse_args(argv)
    if options.page_from:
        print(write_results_page(options.page_from, argv))  # noqa: T201
        return
    if not (options.teacher and options.classifier and options.configs):
        parser.error("give --teacher, --classifier and at least one name:key=value,... run")
    if options.threads:
        torch.set_num_threads(options.threads)
    data = load_images("digits")
    _, heldout = train_heldout_split(data)
    real_remain = heldout.images[heldout.labels != 0]
    classifier = load_classifier(options.classifier)

    def measure(network: Any) -> dict[str, float]:
        result = evaluate_sampler(
            one_step_sampler(network),
            classifier, real_remain, data.num_classes, [0], [1], options.num_per_class,
            throughput_batch=None,
        )  # fmt: skip
        return {
            "remain_accuracy": round(result.remain_accuracy, 4),
            "fid_remain": round(result.fid_remain, 3),
        }

    reference = evaluate_sampler(
        ddim_sampler(PretrainedVPTeacher(options.teacher), 50), classifier, real_remain,
        data.num_classes, [0], [1], options.num_per_class, throughput_batch=None,
    )  # fmt: skip
    teacher_fid = reference.fid_remain
    print(f"teacher DDIM-50 remain FID {teacher_fid:.3f}", flush=True)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    for spec in options.configs:
        name, overrides = parse(spec)
        adapters = [] if name.startswith("full") else ["--model.adapters.rank", str(options.rank)]
        settings = ClassRunSettings(sfd_args=[*overrides, *adapters], progress=False)
        args = settings.sfd_command_line(options.teacher, "stage1")
        trace = MergedTrace(options.eval_every, measure)
        load_start = os.getloadavg()
        module, seconds, iterations = train_sfd(
            args, [trace], Path("/tmp/sfd-sb-stage1") / name, False
        )
        row = {
            "name": name,
            "spec": spec,
            "command": command_line(__file__, argv),
            "run": run_context(command_line(__file__, argv), load_start),
            "iterations": iterations,
            "teacher_fid": teacher_fid,
            "train_seconds": seconds - trace.seconds,
            "points": trace.points,
        }
        final = trace.points[-1]
        print(
            f"{name}: "
            + ", ".join(
                f"{k} FID {v['fid_remain'] / teacher_fid:.2f}x acc {v['remain_accuracy']:.3f}"
                for k, v in final.items()
                if k != "iteration"
            ),
            flush=True,
        )
        with options.output.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


def in_cache(command: str) -> str:
    """A run's command with its cached teacher and classifier folders as `CACHE/<name>`."""
    return re.sub(r"/tmp/\S*/(?=[^/\s]+(\s|$))", "CACHE/", command)


def write_results_page(files: list[Path], argv: list[str]) -> Path:
    """docs/results/shared_base_stage1.md from --output files (the first run's context)."""
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line]
    kinds = ("raw", "ema", "merged_ema", "low_rank_ema")
    table = []
    for row in rows:
        for point in row["points"]:
            cells = [row["name"], f"`{row['spec']}`", point["iteration"]]
            for kind in kinds:
                value = point.get(kind)
                cells.append(
                    None
                    if value is None
                    else f"{value['fid_remain'] / row['teacher_fid']:.2f} "
                    f"({100 * value['remain_accuracy']:.1f} %)"
                )
            table.append(cells)
    header = [
        "run", "settings", "iteration", "raw generator", "EMA of each factor",
        "EMA of merged weights (dense)", "rank-r EMA of merged updates",
    ]  # fmt: skip
    runs = "\n\n".join(
        f"`{row['name']}` ({row['run']['date']}, commit {row['run']['commit']['hash']}"
        f"{' + uncommitted changes' if row['run']['commit']['dirty'] else ''}, load "
        f"{row['run']['machine']['load_average_start'][0]:.1f} → "
        f"{row['run']['machine']['load_average_end'][0]:.1f}, "
        f"{row['train_seconds']:.0f} s of training):\n\n```bash\n{in_cache(row['command'])}\n```"
        for row in rows
    )
    sections = {
        "Stage 1 as adapters": (
            "Remain FID over the teacher's DDIM-50 remain FID (remain accuracy) of four generators "
            "of one stage-1 run of the class digits demo (`sfd demo`'s stage-1 settings, 600 "
            "iterations, `--model.adapters.rank 16`): the raw generator, the EMA that averages "
            "each LoRA factor (the EMA before `SharedBase.average_into`), a dense EMA of the "
            "merged weights W0 + ΔW_t (what full copies average) kept beside the run, and the "
            "rank-r EMA of the merged updates (`low_rank_lerp`, what the EMA adapter does now). "
            "The EMA's decay is stage 1's (0.995, constant), so at iteration t it still holds "
            "0.995^t of the teacher's weights (37 % at 200, 5 % at 600).\n\n"
            + markdown_table(header, table)
        ),
        "Runs": "CACHE: the demos' teacher cache (`sfd demo --teacher-cache`), the teacher and "
        "classifier `sfd demo` trained.\n\n" + runs,
    }
    names = ", ".join(str(f) for f in files)
    command = command_line(__file__, argv)
    title = "Shared base, stage 1: the generator and its EMAs"
    return write_page(PAGE, title, command, names, rows[-1], sections)


if __name__ == "__main__":
    main()
