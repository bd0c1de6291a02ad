"""Measure a digits teacher: classifier accuracy on its DDIM samples, and the time each phase takes.

    python experiments/teacher_quality.py --output-dir runs/teacher_quality
    python experiments/teacher_quality.py --teacher-dir runs/teachers/digits   # reuse a teacher

Trains the evaluation classifier on the 80 % training split of scikit-learn's digits (held-out
accuracy on the other 20 %), trains a teacher with `train_teacher` (unless --teacher-dir is given),
draws --per-class samples of every class with 50-step DDIM (η = 0) and reports the share the
classifier labels as the class they were asked for, per class and overall. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sfd.apps.data.images import load_images, train_heldout_split
from sfd.apps.teachers.pixel import train_teacher
from sfd.core.ddim import ddim_sigmas, sample_ddim
from sfd.eval.classifier import predict_labels, save_classifier, train_classifier
from sfd.teachers.unet import PretrainedVPTeacher


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/teacher_quality"))
    parser.add_argument("--teacher-dir", type=Path, help="measure this teacher instead of training")
    parser.add_argument("--max-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--channels", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--classifier-steps", type=int, default=800)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--ddim-steps", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    options = parser.parse_args()
    if options.threads:
        torch.set_num_threads(options.threads)
    options.output_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, object] = {"settings": {k: str(v) for k, v in vars(options).items()}}

    data = load_images("digits")
    train, heldout = train_heldout_split(data, 0.2, options.seed)
    clock = time.perf_counter()
    classifier, heldout_accuracy = train_classifier(
        train, heldout, max_steps=options.classifier_steps, seed=options.seed
    )
    result["classifier_seconds"] = time.perf_counter() - clock
    result["classifier_heldout_accuracy"] = heldout_accuracy
    save_classifier(classifier, options.output_dir / "classifier")

    teacher_dir = options.teacher_dir
    if teacher_dir is None:
        clock = time.perf_counter()
        teacher_dir = train_teacher(
            train,
            options.output_dir / "teacher",
            max_steps=options.max_steps,
            batch_size=options.batch_size,
            lr=options.lr,
            block_out_channels=tuple(options.channels),
            seed=options.seed,
            accelerator="cpu",
        )
        result["teacher_seconds"] = time.perf_counter() - clock
    result["teacher_dir"] = str(teacher_dir)
    teacher = PretrainedVPTeacher(str(teacher_dir))
    result["teacher_parameters"] = sum(p.numel() for p in teacher.parameters())

    labels = torch.arange(data.num_classes).repeat_interleave(options.per_class)  # (K·n,)
    noise_rng = torch.Generator().manual_seed(options.seed + 1)
    z = torch.randn((len(labels), *teacher.sample_shape), generator=noise_rng)
    clock = time.perf_counter()
    samples = sample_ddim(
        teacher, z, labels, ddim_sigmas(teacher.sigma_table, options.ddim_steps)
    ).clamp(-1, 1)
    result["sampling_seconds"] = time.perf_counter() - clock
    predicted = predict_labels(classifier, samples)
    correct = (predicted == labels).float()
    result["sample_accuracy"] = correct.mean().item()
    result["sample_accuracy_per_class"] = [
        correct[labels == k].mean().item() for k in range(data.num_classes)
    ]
    real_mean = train.to_model_space().mean().item()
    result["mean_pixel"] = {"samples": samples.mean().item(), "real": real_mean}
    (options.output_dir / "teacher_quality.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
