"""Command lines of `sfd demo` and `sfd eval`."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields
from pathlib import Path

from sfd.errors import SFDConfigError

SFD_FLAGS = {
    "iterations": (int, "SFD iterations (generator steps)"),
    "batch_size": (int, "remain and forget batch size (each)"),
    "lr": (float, "Adam learning rate of the generator and the fake score"),
    "alpha": (float, "the SiD alpha of the generator loss"),
    "sigma_init": (float, "the generator's input noise level"),
    "t_min": (int, "smallest loss timestep"),
    "t_max": (int, "loss timesteps are drawn from [t_min, t_max)"),
    "lambda_sg_remain": (float, "fake-score loss weight, remain"),
    "lambda_sg_forget": (float, "fake-score loss weight, forget"),
    "lambda_g_remain": (float, "generator loss weight, remain"),
    "lambda_g_forget": (float, "generator loss weight, forget (the unlearning term)"),
    "ema_decay": (float, "decay of the generator EMA"),
    "grad_clip_value": (float, "clip gradients by value"),
}


def demo_parser() -> argparse.ArgumentParser:
    from sfd.demo import DemoSettings, SFDSettings

    defaults, sfd_defaults = DemoSettings(), SFDSettings()
    parser = argparse.ArgumentParser(
        prog="sfd demo",
        description="Train a digits teacher (or reuse the cached one), forget one class with SFD, "
        "compare with the teacher and a distilled-without-forgetting generator, write a report.",
    )
    add = parser.add_argument
    add("--output-dir", type=Path, default=defaults.output_dir, help="report folder")
    add("--data", default=defaults.data, help="'digits' (default) or a labelled .npz / CIFAR-10")
    add("--forget", type=int, default=defaults.forget, help="class to forget")
    add("--override", type=int, default=defaults.override, help="class it is mapped to")
    add("--seed", type=int, default=defaults.seed, help="seed of every phase")
    add("--teacher-cache", type=Path, help="teacher cache folder (default ~/.cache/sfd)")
    add("--teacher-steps", type=int, help="teacher training steps (default: the trainer's)")
    add("--teacher-channels", type=int, nargs="+", help="teacher UNet block_out_channels")
    add("--classifier-steps", type=int, help="classifier training steps")
    for name, (kind, text) in SFD_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        add(flag, type=kind, default=getattr(sfd_defaults, name), help=f"{text} (%(default)s)")
    add("--baseline-iterations", type=int, help="iterations of the baseline (default: same)")
    add("--curve-every", type=int, help="forgetting-curve interval (default: iterations/20)")
    add("--curve-per-class", type=int, default=defaults.curve_per_class)
    add("--eval-per-class", type=int, default=defaults.eval_per_class, help="generated per class")
    add("--ddim-steps", type=int, default=defaults.ddim_steps, help="teacher DDIM steps")
    add("--throughput-batch", type=int, default=defaults.throughput_batch)
    add("--throughput-repeats", type=int, default=defaults.throughput_repeats)
    add("--grid-per-class", type=int, default=defaults.grid_per_class)
    add(
        "--skip-full-schedule-timing",
        action="store_true",
        help="do not time the teacher's full-schedule (1000-step) sampler",
    )
    add("--accelerator", default=defaults.accelerator, help="Lightning accelerator")
    add(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's choice; 1 is fastest on a busy shared machine)",
    )
    add("--no-progress", action="store_true", help="hide progress bars")
    return parser


def run_demo_command(args: list[str]) -> None:
    """`sfd demo`: parse, run, print the table and where the report is."""
    from sfd.demo import DemoSettings, SFDSettings, run_demo

    options = demo_parser().parse_args(args)
    sfd = SFDSettings(**{f.name: getattr(options, f.name) for f in fields(SFDSettings)})
    settings = DemoSettings(
        output_dir=options.output_dir,
        data=options.data,
        forget=options.forget,
        override=options.override,
        seed=options.seed,
        teacher_cache=options.teacher_cache,
        teacher_steps=options.teacher_steps,
        teacher_channels=tuple(options.teacher_channels) if options.teacher_channels else None,
        classifier_steps=options.classifier_steps,
        sfd=sfd,
        baseline_iterations=options.baseline_iterations,
        curve_every=options.curve_every,
        curve_per_class=options.curve_per_class,
        eval_per_class=options.eval_per_class,
        ddim_steps=options.ddim_steps,
        throughput_batch=options.throughput_batch,
        throughput_repeats=options.throughput_repeats,
        grid_per_class=options.grid_per_class,
        time_full_schedule=not options.skip_full_schedule_timing,
        accelerator=options.accelerator,
        threads=options.threads,
        progress=not options.no_progress,
    )
    paths = run_demo(settings)
    metrics = json.loads(paths["metrics"].read_text())
    print(summary_table(metrics))
    print(f"report: {paths['report']}")


def _cell(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{scale * value:.{digits}f}"


def summary_table(metrics: dict) -> str:
    """A plain-text table of the models in a metrics.json."""
    rows = [f"{'model':30s} {'NFE':>5s} {'UA %':>6s} {'remain %':>9s} {'FID':>8s} {'img/s':>9s}"]
    for key in ("teacher", "distilled_without_forgetting", "sfd"):
        if key not in metrics:
            continue
        m = metrics[key]
        rows.append(
            f"{key:30s} {m['nfe']:>5d} {_cell(m['ua'], 100):>6s} "
            f"{_cell(m['remain_accuracy'], 100):>9s} {_cell(m['fid_remain'], 1, 2):>8s} "
            f"{_cell(m['images_per_second']):>9s}"
        )
    return "\n".join(rows)


def run_eval_command(args: list[str]) -> None:
    """`sfd eval MODEL --classifier DIR --data SRC --forget K --override J`."""
    parser = argparse.ArgumentParser(
        prog="sfd eval",
        description="Evaluate an exported one-step generator, or a DDPM teacher under DDIM, for "
        "class forgetting: UA, forget-label histogram, remain accuracy, remain FID/KID, images/s.",
    )
    add = parser.add_argument
    add("model", type=Path, help="exported generator folder or DDPM teacher folder")
    add("--classifier", type=Path, required=True, help="evaluation classifier folder")
    add("--data", default="digits", help="data source the classifier was trained on")
    add("--forget", type=int, required=True, help="forget class")
    add("--override", type=int, help="override class (for the 'labelled as override' share)")
    add("--heldout-fraction", type=float, default=0.2, help="held-out split (as in training)")
    add("--seed", type=int, default=0, help="seed of the split and the noise")
    add("--num-per-class", type=int, default=200, help="generated samples per class")
    add("--ddim-steps", type=int, default=50, help="DDIM steps for a teacher")
    add("--output", type=Path, help="write the metrics as JSON here")
    options = parser.parse_args(args)

    from sfd.classifier import load_classifier
    from sfd.data import load_images, train_heldout_split
    from sfd.evaluation import ddim_sampler, evaluate_sampler, library_versions, one_step_sampler

    model_kind = _model_kind(options.model)
    data = load_images(options.data)
    k = data.num_classes
    for name in ("forget", "override"):
        value = getattr(options, name)
        if value is not None and not 0 <= value < k:
            raise SFDConfigError(f"--{name} {value} is not a class of the data (0..{k - 1})")
    if options.forget == options.override:
        raise SFDConfigError(f"--override {options.override} equals --forget")
    classifier = load_classifier(options.classifier)
    _, heldout = train_heldout_split(data, options.heldout_fraction, options.seed)
    if model_kind == "generator":
        from sfd.export import load_generator

        sampler = one_step_sampler(load_generator(options.model))
    else:
        from sfd.teachers.unet import PretrainedVPTeacher

        sampler = ddim_sampler(PretrainedVPTeacher(str(options.model)), options.ddim_steps)
    result = evaluate_sampler(
        sampler,
        classifier,
        heldout.images[heldout.labels != options.forget],
        k,
        [options.forget],
        None if options.override is None else [options.override],
        options.num_per_class,
        seed=options.seed,
        progress=True,
    )
    report = {
        "model": str(options.model),
        **result.to_dict(),
        "forget": options.forget,
        "override": options.override,
        "protocol": {
            "seed": options.seed,
            "generated_per_class": options.num_per_class,
            "data": options.data,
            "heldout_fraction": options.heldout_fraction,
            "libraries": library_versions(),
        },
    }
    print(summary_table({"sfd" if model_kind == "generator" else "teacher": report}))
    print(f"forget-class labels: {result.forget_histogram}")
    if options.output:
        options.output.parent.mkdir(parents=True, exist_ok=True)
        options.output.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {options.output}")


def _model_kind(path: Path) -> str:
    """'generator' (an exported OneStepPipeline) or 'teacher' (a DDPM folder with unet/ + scheduler/)."""
    if (path / "model_index.json").is_file():
        index = json.loads((path / "model_index.json").read_text())
        if index.get("_class_name") == "OneStepPipeline":
            return "generator"
    if (path / "unet").is_dir() and (path / "scheduler").is_dir():
        return "teacher"
    raise SFDConfigError(
        f"{str(path)!r} is neither an exported generator (OneStepPipeline) nor a DDPM teacher "
        "folder (unet/ + scheduler/)"
    )
