"""The evaluation classifier: shapes, bit-identical reloads, determinism, quick learning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from sfd.apps.data.images import load_images, train_heldout_split
from sfd.errors import SFDConfigError
from sfd.eval.classifier import (
    STEPS,
    Classifier,
    accuracy,
    classifier_steps,
    load_classifier,
    predict_labels,
    save_classifier,
    train_classifier,
)
from sfd.images import LabelledImages


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_split() -> tuple[LabelledImages, LabelledImages]:
    return train_heldout_split(load_images("digits"), 0.2, seed=0)


@pytest.mark.parametrize(
    ("shape", "classes"), [((1, 8, 8), 10), ((3, 32, 32), 10), ((2, 6, 10), 3)]
)
def test_shapes(shape: tuple[int, int, int], classes: int) -> None:
    classifier = Classifier(shape[0], classes, shape[1:], feature_dim=96).eval()
    x = torch.rand(5, *shape) * 2 - 1
    features = classifier.features(x)
    assert features.shape == (5, 96) and features.dtype == torch.float32
    assert classifier(x).shape == (5, classes)
    assert torch.allclose(classifier(x), classifier.head(features))  # logits read the features
    assert predict_labels(classifier, x, batch_size=2).shape == (5,)


def test_save_load_bit_identical(tmp_path: Path, digits_split) -> None:
    train, heldout = digits_split
    classifier, _ = train_classifier(train, heldout, max_steps=5, progress=False)
    save_classifier(classifier, tmp_path / "classifier")
    loaded = load_classifier(tmp_path / "classifier")
    assert not loaded.training
    x = heldout.to_model_space()[:64]
    with torch.no_grad():
        assert torch.equal(loaded(x), classifier(x))
        assert torch.equal(loaded.features(x), classifier.features(x))


def test_training_is_deterministic(digits_split) -> None:
    train, heldout = digits_split
    first, first_accuracy = train_classifier(train, heldout, max_steps=8, progress=False, seed=1)
    second, second_accuracy = train_classifier(train, heldout, max_steps=8, progress=False, seed=1)
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    assert first_accuracy == second_accuracy


def test_learns_well_above_chance_quickly(digits_split) -> None:
    train, heldout = digits_split
    classifier, heldout_accuracy = train_classifier(train, heldout, max_steps=150, progress=False)
    assert heldout_accuracy > 0.6  # chance is 0.1
    assert accuracy(classifier, heldout) == heldout_accuracy


def test_load_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SFDConfigError, match="is not a saved classifier"):
        load_classifier(tmp_path / "nothing")


@pytest.mark.slow
def test_default_classifier_reaches_97_percent(digits_split) -> None:
    train, heldout = digits_split
    _, heldout_accuracy = train_classifier(train, heldout, progress=False)
    assert heldout_accuracy >= 0.97


def test_classifier_steps_are_passes_within_a_compute_cap() -> None:
    """The demos' training length: the digits keep the default 800 steps (so their cached
    classifiers keep their keys), 8×8 Fashion-MNIST gets 40 passes, 32×32 images stay at 800."""
    assert classifier_steps(1437, 8 * 8) == STEPS == 800  # digits: 71 passes already
    assert classifier_steps(9600, 8 * 8) == 3000  # 40 · 9600 / 128
    assert classifier_steps(56000, 32 * 32) == STEPS  # the cap (190 steps) is below the floor
    assert classifier_steps(20000, 8 * 8) == 25_000_000 // (128 * 64)  # the cap
    assert classifier_steps(9600, 8 * 8, batch_size=64) == 6000
