"""The shared pieces of a class-forgetting run: data split, teacher and classifier, each cached.

`sfd demo` and `sfd compare` open alike (`start_run`) and share their teacher and classifier
phases (`teacher_phase`, `classifier_phase`), each announced and timed by the run's `Phases`.

Artefacts that take minutes (the teacher, the evaluation classifier, the stage-1 generator, the
retrained model) are built once per content hash under the cache folder (`sfd.apps.harness.cache`):
the key covers the data file's hash and every setting the artefact depends on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import torch
from torch import Tensor

from sfd.apps.data.captions import find_fashion_folder, named_classes, resolve_class
from sfd.apps.data.images import DIGITS, load_images, train_heldout_split
from sfd.apps.harness.cache import (
    DONE_MARKER,
    cached_build,
    data_fingerprint,
    default_cache_dir,
    resolved_settings,
)
from sfd.apps.harness.phases import Phases
from sfd.apps.harness.settings import check_settings
from sfd.apps.teachers.pixel import train_teacher
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import ATTACKER_SEED_OFFSET
from sfd.eval.classifier import (
    Classifier,
    accuracy,
    classifier_steps,
    load_classifier,
    save_classifier,
    train_classifier,
)
from sfd.eval.revival import revival_images
from sfd.images import LabelledImages
from sfd.teachers.unet import PretrainedVPTeacher

CLASSIFIER_ACCURACY = "heldout_accuracy.json"


@dataclass
class Workspace:
    """Data, teacher and classifier of one run, and where the cache is.

    Attributes:
        data: the whole labelled set.
        train: the training split (teacher, classifier, Retrain).
        heldout: the held-out split (classifier accuracy, FID reference).
        cache: the cache root.
        split: the description of the split (part of every cache key).
        teacher_dir: the teacher's folder.
        teacher_cached: whether it was reused.
        teacher_settings: everything the teacher depends on.
        classifier: the evaluation classifier (eval mode).
        classifier_dir: its cached folder.
        classifier_accuracy: its held-out accuracy.
        classifier_cached: whether it was reused.
        classifier_settings: everything it depends on.
        seconds: seconds per preparation phase.
    """

    data: LabelledImages
    train: LabelledImages
    heldout: LabelledImages
    cache: Path
    split: dict[str, Any]
    teacher_dir: Path | None = None
    teacher_cached: bool = False
    teacher_settings: dict[str, Any] = field(default_factory=dict)
    classifier: Classifier | None = None
    classifier_dir: Path | None = None
    classifier_accuracy: float = float("nan")
    classifier_cached: bool = False
    classifier_settings: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def teacher(self) -> PretrainedVPTeacher:
        """A fresh copy of the frozen teacher, loaded from its folder."""
        assert self.teacher_dir is not None, "build the teacher first"
        return PretrainedVPTeacher(str(self.teacher_dir))

    def real_remain(self, forget: list[int]) -> Tensor:
        """Held-out real images of the remain classes, uint8 (N, C, H, W): the FID reference."""
        return self.heldout.images[~torch.isin(self.heldout.labels, torch.tensor(forget))]


def load_split(source: str, heldout_fraction: float, seed: int, cache: Path | None) -> Workspace:
    """Load the data and split it (no artefact is built yet).

    Args:
        source: "digits" or a labelled .npz / CIFAR-10 path.
        heldout_fraction: share of each class held out.
        seed: the split's seed.
        cache: the cache root (None: `default_cache_dir()`).

    Returns:
        the workspace with data and split.
    """
    if source != DIGITS and not Path(source).exists():
        raise SFDConfigError(f"--data {source!r} does not exist")
    data = load_images(source)
    train, heldout = train_heldout_split(data, heldout_fraction, seed)
    split = {"data": data_fingerprint(source), "heldout_fraction": heldout_fraction}
    split["split_seed"] = seed
    return Workspace(data, train, heldout, cache or default_cache_dir(), split)


def start_run(settings: Any) -> tuple[Workspace, Any]:
    """The opening of `sfd demo` and `sfd compare`: threads, progress bars, data, the forget and
    override classes (a name becomes its index in `settings`), every check.

    Nothing is written yet.

    Args:
        settings: `ClassRunSettings` or `CompareSettings`.

    Returns:
        (the workspace with data and split, the parsed SFD configuration).
    """
    if settings.threads is not None:
        if settings.threads < 1:
            raise SFDConfigError(f"--threads {settings.threads} must be at least 1")
        torch.set_num_threads(settings.threads)
    if not settings.progress:  # also the loading bars of diffusers' from_pretrained
        diffusers.utils.logging.disable_progress_bar()
    workspace = load_split(
        settings.data, settings.heldout_fraction, settings.seed, settings.teacher_cache
    )
    classes = named_classes(settings.data, workspace.data)  # --forget seven, --forget 7
    settings.forget = resolve_class(settings.forget, classes, "--forget")
    settings.override = resolve_class(settings.override, classes, "--override")
    sfd = check_settings(settings, workspace.data)
    if settings.revival is not None:  # too few held-out images of the class: refused up front
        heldout = workspace.heldout
        revival_images(heldout.images, heldout.labels, settings.forget, settings.revival.images,
                       settings.revival.seed)  # fmt: skip
    return workspace, sfd


def teacher_recipe(
    seed: int, steps: int | None, channels: tuple[int, ...] | None, null_class: bool = True
) -> dict[str, Any]:
    """The keyword settings of `train_teacher` for this run (the demo trains with a null class)."""
    given: dict[str, Any] = {"seed": seed, "null_class": null_class}
    if steps is not None:
        given["max_steps"] = steps
    if channels is not None:
        given["block_out_channels"] = tuple(channels)
    return given


def build_teacher(
    workspace: Workspace,
    recipe: dict[str, Any],
    accelerator: str,
    progress: bool,
    classes: list[int] | None = None,
) -> tuple[Path, bool, dict[str, Any], float]:
    """The teacher trained by `recipe`, from the cache or trained now (on `classes` only, if given).

    Returns:
        (folder, reused, description, training seconds as recorded when it was built).
    """
    train = workspace.train
    description = {**workspace.split, **resolved_settings(train_teacher, **recipe)}
    if classes is not None:  # Retrain: the same recipe on the remain classes only
        description["classes"] = list(classes)
        train = train.subset(torch.isin(train.labels, torch.tensor(classes)))

    def build(folder: Path) -> None:
        clock = time.perf_counter()
        train_teacher(train, folder, accelerator=accelerator, progress=progress, **recipe)
        seconds = time.perf_counter() - clock
        (folder / "build_seconds.json").write_text(json.dumps({"seconds": seconds}) + "\n")

    folder, reused = cached_build(workspace.cache, "teacher", description, build)
    return folder, reused, description, recorded_seconds(folder)


def build_classifier(
    workspace: Workspace, given: dict[str, Any], progress: bool
) -> tuple[Classifier, Path, float, bool, dict[str, Any]]:
    """The evaluation classifier of a workspace (`cached_classifier` on its split)."""
    return cached_classifier(
        workspace.cache,
        "classifier",
        workspace.split,
        workspace.train,
        workspace.heldout,
        given,
        progress,
    )


def cached_classifier(
    cache: Path,
    kind: str,
    split: dict[str, Any],
    train: Any,
    heldout: Any,
    given: dict[str, Any],
    progress: bool,
) -> tuple[Classifier, Path, float, bool, dict[str, Any]]:
    """The evaluation classifier, from the cache or trained now on the training split.

    Args:
        cache: the cache root.
        kind: the cache entry's name prefix ("classifier", "text-classifier").
        split: what identifies the data and its split (part of the cache key).
        train, heldout: the labelled images it trains and is checked on.
        given: `train_classifier` settings that differ from its defaults; without `max_steps`,
            `classifier_steps` of the training set's size.
        progress: progress bars.

    Returns:
        (classifier, folder, held-out accuracy, reused, description).
    """
    if "max_steps" not in given:
        batch_size = resolved_settings(train_classifier, **given)["batch_size"]
        pixels = train.image_shape[1] * train.image_shape[2]
        given = {**given, "max_steps": classifier_steps(len(train), pixels, batch_size)}
    description = {**split, **resolved_settings(train_classifier, **given)}

    def build(folder: Path) -> None:
        classifier, accuracy = train_classifier(train, heldout, progress=progress, **given)
        save_classifier(classifier, folder)
        (folder / CLASSIFIER_ACCURACY).write_text(json.dumps({"accuracy": accuracy}) + "\n")

    folder, reused = cached_build(cache, kind, description, build)
    accuracy = json.loads((folder / CLASSIFIER_ACCURACY).read_text())["accuracy"]
    return load_classifier(folder), folder, accuracy, reused, description


def cached_attacker_classifier(
    cache: Path,
    kind: str,
    split: dict[str, Any],
    train: Any,
    heldout: Any,
    given: dict[str, Any],
    progress: bool,
) -> tuple[Classifier, Path, float, bool, dict[str, Any]]:
    """The attacker classifier of a transfer attack: `cached_classifier` with the evaluation
    classifier's split and settings `given` (its recipe), the seed (initial weights, batches,
    augmentations) moved by `ATTACKER_SEED_OFFSET`. Cached like the judge, under another key."""
    recipe = {**given, "seed": given.get("seed", 0) + ATTACKER_SEED_OFFSET}
    return cached_classifier(cache, kind, split, train, heldout, recipe, progress)


def attacker_for_judge(
    cache: Path,
    kind: str,
    judge_dir: Path,
    train: Any,
    heldout: Any,
    split_check: dict[str, Any],
    progress: bool,
) -> tuple[Classifier, Path, float, bool, dict[str, Any]]:
    """The attacker classifier of a saved evaluation classifier, from the recipe and split its
    cache record (`cache.json`, which the demos copy with it) names: `cached_attacker_classifier`
    on `train` (the caller's training split of that data, whose identity `split_check` gives:
    e.g. heldout_fraction, split_seed; each must match the record's)."""
    record = judge_dir / DONE_MARKER
    if not record.is_file():
        raise SFDConfigError(
            f"--classifier {str(judge_dir)!r} records no training recipe ({DONE_MARKER}); a "
            "transfer attack needs --attacker-classifier DIR"
        )
    recorded = json.loads(record.read_text())
    recipe_keys = set(resolved_settings(train_classifier))
    given = {key: value for key, value in recorded.items() if key in recipe_keys}
    split = {key: value for key, value in recorded.items() if key not in recipe_keys}
    for key, value in split_check.items():
        if key == "data" and split.get(key) != value:
            raise SFDConfigError(
                f"--classifier {str(judge_dir)!r} was trained on the data {split.get(key)!r}, "
                f"this evaluation's is {value!r}; the attacker classifier trains on the judge's "
                "data (evaluate with that --data, or give --attacker-classifier DIR)"
            )
        if split.get(key) != value:
            raise SFDConfigError(
                f"--classifier {str(judge_dir)!r} was trained on the split {key}="
                f"{split.get(key)!r}, this evaluation's is {value!r}; the attacker classifier "
                "trains on the judge's split (or give --attacker-classifier DIR)"
            )
    return cached_attacker_classifier(cache, kind, split, train, heldout, given, progress)


def source_fingerprint(kind: str, source: str) -> str:
    """The "data" entry a classifier's cache record holds for `source`: `data_fingerprint` of the
    class data ("classifier"), or of the Fashion-MNIST folder a text source names
    ("text-classifier", as `sfd demo-text` records it)."""
    if kind == "text-classifier" and source != DIGITS:
        return data_fingerprint(str(find_fashion_folder(source)))
    return data_fingerprint(source)


def check_not_the_judge(judge: torch.nn.Module, attacker: torch.nn.Module) -> None:
    """Refuse an attacker classifier whose weights are the evaluation classifier's."""
    mine, theirs = judge.state_dict(), attacker.state_dict()
    if mine.keys() == theirs.keys() and all(
        mine[key].shape == theirs[key].shape and torch.equal(mine[key], theirs[key]) for key in mine
    ):
        raise SFDConfigError(
            "the attacker classifier has the evaluation classifier's weights; a transfer attack "
            "needs another classifier (the same recipe, another seed)"
        )


def attacker_classifier(
    judge: Classifier,
    judge_dir: Path,
    given_dir: Path | None,
    cache: Path | None,
    kind: str,
    real: str,
    train: LabelledImages,
    heldout: LabelledImages,
    split: dict[str, Any],
    progress: bool,
) -> tuple[Classifier, dict[str, Any]]:
    """The transfer attacks' classifier of `sfd eval` / `sfd eval-text` and its protocol entry:
    the folder `given_dir` (--attacker-classifier), or one trained once (cached under `cache`,
    default `default_cache_dir`) from the judge's recorded recipe with another seed on the judge's
    split of `real` (`split`: this evaluation's heldout_fraction and split_seed, checked against
    the record); never the judge's weights, always its architecture."""
    if given_dir is not None:
        attacker = load_classifier(given_dir)
        folder, reused, recipe = given_dir, True, None
        heldout_accuracy = accuracy(attacker, heldout)
    else:
        check = {**split, "data": source_fingerprint(kind, real)}
        attacker, folder, heldout_accuracy, reused, recipe = attacker_for_judge(
            cache or default_cache_dir(), kind, judge_dir, train, heldout, check, progress
        )
    if attacker.config != judge.config:
        raise SFDConfigError(
            f"the attacker classifier {str(folder)!r} has another architecture than --classifier "
            f"({attacker.config} against {judge.config})"
        )
    check_not_the_judge(judge, attacker)
    entry = {"folder": str(folder), "reused_from_cache": reused, "recipe": recipe,
             "heldout_accuracy": heldout_accuracy}  # fmt: skip
    return attacker, entry


def teacher_phase(workspace: Workspace, settings: Any, accelerator: str, phases: Phases) -> None:
    """The teacher phase: build or reuse the teacher and store it in the workspace.

    Args:
        workspace: where the teacher goes.
        settings: `ClassRunSettings` or `CompareSettings` (seed, teacher steps and channels).
        accelerator: the Lightning accelerator to train it on.
        phases: the run's phases (announced and timed as "teacher").
    """
    with phases.phase("teacher", f"teacher (cache: {workspace.cache})"):
        recipe = teacher_recipe(settings.seed, settings.teacher_steps, settings.teacher_channels)
        teacher_dir, cached, description, _ = build_teacher(
            workspace, recipe, accelerator, settings.progress
        )
        workspace.teacher_dir, workspace.teacher_cached = teacher_dir, cached
        workspace.teacher_settings = description
        phases.built("teacher", teacher_dir, cached)


def classifier_recipe(settings: Any) -> dict[str, Any]:
    """The evaluation classifier's `train_classifier` settings of a class run (seed, steps)."""
    given: dict[str, Any] = {"seed": settings.seed}
    if settings.classifier_steps is not None:
        given["max_steps"] = settings.classifier_steps
    return given


def prepare_classifier(workspace: Workspace, settings: Any) -> None:
    """Build or reuse the evaluation classifier and store it in the workspace."""
    classifier, folder, accuracy, cached, description = build_classifier(
        workspace, classifier_recipe(settings), settings.progress
    )
    workspace.classifier, workspace.classifier_dir = classifier, folder
    workspace.classifier_accuracy, workspace.classifier_cached = accuracy, cached
    workspace.classifier_settings = description


def workspace_attacker(workspace: Workspace, settings: Any) -> tuple[Classifier, dict[str, Any]]:
    """A class run's attacker classifier (`cached_attacker_classifier` of its classifier's
    recipe and split) and its protocol entry; never the judge's weights."""
    attacker, folder, heldout_accuracy, cached, _ = cached_attacker_classifier(
        workspace.cache, "classifier", workspace.split, workspace.train, workspace.heldout,
        classifier_recipe(settings), settings.progress,
    )  # fmt: skip
    assert workspace.classifier is not None
    check_not_the_judge(workspace.classifier, attacker)
    entry = {"folder": str(folder), "reused_from_cache": cached,
             "heldout_accuracy": heldout_accuracy}  # fmt: skip
    return attacker, entry


def classifier_phase(workspace: Workspace, settings: Any, phases: Phases) -> None:
    """The classifier phase: `prepare_classifier`, then its held-out accuracy is announced."""
    with phases.phase("classifier", "evaluation classifier"):
        prepare_classifier(workspace, settings)
        phases.say(f"classifier held-out accuracy {100 * workspace.classifier_accuracy:.1f} %")


def recorded_seconds(folder: Path) -> float:
    """The build time a cached artefact recorded (NaN if it did not)."""
    file = folder / "build_seconds.json"
    return json.loads(file.read_text())["seconds"] if file.is_file() else float("nan")
