"""Try settings of the fine-tuning baselines (ESD, SalUn) on the cached digits teacher and classifier.

    python experiments/compare_baselines_sweep.py --threads 1 \
        "esd-lr1e-4:esd.lr=1e-4" "esd-lr3e-4:esd.lr=3e-4" "salun-lr1e-3:salun.lr=1e-3"

Each argument is `name:key=value,...` over the baselines' settings of `sfd compare`
(sfd/apps/compare/baselines_digits.yaml; keys `esd.*` or `salun.*`); the method is the prefix of
the first key. The teacher and classifier are the ones `sfd compare` with the same --data,
--forget, --seed, --teacher-steps and --teacher-channels uses (from the cache, or trained). Prints
UA, remain accuracy and FID (DDIM 50, --eval-per-class per class), training seconds and the first
curve point with UA >= 95 %, and appends one JSON line per run to --results, with load averages.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from results_page import Refusal

from sfd.apps.compare.settings import CompareSettings, parse_baselines
from sfd.apps.harness.curve import first_reaching, sampler_for
from sfd.apps.harness.evaluation import evaluate_one
from sfd.apps.harness.methods import BaselineMethod, Run
from sfd.apps.harness.workspace import build_teacher, load_split, prepare_classifier, teacher_recipe


def parse(spec: str) -> tuple[str, str, list[str]]:
    """`name:esd.lr=1e-4,...` -> (name, "esd", ["--esd.lr", "1e-4", ...])."""
    name, _, assignments = spec.partition(":")
    args, method = [], None
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        method = method or key.split(".")[0]
        args += [f"--{key}", value]
    if method is None:
        raise Refusal(f"{spec!r} sets nothing; write name:esd.key=value,...")
    return name, method, args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--forget", type=int, default=0)
    parser.add_argument("--override", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher-cache", type=Path)
    parser.add_argument("--teacher-steps", type=int)
    parser.add_argument("--teacher-channels", type=int, nargs="+")
    parser.add_argument("--eval-per-class", type=int, default=200)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--results", type=Path, default=Path("baselines_sweep.jsonl"))
    parser.add_argument("configs", nargs="+")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    settings = CompareSettings(
        data=options.data,
        forget=options.forget,
        override=options.override,
        seed=options.seed,
        teacher_cache=options.teacher_cache,
        teacher_steps=options.teacher_steps,
        teacher_channels=tuple(options.teacher_channels) if options.teacher_channels else None,
        eval_per_class=options.eval_per_class,
        throughput_batch=64,
        progress=False,
    )
    workspace = load_split(settings.data, 0.2, settings.seed, settings.teacher_cache)
    recipe = teacher_recipe(settings.seed, settings.teacher_steps, settings.teacher_channels)
    workspace.teacher_dir, _, _, _ = build_teacher(workspace, recipe, "cpu", False)
    prepare_classifier(workspace, settings)
    for spec in options.configs:
        name, method, overrides = parse(spec)
        run = Run(settings, workspace, parse_baselines(None, overrides), Path("/tmp/sfd-baselines"))
        load_start = os.getloadavg()
        fitted = BaselineMethod(method).fit(run)
        result = evaluate_one(sampler_for(fitted.unlearned, 50), settings, workspace)
        first = first_reaching(fitted.curve)
        row = {
            "name": name,
            "method": method,
            "settings": fitted.extra["settings"],
            "ua": result.ua,
            "forget_as_override": result.forget_as_override,
            "remain_accuracy": result.remain_accuracy,
            "fid_remain": result.fid_remain,
            "train_seconds": fitted.train_seconds,
            "first_ua95": first,
            "curve": fitted.curve,
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
            "threads": torch.get_num_threads(),
        }
        print(
            f"{name}: UA {result.ua:.3f} remain {result.remain_accuracy:.3f} "
            f"FID {result.fid_remain:.2f} train {fitted.train_seconds:.0f} s UA95 at {first} "
            f"load {load_start[0]:.1f}->{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        with options.results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
