"""`sfd eval MODEL`: class-forgetting metrics of an exported generator or a DDPM teacher."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sfd.cli.common import (
    OneLineParser,
    add_class_attack_options,
    add_revival_options,
    check_attack_suite_options,
    class_embedding_budget,
    revival_budget,
    run_quietly,
)
from sfd.errors import SFDConfigError, check_integer, check_number
from sfd.folders import (
    check_writable_file,
    pipeline_class_name,
    read_json_file,
    write_file_atomically,
)

if TYPE_CHECKING:
    from sfd.images import LabelledImages

CLASSIFIER_KEYS = {  # config.json of a saved classifier: key -> what it must be
    "in_channels": "a positive integer",
    "num_classes": "a positive integer",
    "image_size": "[height, width]",
    "width": "a positive integer",
    "feature_dim": "a positive integer",
}


def run(args: list[str]) -> None:
    """`sfd eval MODEL --classifier DIR --data SRC --forget K --override J`."""
    parser = OneLineParser(
        prog="sfd eval",
        description="Evaluate an exported one-step generator, or a DDPM teacher under DDIM, for "
        "class forgetting: UA, forget-label histogram, remain accuracy, remain FID/KID, images/s.",
    )
    add = parser.add_argument
    add("model", type=Path, help="exported generator folder or DDPM teacher folder")
    add("--classifier", type=Path, required=True, help="evaluation classifier folder")
    add("--data", default="digits", help="data source the classifier was trained on")
    add("--forget", required=True, help="forget class, by index or name (digits: zero..nine)")
    add(
        "--override", help="override class, by index or name (for the 'labelled as override' share)"
    )
    add("--heldout-fraction", type=float, default=0.2, help="held-out split (as in training)")
    add("--seed", type=int, default=0, help="seed of the split and the noise")
    add("--num-per-class", type=int, default=200, help="generated samples per class")
    add("--ddim-steps", type=int, default=50, help="DDIM steps for a teacher")
    add("--output", type=Path, help="write the metrics as JSON here")
    add("--no-progress", action="store_true", help="hide progress (sampling steps)")
    add(
        "--attack",
        nargs="*",
        help="attacks: class_embedding (a learned class embedding; bare --attack). The prompt "
        "attacks (soft, discrete) need a text encoder: sfd eval-text",
    )
    add_class_attack_options(parser)
    add("--attacker-classifier", type=Path, help="transfer: the attacker classifier folder "
        "(default: trained once, cached, from --classifier's recorded recipe with another seed)")  # fmt: skip
    add("--cache", type=Path, help="where that trained attacker classifier is cached "
        "(default ~/.cache/sfd)")  # fmt: skip
    add_revival_options(parser)
    options = parser.parse_args(args)
    check_attack_suite_options(parser, args, options, attacking=options.attack is not None)
    model_kind, classifier_config, attack, revival = check_options(options)
    with run_quietly(not options.no_progress):  # also the libraries' loading bars
        _evaluate(options, model_kind, classifier_config, attack, revival)


def _evaluate(
    options: argparse.Namespace,
    model_kind: str,
    classifier_config: dict[str, Any],
    attack: Any,
    revival: Any,
) -> None:
    """`sfd eval` once every cheap check has passed: load, evaluate, attack, report."""

    from sfd.apps.data.images import load_images, train_heldout_split
    from sfd.apps.demo.report import summary_table
    from sfd.eval.attack_budget import attack_objectives
    from sfd.eval.classifier import load_classifier
    from sfd.eval.evaluate import ddim_sampler, evaluate_sampler, one_step_sampler
    from sfd.provenance import library_versions

    data = load_images(options.data)
    k = data.num_classes
    options.forget, options.override = forget_override(
        options.forget, options.override, options.data, data
    )
    _check_fits("classifier", options.classifier, classifier_config_shape(classifier_config), data)
    try:
        classifier = load_classifier(options.classifier)
    except RuntimeError as error:  # load_state_dict: the weights do not fit config.json
        reason = (str(error).strip().splitlines() or [""])[-1].strip()
        raise SFDConfigError(
            f"--classifier {str(options.classifier)!r}: model.safetensors does not fit its "
            f"config.json ({reason})"
        ) from error
    train, heldout = train_heldout_split(data, options.heldout_fraction, options.seed)
    if revival is not None:  # too few real images of the forget class: refused up front
        from sfd.eval.revival import revival_images

        images = revival_images(heldout.images, heldout.labels, options.forget, revival.images,
                                revival.seed)  # fmt: skip
    if model_kind == "generator":
        from sfd.core.guards import check_finite_weights
        from sfd.pipelines.io import load_generator

        generator = load_generator(options.model)
        check_finite_weights(f"generator {str(options.model)!r}", generator, trained=True)
        model = generator.denoiser
        sampler = one_step_sampler(generator)
    else:
        from sfd.core.guards import check_finite_weights
        from sfd.teachers.unet import PretrainedVPTeacher

        model = PretrainedVPTeacher(str(options.model))
        check_finite_weights(f"teacher {str(options.model)!r}", model, trained=True)
        sampler = ddim_sampler(model, options.ddim_steps)
    _check_fits(model_kind, options.model, (model.num_classes, model.sample_shape), data)
    attacker, attacker_entry = None, None  # trained (minutes) once every cheap check has passed
    if attack is not None and "transfer" in attack_objectives(options.attack_objective):
        from sfd.apps.harness.workspace import attacker_classifier

        split = {"heldout_fraction": options.heldout_fraction, "split_seed": options.seed}
        attacker, attacker_entry = attacker_classifier(
            classifier, options.classifier, options.attacker_classifier, options.cache,
            "classifier", options.data, train, heldout, split, not options.no_progress,
        )  # fmt: skip
    result = evaluate_sampler(
        sampler,
        classifier,
        heldout.images[heldout.labels != options.forget],
        k,
        [options.forget],
        None if options.override is None else [options.override],
        options.num_per_class,
        seed=options.seed,
        progress=not options.no_progress,
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
    if attack is not None:
        from sfd.eval.class_embedding import class_embedding_suite

        report["attacks"] = class_embedding_suite(
            sampler, classifier, options.forget, attack, options.attack_ddim_steps,
            not options.no_progress, attacker, attack_objectives(options.attack_objective),
        )  # fmt: skip
        report["protocol"]["attack_objective"] = options.attack_objective
        report["protocol"]["attacker_classifier"] = attacker_entry
    if revival is not None:
        from sfd.eval.revival import revive_class_sampler

        outcome = revive_class_sampler(sampler, classifier, options.forget, images, revival,
                                       options.num_per_class, options.seed,
                                       progress=not options.no_progress)  # fmt: skip
        report["revival"] = outcome.to_dict()
    print(summary_table({"sfd" if model_kind == "generator" else "teacher": report}))
    print(f"forget-class labels: {result.forget_histogram}")
    for name, entry in report.get("attacks", {}).items():
        agreement = entry.get("agreement")
        agree = "" if agreement is None else f", agreement {100 * agreement:.1f} %"
        print(f"{name} attack: success {100 * entry['success_rate']:.1f} % "
              f"(without attack {100 * entry['success_rate_without_attack']:.1f} %{agree})")  # fmt: skip
    if revival is not None:
        print(f"revival: UA {report['revival']['ua']} after {report['revival']['steps']} steps")
    if options.output:
        text = json.dumps(report, indent=2) + "\n"
        write_file_atomically(options.output, lambda path: path.write_text(text))
        print(f"wrote {options.output}")


def check_options(options: argparse.Namespace) -> tuple[str, dict[str, Any], Any, Any]:
    """Every check of `sfd eval` that needs no data or network, before torch is imported (the
    class names and the fit to the data come once the data is loaded).

    Returns:
        the model's kind ("generator" or "teacher"), the classifier's config.json, the
        class-embedding attack's budget (None without --attack) and the revival budget (None
        without --revival).
    """
    from sfd.eval.attack_budget import checked_objectives  # no torch

    checked_objectives(options.attack_objective, options.attacker_classifier is not None)
    attack = class_attack_budget(options)
    if options.attacker_classifier is not None:
        _classifier_config(options.attacker_classifier, "--attacker-classifier")
    model_kind = _model_kind(options.model)
    classifier_config = _classifier_config(options.classifier)
    check_integer("--num-per-class", options.num_per_class, 2)  # FID needs two
    check_integer("--ddim-steps", options.ddim_steps, 1)
    check_number("--heldout-fraction", options.heldout_fraction, low=0, high=1, low_open=True,
                 high_open=True)  # fmt: skip
    if options.output is not None:
        check_writable_file(options.output, "--output")
    return model_kind, classifier_config, attack, revival_budget(options, options.seed)


def class_attack_budget(options: argparse.Namespace) -> Any:
    """The class-embedding attack's budget from `--attack` and its options (None without it)."""
    if options.attack is None:
        return None
    prompt_attacks = [name for name in options.attack if name in ("soft", "discrete")]
    if prompt_attacks:
        raise SFDConfigError(
            f"--attack {prompt_attacks[0]}: the prompt attacks (soft, discrete) need a model with "
            "a text encoder; a class-conditional model has none (here: --attack class_embedding; "
            "prompt attacks: sfd eval-text)"
        )
    unknown = [name for name in options.attack if name != "class_embedding"]
    if unknown:
        raise SFDConfigError(f"--attack {unknown[0]!r} is unknown; sfd eval has class_embedding")
    return class_embedding_budget(options, options.seed)


