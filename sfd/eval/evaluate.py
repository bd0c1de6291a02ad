"""Evaluate a class-conditional image model for class forgetting (docs/method.md §6).

A model is wrapped as an `ImageSampler` (a one-step generator, or a teacher under DDIM); every
model sees the same noise for the same sample index, so the table compares like with like.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor, nn

from sfd.core.ddim import ddim_sigmas, sample_ddim
from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.eval.metrics import (
    feature_distances,
    label_histogram,
    per_class_accuracy,
    unlearning_accuracy,
)
from sfd.images import from_uint8, to_uint8
from sfd.progress import ProgressBar
from sfd.teachers.base import Denoiser


@dataclass
class ImageSampler:
    """A class-conditional sampler: (labels (B,), noise z (B, C, H, W)) -> images in [-1, 1].

    Attributes:
        name: what it is, for the protocol ("one-step generator", "DDIM 50 steps").
        nfe: network evaluations per sample.
        sample_shape: (C, H, W) of one sample.
        sample: the sampling function.
        sample_stepwise: the same sampling, calling its third argument after each of its `nfe`
            network evaluations (None: one-step samplers; progress then counts whole calls).
        network: the denoiser that is fine-tuned when the model is (the revival test), or None.
        rebuild: network -> the same sampler around another denoiser (a fine-tuned copy).
        sigma_init: a one-step generator's noise level; None for a multi-step sampler.
    """

    name: str
    nfe: int
    sample_shape: tuple[int, int, int]
    sample: Callable[[Tensor, Tensor], Tensor]
    sample_stepwise: Callable[[Tensor, Tensor, Callable[[], None]], Tensor] | None = None
    network: Denoiser | None = None
    rebuild: Callable[[Denoiser], ImageSampler] | None = None
    sigma_init: float | None = None


def one_step_sampler(generator: OneStepGenerator) -> ImageSampler:
    """The one-step generator x = G(z, c) as an `ImageSampler` (1 NFE)."""
    generator.eval()

    @torch.no_grad()
    def sample(labels: Tensor, z: Tensor) -> Tensor:
        return generator(z, labels)

    return ImageSampler(
        f"one-step generator (sigma_init={generator.sigma_init:g})",
        1,
        generator.sample_shape,
        sample,
        network=generator.denoiser,
        rebuild=lambda network: one_step_sampler(OneStepGenerator(network, generator.sigma_init)),
        sigma_init=generator.sigma_init,
    )


def ddim_sampler(teacher: Denoiser, num_steps: int) -> ImageSampler:
    """The teacher under deterministic DDIM with `num_steps` trailing-spaced steps (num_steps NFE)."""
    sigmas = ddim_sigmas(teacher.sigma_table, num_steps)
    teacher.eval()

    def sample(labels: Tensor, z: Tensor, on_step: Callable[[], None] | None = None) -> Tensor:
        return sample_ddim(teacher, z, labels, sigmas, on_step=on_step)

    return ImageSampler(
        f"DDIM {num_steps} steps (eta=0, trailing spacing)",
        num_steps,
        teacher.sample_shape,
        sample,
        sample_stepwise=sample,
        network=teacher,
        rebuild=lambda network: ddim_sampler(network, num_steps),
    )


def class_noise(num_samples: int, shape: tuple[int, ...], seed: int) -> Tensor:
    """The evaluation noise: sample i gets the same z for every model, (N, C, H, W) on CPU."""
    return torch.randn((num_samples, *shape), generator=torch.Generator().manual_seed(seed))


def generate(
    sampler: ImageSampler,
    labels: Tensor,
    seed: int,
    batch_size: int = 500,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> Tensor:
    """Generate one image per label with seeded noise.

    Args:
        sampler: the model.
        labels: class of each sample, (N,).
        seed: seed of the noise (the same seed gives every model the same z).
        batch_size: samples per network call.
        device: where the model runs.
        progress: show progress (`sfd.progress`): every network evaluation of a multi-step
            sampler, every batch of a one-step one.

    Returns:
        images in [-1, 1], (N, C, H, W), float32 on CPU.
    """
    z = class_noise(len(labels), sampler.sample_shape, seed)
    chunks = list(zip(labels.split(batch_size), z.split(batch_size), strict=True))
    stepwise = sampler.sample_stepwise
    images = []
    with ProgressBar(
        total=len(chunks) * (sampler.nfe if stepwise else 1),
        desc=f"sampling {sampler.name}",
        unit="step" if stepwise else "batch",
        disable=not progress,
        leave=False,
    ) as bar:
        for label_chunk, z_chunk in chunks:
            label_chunk, z_chunk = label_chunk.to(device), z_chunk.to(device)
            if stepwise is None:
                chunk = sampler.sample(label_chunk, z_chunk)
                bar.update(1)
            else:
                chunk = stepwise(label_chunk, z_chunk, lambda: bar.update(1))
            images.append(chunk.float().cpu())
    return torch.cat(images)


@torch.no_grad()
def classify(classifier: nn.Module, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Classifier labels of uint8 images (N, C, H, W) -> (N,) int64 (the images a user would save)."""
    device = next(classifier.parameters()).device
    predicted = [
        classifier(from_uint8(chunk.to(device))).argmax(dim=1).cpu()
        for chunk in images.split(batch_size)
    ]
    return torch.cat(predicted)


