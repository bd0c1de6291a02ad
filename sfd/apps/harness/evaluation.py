"""The evaluation protocol of a class-forgetting run (docs/method.md §6), shared by `sfd demo` and
`sfd compare`: every model gets the same noise, the same classifier and the same FID reference.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sfd.apps.harness.settings import ClassRunSettings
from sfd.apps.harness.workspace import Workspace
from sfd.eval.evaluate import ModelEvaluation, evaluate_sampler, generate, ua_ceiling
from sfd.eval.metrics import FeatureDistances, feature_distances
from sfd.eval.revival import revival_images, revive_class_sampler
from sfd.images import to_uint8

# Protocol entries of every class-forgetting report.
SAME_NOISE = "sample i uses the same z for every model (seed above)"
FEATURES = "evaluation classifier penultimate layer (torchmetrics feature=)"
THROUGHPUT = "timed calls on one fixed batch after one warm-up call (no extrapolation)"


def evaluate_one(sampler: Any, settings: ClassRunSettings, workspace: Workspace) -> ModelEvaluation:
    """The protocol of docs/method.md §6 for one model (same noise, classifier and reference)."""
    assert workspace.classifier is not None
    return evaluate_sampler(
        sampler,
        workspace.classifier,
        workspace.real_remain([settings.forget]),
        workspace.data.num_classes,
        [settings.forget],
        [settings.override],
        settings.eval_per_class,
        seed=settings.seed,
        throughput_batch=settings.throughput_batch,
        throughput_repeats=settings.throughput_repeats,
        progress=settings.progress,
    )


def evaluate_with_grid(
    sampler: Any, settings: ClassRunSettings, workspace: Workspace
) -> tuple[ModelEvaluation, Tensor]:
    """`evaluate_one` and the model's uint8 sample grid (`grid_per_class` rows per class)."""
    labels = torch.arange(workspace.data.num_classes).repeat_interleave(settings.grid_per_class)
    evaluation = evaluate_one(sampler, settings, workspace)
    return evaluation, to_uint8(generate(sampler, labels, settings.seed + 1))


def real_floor(settings: ClassRunSettings, workspace: Workspace) -> FeatureDistances:
    """FID / KID of the real training remain images against the held-out ones (the floor)."""
    real_remain = workspace.real_remain([settings.forget])
    train_remain = workspace.train.images[workspace.train.labels != settings.forget]
    assert workspace.classifier is not None
    return feature_distances(train_remain, real_remain, workspace.classifier, seed=settings.seed)


def protocol_head(settings: ClassRunSettings, workspace: Workspace) -> dict[str, Any]:
    """The first protocol entries of `sfd compare` and `sfd demo`: seed, data, split, reference."""
    real_remain = workspace.real_remain([settings.forget])
    assert workspace.classifier is not None
    heldout = workspace.heldout
    return {
        "seed": settings.seed,
        "data": settings.data,
        "train_images": len(workspace.train),
        "heldout_images": len(workspace.heldout),
        "fid_reference": f"{len(real_remain)} held-out real remain-class images (uint8, as stored)",
        "generated_per_class": settings.eval_per_class,
        "ua_ceiling": ua_ceiling(
            workspace.classifier, heldout.images, heldout.labels, settings.forget, settings.override
        ),
    }


def class_revival(sampler: Any, settings: ClassRunSettings, workspace: Workspace) -> dict[str, Any]:
    """The revival test (`sfd.eval.revival`, as `sfd eval --revival`) of one class model: a copy
    fine-tuned on `settings.revival.images` held-out real images of the forget class, UA measured
    on `eval_per_class` forget-class samples with the noise of the run's seed.

    Returns:
        the `RevivalResult` as JSON data.
    """
    assert workspace.classifier is not None and settings.revival is not None
    heldout, budget = workspace.heldout, settings.revival
    images = revival_images(heldout.images, heldout.labels, settings.forget, budget.images,
                            budget.seed)  # fmt: skip
    return revive_class_sampler(
        sampler, workspace.classifier, settings.forget, images, budget,
        settings.eval_per_class, settings.seed, progress=settings.progress,
    ).to_dict()  # fmt: skip