def forget_override(
    forget: str, override: str | None, source: str, data: LabelledImages
) -> tuple[int, int | None]:
    """The forget and override classes given by index or name (`resolve_class`); they differ.

    Args:
        forget: `--forget` as given.
        override: `--override` as given, or None.
        source: `--data` (digits take their caption names, "zero".."nine").
        data: the loaded data set (its `class_names`).

    Returns:
        (forget class, override class or None).
    """
    from sfd.apps.data.captions import named_classes, resolve_class

    classes = named_classes(source, data)
    forget_class = resolve_class(forget, classes, "--forget")
    override_class = None if override is None else resolve_class(override, classes, "--override")
    if forget_class == override_class:
        raise SFDConfigError(f"--override {override!r} equals --forget; choose another class")
    return forget_class, override_class


# model_index.json class names of text-to-image exports (flow exports name the stock class)
TEXT_EXPORT_CLASSES = (
    "OneStepTextPipeline",
    "OneStepSDXLPipeline",
    "StableDiffusion3Pipeline",
    "FluxPipeline",
)


def _model_kind(path: Path) -> str:
    """'generator' (an exported OneStepPipeline) or 'teacher' (a DDPM folder with unet/ + scheduler/)."""
    if (path / "model_index.json").is_file():
        name = pipeline_class_name(json.loads((path / "model_index.json").read_text()))
        if name == "OneStepPipeline":
            return "generator"
        if name in TEXT_EXPORT_CLASSES:
            raise SFDConfigError(
                f"{str(path)!r} is a text-to-image export; evaluate it with `sfd eval-text`"
            )
    if (path / "unet").is_dir() and (path / "scheduler").is_dir():
        return "teacher"
    raise SFDConfigError(
        f"{str(path)!r} is neither an exported generator (OneStepPipeline) nor a DDPM teacher "
        "folder (unet/ + scheduler/)"
    )


