"""Data sources: scikit-learn digits, labelled .npz, CIFAR-10's python archive; the stratified split."""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from sfd.apps.data.images import load_images, train_heldout_split
from sfd.errors import SFDConfigError
from sfd.images import LabelledImages

CIFAR_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer"]
CIFAR_NAMES += [b"dog", b"frog", b"horse", b"ship", b"truck"]


# --- digits ---------------------------------------------------------------------------------------


def test_digits_shapes_ranges_labels() -> None:
    data = load_images("digits")
    assert len(data) == 1797 and data.num_classes == 10
    assert data.images.dtype == torch.uint8 and data.images.shape == (1797, 1, 8, 8)
    assert data.labels.dtype == torch.int64 and data.labels.shape == (1797,)
    assert torch.equal(data.labels.unique(), torch.arange(10))
    assert not data.horizontal_flip  # a mirrored digit is not a digit
    # The 17 ink levels 0..16 of the original scans map onto 0..255 (both ends reached).
    levels = {round(level * 255 / 16) for level in range(17)}
    assert set(data.images.unique().tolist()) <= levels
    assert data.images.min() == 0 and data.images.max() == 255
    x = data.to_model_space()
    assert x.dtype == torch.float32 and x.shape == (1797, 1, 8, 8)
    assert x.min() == -1.0 and x.max() == 1.0
    assert torch.equal(x[data.images == 0], torch.full_like(x[data.images == 0], -1.0))


def test_subset_by_mask_and_indices() -> None:
    data = load_images("digits")
    mask = data.labels == 3
    by_mask = data.subset(mask)
    by_index = data.subset(mask.nonzero().flatten())
    assert torch.equal(by_mask.images, by_index.images) and (by_mask.labels == 3).all()
    assert len(by_mask) == int(mask.sum()) and by_mask.num_classes == 10


# --- .npz -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_npz_round_trip(tmp_path: Path, channels: int | None) -> None:
    rng = np.random.default_rng(0)
    shape = (12, 5, 6) if channels is None else (12, 5, 6, channels)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    labels = rng.integers(0, 4, 12)
    labels[:4] = np.arange(4)
    np.savez(tmp_path / "set.npz", images=images, labels=labels)
    data = load_images(str(tmp_path / "set.npz"))
    expected = images[:, None] if channels is None else images.transpose(0, 3, 1, 2)
    assert data.images.shape == (12, channels or 1, 5, 6)
    assert np.array_equal(data.images.numpy(), expected)
    # The pixel at row 2, column 4 of image 7, channel 0, stays where it was.
    assert data.images[7, 0, 2, 4] == (images[7, 2, 4] if channels is None else images[7, 2, 4, 0])
    assert np.array_equal(data.labels.numpy(), labels) and data.num_classes == 4


def test_npz_num_classes_entry(tmp_path: Path) -> None:
    images = np.zeros((3, 4, 4), dtype=np.uint8)
    np.savez(tmp_path / "set.npz", images=images, labels=np.array([0, 1, 1]), num_classes=5)
    assert load_images(tmp_path / "set.npz").num_classes == 5
    np.savez(tmp_path / "bad.npz", images=images, labels=np.array([0, 1, 5]), num_classes=5)
    with pytest.raises(SFDConfigError, match="outside the allowed classes 0..4"):
        load_images(tmp_path / "bad.npz")


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"images": np.zeros((3, 4, 4), np.uint8)}, "lacks the array"),
        ({"labels": np.zeros(3, np.int64)}, "lacks the array"),
        ({"images": np.zeros((3, 4, 4), np.float32), "labels": np.zeros(3, int)}, "uint8"),
        ({"images": np.zeros((3, 16), np.uint8), "labels": np.zeros(3, int)}, "N×H×W"),
        ({"images": np.zeros((3, 4, 4, 7), np.uint8), "labels": np.zeros(3, int)}, "C in 1..4"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(2, int)}, "shape \\(3,\\)"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.zeros(3, float)}, "integers"),
        ({"images": np.zeros((3, 4, 4), np.uint8), "labels": np.array([0, -1, 2])}, "≥ 0"),
    ],
)
def test_npz_bad_inputs(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SFDConfigError, match=message):
        load_images(tmp_path / "bad.npz")


def test_missing_and_unknown_sources(tmp_path: Path) -> None:
    with pytest.raises(SFDConfigError, match="neither 'digits' nor an existing path"):
        load_images(str(tmp_path / "nothing.npz"))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SFDConfigError, match="is not an .npz file"):
        load_images(tmp_path / "notes.txt")


def test_labelled_images_rejects_bad_tensors() -> None:
    with pytest.raises(SFDConfigError, match="uint8"):
        LabelledImages(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64), 2)
    with pytest.raises(SFDConfigError, match="int64"):
        LabelledImages(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(2), 2)
    with pytest.raises(SFDConfigError, match="outside the allowed classes"):
        LabelledImages(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 2]), 2)


# --- CIFAR-10's python archive --------------------------------------------------------------------


def cifar_images(count: int, offset: int) -> np.ndarray:
    """Distinct RGB images (N, 3, 32, 32): red encodes the image, green the row, blue the column."""
    rows, cols = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    images = np.empty((count, 3, 32, 32), dtype=np.uint8)
    for i in range(count):
        images[i, 0] = offset + i
        images[i, 1] = rows * 7
        images[i, 2] = (cols * 5 + i) % 256
    return images


