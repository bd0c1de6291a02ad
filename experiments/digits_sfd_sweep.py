"""Try SFD settings on one cached digits teacher and classifier (the demo's SFD phase only).

    python experiments/digits_sfd_sweep.py --teacher DIR --classifier DIR \
        "lr1e-4:model.fake_optimizer.init_args.lr=1e-4,model.generator_optimizer.init_args.lr=1e-4" \
        "long:trainer.max_steps=600,model.ema_decay=0.99" ...

Each argument is `name:key=value,...` over the demo's SFD configuration (the packaged preset
sfd/apps/demo/sfd_digits.yaml; keys as in `sfd fit`, e.g. model.alpha, trainer.max_steps).
Prints UA, remain accuracy, remain FID (ratio to the teacher's DDIM-50 FID), the first iteration
with UA >= 95 %, and the training wall time; appends one JSON line per run to --results.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from sfd.apps.data import load_images, train_heldout_split
from sfd.apps.demo.run import DemoSettings, train_sfd
from sfd.eval.classifier import load_classifier
from sfd.eval.evaluate import ddim_sampler, evaluate_sampler, one_step_sampler
from sfd.eval.forgetting_curve import ForgettingCurve, first_iteration_reaching
from sfd.teachers.unet import PretrainedVPTeacher
from sfd.training.cli import parse_fit_config


def parse(spec: str) -> tuple[str, list[str]]:
    """`name:key=value,...` -> (name, ["--key", "value", ...])."""
    name, _, assignments = spec.partition(":")
    args = []
    for item in filter(None, assignments.split(",")):
        key, _, value = item.partition("=")
        args += [f"--{key}", value]
    return name, args


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--classifier", required=True)
    parser.add_argument("--data", default="digits")
    parser.add_argument("--forget", type=int, default=0)
    parser.add_argument("--override", type=int, default=1)
    parser.add_argument("--num-per-class", type=int, default=200)
    parser.add_argument("--results", type=Path, default=Path("sweep.jsonl"))
    parser.add_argument("--skip-teacher", action="store_true")
    parser.add_argument("configs", nargs="+")
    options = parser.parse_args()

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
        settings = DemoSettings(
            forget=options.forget, override=options.override, sfd_args=sfd_args, progress=False
        )
        config = parse_fit_config(settings.sfd_command_line(options.teacher), one_line_errors=True)
        iterations = config.trainer.max_steps
        curve = ForgettingCurve(classifier, k, [options.forget], max(1, iterations // 20))
        start = time.perf_counter()
        module = train_sfd(
            settings, options.teacher, True, curve, Path("/tmp/sfd-sweep-logs") / name
        )
        seconds = time.perf_counter() - start
        result = evaluate(one_step_sampler(module.export_generator))
        first = first_iteration_reaching(curve.as_dicts(), 0.95)
        row = {
            "name": name,
            "settings": {"iterations": iterations, "model": config.model.as_dict()},
            "ua": result.ua,
            "forget_as_override": result.forget_as_override,
            "remain_accuracy": result.remain_accuracy,
            "fid_remain": result.fid_remain,
            "teacher_fid": teacher_fid,
            "fid_ratio": result.fid_remain / teacher_fid,
            "first_ua95_fraction": None if first is None else first / iterations,
            "train_seconds": seconds,
            "curve": curve.as_dicts(),
        }
        print(
            f"{name}: UA {row['ua']:.3f} (override {row['forget_as_override']:.2f}) "
            f"remain {row['remain_accuracy']:.3f} FID {row['fid_remain']:.2f} "
            f"({row['fid_ratio']:.2f}x) UA95 at {row['first_ua95_fraction']} "
            f"train {seconds:.0f} s",
            flush=True,
        )
        with options.results.open("a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