def _classifier_config(folder: Path, flag: str = "--classifier") -> dict[str, Any]:
    """The classifier's config.json, checked for every key `load_classifier` reads."""
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise SFDConfigError(f"{flag} {str(folder)!r} is not a saved classifier (no config.json)")
    config = read_json_file(config_file)
    if not isinstance(config, dict):
        raise SFDConfigError(f"{str(config_file)!r} holds no mapping of settings")
    missing = [key for key in CLASSIFIER_KEYS if key not in config]
    if missing:
        raise SFDConfigError(
            f"{str(config_file)!r} lacks {missing} (a classifier config needs "
            f"{', '.join(f'{k}: {v}' for k, v in CLASSIFIER_KEYS.items())})"
        )
    size = config["image_size"]
    numbers = [config[k] for k in CLASSIFIER_KEYS if k != "image_size"]
    size_ok = isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)
    if not size_ok or not all(isinstance(v, int) and v > 0 for v in numbers):
        raise SFDConfigError(
            f"{str(config_file)!r} has invalid values; needs "
            f"{', '.join(f'{k}: {v}' for k, v in CLASSIFIER_KEYS.items())}"
        )
    return config


def classifier_config_shape(config: dict[str, Any]) -> tuple[int, tuple[int, int, int]]:
    """(number of classes, (C, H, W) of its images) of a classifier config."""
    height, width = config["image_size"]
    return config["num_classes"], (config["in_channels"], height, width)


def _check_fits(what: str, path: Path, fit: tuple[int | None, tuple[int, ...]], data: Any) -> None:
    """Refuse a classifier, generator or teacher whose classes or image shape differ from the data."""
    num_classes, shape = fit
    if num_classes != data.num_classes:
        raise SFDConfigError(
            f"the {what} {str(path)!r} has {num_classes} classes but the data has "
            f"{data.num_classes}; evaluate with the data it was trained for (--data)"
        )
    if tuple(shape) != tuple(data.image_shape):
        raise SFDConfigError(
            f"the {what} {str(path)!r} makes or reads images of shape (C, H, W) = "
            f"{tuple(shape)} but the data's are {tuple(data.image_shape)}"
        )