def write_cifar(folder: Path, per_batch: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Write a CIFAR-10 python folder in the published format; returns train images/labels, test."""
    folder.mkdir(parents=True)
    train_images, train_labels = [], []
    names = [f"data_batch_{b}" for b in range(1, 6)] + ["test_batch"]
    for number, name in enumerate(names):
        images = cifar_images(per_batch, offset=10 * number)
        labels = [(number + i) % 10 for i in range(per_batch)]
        # A row is the 1024 red values, then green, then blue, each image row-major.
        rows = np.stack(
            [np.concatenate([im[0].ravel(), im[1].ravel(), im[2].ravel()]) for im in images]
        )
        entry = {
            b"batch_label": f"batch {number}".encode(),
            b"labels": labels,
            b"data": rows,
            b"filenames": [f"img_{number}_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        if name != "test_batch":
            train_images.append(images)
            train_labels += labels
    meta = {b"label_names": CIFAR_NAMES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    test_images = cifar_images(per_batch, offset=50)
    return np.concatenate(train_images), np.array(train_labels), test_images


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, tuple[np.ndarray, ...]]:
    root = tmp_path_factory.mktemp("cifar")
    expected = write_cifar(root / "cifar-10-batches-py")
    archive = root / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(root / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return root / "cifar-10-batches-py", archive, expected


@pytest.mark.parametrize("which", ["folder", "archive", "parent"])
def test_cifar_loads(cifar: tuple[Path, Path, tuple[np.ndarray, ...]], which: str) -> None:
    folder, archive, (train_images, train_labels, _) = cifar
    source = {"folder": folder, "archive": archive, "parent": folder.parent}[which]
    data = load_images(str(source))
    assert data.images.shape == (20, 3, 32, 32) and data.num_classes == 10
    assert np.array_equal(data.images.numpy(), train_images)
    assert np.array_equal(data.labels.numpy(), train_labels)
    assert data.class_names is not None and data.class_names[1] == "automobile"
    assert data.horizontal_flip


def test_cifar_splits(cifar: tuple[Path, Path, tuple[np.ndarray, ...]]) -> None:
    _, archive, (_, _, test_images) = cifar
    test = load_images(archive, split="test")
    assert np.array_equal(test.images.numpy(), test_images)
    assert len(load_images(archive, split="all")) == 24
    with pytest.raises(SFDConfigError, match="split 'val'"):
        load_images(archive, split="val")
    with pytest.raises(SFDConfigError, match="applies to CIFAR-10 archives only"):
        load_images("digits", split="test")


def test_cifar_missing_batch(tmp_path: Path) -> None:
    write_cifar(tmp_path / "cifar-10-batches-py")
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    with pytest.raises(SFDConfigError, match="data_batch_3"):
        load_images(tmp_path / "cifar-10-batches-py")


def test_cifar_refuses_code_in_pickles(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    (folder / "data_batch_1").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(SFDConfigError, match="not a plain-data pickle"):
        load_images(folder)
    assert not marker.exists()


def test_cifar_wrong_data_shape(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)
    entry = {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(entry, protocol=2))
    with pytest.raises(SFDConfigError, match=r"data_batch_2 must hold 'data' \(N, 3072\)"):
        load_images(folder)


# --- split ----------------------------------------------------------------------------------------


def indexed_set(counts: list[int]) -> LabelledImages:
    """Images whose two pixels spell their own index, so subsets can be traced back."""
    total = sum(counts)
    index = torch.arange(total)
    pixels = torch.stack([index // 256, index % 256], dim=1).to(torch.uint8)  # (N, 2)
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    return LabelledImages(pixels.reshape(total, 1, 1, 2), labels, len(counts))


def trace(data: LabelledImages) -> list[int]:
    pixels = data.images.reshape(len(data), 2).long()
    return (pixels[:, 0] * 256 + pixels[:, 1]).tolist()


def test_split_is_stratified_deterministic_and_disjoint() -> None:
    counts = [50, 30, 21, 1, 2]
    data = indexed_set(counts)
    train, heldout = train_heldout_split(data, 0.2, seed=3)
    assert set(trace(train)).isdisjoint(trace(heldout))
    assert sorted(trace(train) + trace(heldout)) == list(range(sum(counts)))
    # round(n * 0.2), at least one and at most n - 1; a single image stays in training.
    assert heldout.labels.bincount(minlength=5).tolist() == [10, 6, 4, 0, 1]
    for part in (train, heldout):
        assert torch.equal(part.labels, data.labels[trace(part)])
    again_train, again_heldout = train_heldout_split(data, 0.2, seed=3)
    assert trace(again_heldout) == trace(heldout) and trace(again_train) == trace(train)
    _, other = train_heldout_split(data, 0.2, seed=4)
    assert trace(other) != trace(heldout)


def test_split_on_digits_and_bad_fraction() -> None:
    data = load_images("digits")
    train, heldout = train_heldout_split(data)
    assert len(train) + len(heldout) == 1797 and len(heldout) == 359
    for fraction in (0.0, 1.0, -0.1):
        with pytest.raises(SFDConfigError, match="heldout_fraction"):
            train_heldout_split(data, fraction)
