"""Try SFD / distillation settings on one cached digits teacher and classifier.

    python experiments/digits_sfd_sweep.py --teacher DIR --classifier DIR --threads 1 \
        --stage distill --eval-every 150 --save-stage1 runs/stage1 \
        "base:trainer.max_steps=1500" \
        "lr1e-4:trainer.max_steps=1500,model.fake_optimizer.init_args.lr=1e-4,model.generator_optimizer.init_args.lr=1e-4"
    python experiments/digits_sfd_sweep.py --teacher DIR --classifier DIR --threads 1 \
        --stage two_stage --stage1 runs/stage1/base "s2:trainer.max_steps=200"

Each argument is `name:key=value,...` over the demo's SFD configuration (the packaged preset
sfd/apps/harness/sfd_digits.yaml; keys as in `sfd fit`, e.g. model.alpha, trainer.max_steps).
`--stage distill` zeroes both forget weights (stage 1), `sfd` runs SFD from the teacher,
`two_stage` runs SFD from the stage-1 generator and fake score saved by an earlier
`--save-stage1` run (the teacher stays the original). With `--eval-every N` the (EMA) generator's
UA, remain accuracy and remain FID are measured every N iterations during the run (the FID
trajectory shows whether more iterations would help). Prints one line per evaluation and run and
appends one JSON line per run to --results, with its command and run context (date, commit,
load average at the start and the end); `--page-from FILE.jsonl ...` writes
docs/results/one_step_quality.md from such files (see text_sfd_sweep.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from sweep_tools import QualityTrace, add_sweep_options, parse, parse_sweep_options, sweep_row

from sfd.apps.data.images import load_images, train_heldout_split
from sfd.apps.demo.run import ClassRunSettings
from sfd.apps.harness.curve import TimedForgettingCurve, first_reaching
from sfd.apps.harness.stages import StageOne, save_stage_one, train_sfd
from sfd.eval.classifier import load_classifier
from sfd.eval.evaluate import ddim_sampler, evaluate_sampler, one_step_sampler
from sfd.teachers.unet import PretrainedVPTeacher
from sfd.training.cli import parse_fit_config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="digits_sfd_sweep.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--teacher")
    parser.add_argument("--classifier")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--forget", type=int, default=0)
    parser.add_argument("--override", type=int, default=1)
    parser.add_argument("--num-per-class", type=int, default=200)
    parser.add_argument("--results", type=Path, default=Path("sweep.jsonl"))
    parser.add_argument("--skip-teacher", action="store_true")
    add_sweep_options(parser)
    options = parse_sweep_options(parser, argv, measuring_needs=("teacher", "classifier"))
    if options is None:  # --page-from: the page is written
        return

    data = load_images(options.data)
    _, heldout = train_heldout_split(data)
    real_remain = heldout.images[heldout.labels != options.forget]
    classifier = load_classifier(options.classifier)
    teacher = PretrainedVPTeacher(options.teacher)
    k = data.num_classes

    def evaluate(sampler):  # noqa: ANN001, ANN202
        return evaluate_sampler(
            sampler,
            classifier,
            real_remain,
            k,
            [options.forget],
            [options.override],
            options.num_per_class,
            throughput_batch=None,
        )

    def quality(network):  # noqa: ANN001, ANN202
        result = evaluate(one_step_sampler(network))
        return {
            "ua": round(result.ua, 4),
            "remain_accuracy": round(result.remain_accuracy, 4),
            "fid_remain": round(result.fid_remain, 3),
        }

    teacher_fid = float("nan")
    if not options.skip_teacher:
        reference = evaluate(ddim_sampler(teacher, 50))
        teacher_fid = reference.fid_remain
        print(
            f"teacher DDIM-50: UA {reference.ua:.3f} remain {reference.remain_accuracy:.3f} "
            f"FID {reference.fid_remain:.2f}",
            flush=True,
        )
    for spec in options.configs:
        name, sfd_args = parse(spec)
        settings = ClassRunSettings(
            forget=options.forget, override=options.override, sfd_args=sfd_args, progress=False
        )
        stage = {"sfd": "sfd", "distill": "stage1", "two_stage": "stage2"}[options.stage]
        args = settings.sfd_command_line(options.teacher, stage)
        if options.stage == "two_stage":
            args += StageOne.load(options.stage1).stage_two_arguments()
        iterations = parse_fit_config(args, one_line_errors=True).trainer.max_steps
        curve = TimedForgettingCurve(classifier, k, [options.forget], max(1, iterations // 20))
        callbacks: list[pl.Callback] = [curve]
        trace = None
        if options.eval_every:
            trace = QualityTrace(options.eval_every, quality, options.extra_ema)
            callbacks.append(trace)
        load_start = os.getloadavg()
        start = time.perf_counter()
        module, seconds, _ = train_sfd(args, callbacks, Path("/tmp/sfd-sweep-logs") / name, False)
        wall = time.perf_counter() - start
        result = evaluate(one_step_sampler(module.export_generator))
        if options.save_stage1 is not None and options.stage == "distill":
            folder = options.save_stage1 / name
            folder.mkdir(parents=True, exist_ok=True)
            save_stage_one(module, folder, seconds, iterations)
        first = first_reaching(curve.as_dicts())
        row = sweep_row(
            __file__,
            options.argv,
            spec,
            load_start,
            name=name,
            stage=options.stage,
            stage1=str(options.stage1) if options.stage1 else None,
            settings={"iterations": iterations, "model": parse_fit_config(args).model.as_dict()},
            ua=result.ua,
            forget_as_override=result.forget_as_override,
            remain_accuracy=result.remain_accuracy,
            fid_remain=result.fid_remain,
            teacher_fid=teacher_fid,
            fid_ratio=result.fid_remain / teacher_fid,
            first_ua95=first,
            train_seconds=seconds - (trace.seconds if trace else 0.0),
            train_seconds_with_evaluations=seconds,
            wall_seconds=wall,
            threads=torch.get_num_threads(),
            curve=curve.as_dicts(),
            quality_trace=trace.points if trace else [],
        )
        print(
            f"{name}: UA {row['ua']:.3f} (override {row['forget_as_override']:.2f}) "
            f"remain {row['remain_accuracy']:.3f} FID {row['fid_remain']:.2f} "
            f"({row['fid_ratio']:.2f}x) UA95 at {first} train {seconds:.0f} s "
            f"load {load_start[0]:.1f}->{os.getloadavg()[0]:.1f}",
            flush=True,
        )
        with options.results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
