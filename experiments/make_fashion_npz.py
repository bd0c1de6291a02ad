"""Build an 8×8 Fashion-MNIST `.npz` for `sfd demo` / `sfd compare --data` (CPU-sized).

    apt-get install -y dataset-fashion-mnist        # Debian: idx files under /usr/share/datasets
    python experiments/make_fashion_npz.py --output runs/fashion8.npz

Reads the training idx files, keeps the first --per-class images of each of the 10 classes (in file
order), crops the central 24×24 pixels (the items are centred; the border is mostly blank) and
averages 3×3 blocks to 8×8, the size of scikit-learn's digits, so the digits recipe (teacher, SFD,
baselines) runs at the same CPU cost. Writes `images` uint8 (N, 8, 8), `labels` int64 (N,) and
`class_names`.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np

SOURCE = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped): big-endian header of dimension sizes, then uint8 data."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)


def downsample(images: np.ndarray, crop: int = 24, factor: int = 3) -> np.ndarray:
    """(N, 28, 28) uint8 -> centre crop (N, crop, crop) -> block means (N, crop/f, crop/f) uint8."""
    border = (images.shape[1] - crop) // 2
    centre = images[:, border : border + crop, border : border + crop].astype(np.float64)
    size = crop // factor
    blocks = centre.reshape(len(images), size, factor, size, factor).mean(axis=(2, 4))
    return np.rint(blocks).astype(np.uint8)


def build(output: Path, source: Path = SOURCE, per_class: int = 1200) -> str:
    """Write the 8×8 `.npz` of the first `per_class` training images of each class; what it wrote."""
    images = read_idx(source / "train-images-idx3-ubyte.gz")
    labels = read_idx(source / "train-labels-idx1-ubyte.gz").astype(np.int64)
    keep = np.concatenate(
        [np.flatnonzero(labels == c)[:per_class] for c in range(len(CLASS_NAMES))]
    )
    keep.sort()
    small = downsample(images[keep])
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        output, images=small, labels=labels[keep], class_names=np.array(CLASS_NAMES)
    )
    counts = np.bincount(labels[keep], minlength=len(CLASS_NAMES)).tolist()
    return f"wrote {output}: {small.shape} uint8, per class {counts}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SOURCE)
    parser.add_argument("--output", type=Path, default=Path("runs/fashion8.npz"))
    parser.add_argument("--per-class", type=int, default=1200)
    options = parser.parse_args()
    print(build(options.output, options.source, options.per_class))


if __name__ == "__main__":
    main()