def ua_ceiling(
    classifier: nn.Module, images: Tensor, labels: Tensor, forget: int, override: int
) -> float | None:
    """The UA this classifier gives a generator that draws, for the forget condition, exactly the
    override: 1 − the share of the real override images (`labels == override`) that it labels as
    the forget class. The "ceiling" of a forget-to-override pair: what perfect forgetting into the
    override scores. It is not an upper bound on UA (a generator drawing something that is neither
    class can score higher); it says how much of a UA short of 100 % is the classifier's own
    confusion of the pair.

    Args:
        classifier: the evaluation classifier.
        images: real uint8 images (N, C, H, W), e.g. the held-out split.
        labels: their classes, (N,).
        forget: the forget class.
        override: the override class.

    Returns:
        the ceiling in [0, 1], or None when `images` holds no image of the override class (a
        held-out split too small to hold one).
    """
    real = images[labels == override]
    if len(real) == 0:
        return None
    return unlearning_accuracy(classify(classifier, real), [forget])


@dataclass
class Throughput:
    """Measured sampling speed: `repeats` timed calls on one batch after one warm-up call."""

    images_per_second: float
    batch_size: int
    repeats: int
    seconds: float


def measure_throughput(
    sampler: ImageSampler,
    num_classes: int,
    batch_size: int = 64,
    repeats: int = 3,
    device: torch.device | str = "cpu",
    warmup: bool = True,
) -> Throughput:
    """Time `repeats` calls of the sampler on a fixed batch (after a warm-up call).

    Args:
        sampler: the model.
        num_classes: labels cycle through 0..num_classes−1.
        batch_size: images per call.
        repeats: timed calls.
        device: where the model runs.
        warmup: make one untimed call first (skip it when the same network has just run).

    Returns:
        images per second over the timed calls, and what was timed.
    """
    labels = (torch.arange(batch_size) % num_classes).to(device)
    z = class_noise(batch_size, sampler.sample_shape, seed=12345).to(device)
    if warmup:
        sampler.sample(labels, z)  # allocations, lazy initialisation
    if torch.cuda.is_available() and str(device).startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        images = sampler.sample(labels, z)
    float(images.sum())  # forces completion on asynchronous devices
    seconds = time.perf_counter() - start
    return Throughput(batch_size * repeats / seconds, batch_size, repeats, seconds)


@dataclass
class ModelEvaluation:
    """Forgetting and quality metrics of one model."""

    ua: float
    forget_as_override: float
    forget_histogram: list[int]
    remain_accuracy: float
    remain_per_class: dict[int, float]
    fid_remain: float
    kid_remain: float
    kid_remain_std: float
    nfe: int
    images_per_second: float | None
    sampler: str
    throughput: Throughput | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (class keys as strings)."""
        data = asdict(self)
        data["remain_per_class"] = {str(k): v for k, v in self.remain_per_class.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelEvaluation:
        """The evaluation in a `to_dict` output (read back from a metrics.json; other keys of
        `data`, such as a method's training facts, are left out)."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["remain_per_class"] = {int(k): v for k, v in data["remain_per_class"].items()}
        if values.get("throughput") is not None:
            values["throughput"] = Throughput(**values["throughput"])
        return cls(**values)


def evaluate_sampler(
    sampler: ImageSampler,
    classifier: nn.Module,
    real_remain: Tensor,
    num_classes: int,
    forget: list[int],
    override: list[int] | None,
    num_per_class: int,
    seed: int = 0,
    batch_size: int = 500,
    kid_subsets: int = 50,
    kid_subset_size: int = 100,
    throughput_batch: int | None = 64,
    throughput_repeats: int = 3,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> ModelEvaluation:
    """UA, forget-label histogram, remain accuracy, remain FID/KID and throughput of one model.

    Args:
        sampler: the model.
        classifier: the evaluation classifier (logits via forward, `features` for FID/KID).
        real_remain: held-out real remain-class images, uint8 (N, C, H, W).
        num_classes: number of classes K.
        forget: forget classes.
        override: override classes (for the "labelled as override" share), or None.
        num_per_class: generated samples per class.
        seed: seed of the evaluation noise.
        batch_size: samples per network call.
        kid_subsets: KID subsets.
        kid_subset_size: KID subset size (capped by the set sizes).
        throughput_batch: batch timed for images/s (None: skip the timing).
        throughput_repeats: timed calls.
        device: where the models run.
        progress: show progress bars.

    Returns:
        the metrics.
    """
    if num_per_class < 2:
        raise SFDConfigError(f"num_per_class={num_per_class} must be at least 2 (FID needs 2)")
    remain = [c for c in range(num_classes) if c not in forget]
    labels = torch.arange(num_classes).repeat_interleave(num_per_class)  # (K·n,)
    images = to_uint8(generate(sampler, labels, seed, batch_size, device, progress))
    predicted = classify(classifier, images)
    is_forget = torch.isin(labels, torch.tensor(forget))
    forget_predicted = predicted[is_forget]
    per_class = per_class_accuracy(predicted, labels, remain)
    distances = feature_distances(
        real_remain, images[~is_forget], classifier, kid_subsets, kid_subset_size, seed
    )
    throughput = (
        measure_throughput(sampler, num_classes, throughput_batch, throughput_repeats, device)
        if throughput_batch
        else None
    )
    override_share = (
        torch.isin(forget_predicted, torch.tensor(override)).float().mean().item()
        if override
        else float("nan")
    )
    return ModelEvaluation(
        ua=unlearning_accuracy(forget_predicted, forget),
        forget_as_override=override_share,
        forget_histogram=label_histogram(forget_predicted, num_classes),
        remain_accuracy=sum(per_class.values()) / len(per_class),
        remain_per_class=per_class,
        fid_remain=distances.fid,
        kid_remain=distances.kid_mean,
        kid_remain_std=distances.kid_std,
        nfe=sampler.nfe,
        images_per_second=throughput.images_per_second if throughput else None,
        sampler=sampler.name,
        throughput=throughput,
        extra={"kid_subset_size": distances.kid_subset_size, "kid_subsets": kid_subsets},
    )
