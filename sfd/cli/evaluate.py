"""`sfd eval MODEL`: class-forgetting metrics of an exported generator or a DDPM teacher."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sfd.errors import SFDConfigError


def run(args: list[str]) -> None:
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

    from sfd.apps.data import load_images, train_heldout_split
    from sfd.apps.demo.report import summary_table
    from sfd.eval.classifier import load_classifier
    from sfd.eval.evaluate import ddim_sampler, evaluate_sampler, library_versions, one_step_sampler

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
        from sfd.pipelines.io import load_generator

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
