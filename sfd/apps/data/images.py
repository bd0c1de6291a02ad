"""Labelled image sets for teachers and evaluation: scikit-learn digits, `.npz` files, CIFAR-10.

Every source becomes a `LabelledImages`: uint8 images (N, C, H, W) and int64 labels (N,). Real
images are only used to train the teacher and the evaluation classifier and as FID references;
SFD itself never sees them.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sfd.apps.data.names import DIGITS as DIGITS
from sfd.errors import SFDConfigError
from sfd.images import LabelledImages, check_label_range

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{index}" for index in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_META = "batches.meta"
CIFAR_SPLITS = ("train", "test", "all")
MAX_CLASSES = 10_000  # a class-conditional teacher embeds every class; labels are indices


def load_images(source: str | Path = DIGITS, split: str = "train") -> LabelledImages:
    """Load a labelled image set.

    Args:
        source: "digits" (scikit-learn's 1,797 handwritten 8×8 digits, 10 classes, no download);
            a path to an `.npz` with `images` (uint8, N×H×W or N×H×W×C), `labels` (integers)
            and optionally `num_classes`; or CIFAR-10's python archive
            (`cifar-10-python.tar.gz`) or its extracted `cifar-10-batches-py` folder.
        split: for CIFAR-10 only: "train" (the 50,000 images of data_batch_1..5), "test"
            (test_batch) or "all".

    Returns:
        the images (N, C, H, W) uint8 and labels (N,) int64.
    """
    path = Path(source)
    is_cifar = path.is_dir() or path.name.endswith((".tar.gz", ".tgz", ".tar"))
    if split != "train" and not is_cifar:
        raise SFDConfigError(
            f"split={split!r} applies to CIFAR-10 archives only; {str(source)!r} has one split"
        )
    if str(source) == DIGITS:
        return load_digits()
    if not path.exists():
        raise SFDConfigError(
            f"data source {str(source)!r} is neither 'digits' nor an existing path "
            "(an .npz file, cifar-10-python.tar.gz or a cifar-10-batches-py folder)"
        )
    if path.is_file() and path.suffix == ".npz":
        return load_npz(path)
    if is_cifar:
        return load_cifar10(path, split)
    raise SFDConfigError(
        f"data source {str(source)!r} is not an .npz file, a CIFAR-10 python archive "
        "(.tar.gz) or a cifar-10-batches-py folder"
    )


def load_digits() -> LabelledImages:
    """scikit-learn's handwritten digits: 1,797 images 1×8×8, intensities 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8)
    return LabelledImages(
        torch.from_numpy(pixels).unsqueeze(1),
        torch.from_numpy(bunch.target.astype(np.int64)),
        num_classes=10,
        horizontal_flip=False,
        class_names=tuple(str(name) for name in bunch.target_names),
    )


def load_npz(path: str | Path) -> LabelledImages:
    """A labelled `.npz`: `images` uint8 N×H×W or N×H×W×C, `labels` integers, optional `num_classes`."""
    path = Path(path)
    with path.open("rb") as file:
        magic = file.read(6)
    if magic.startswith(b"\x93NUMPY"):
        raise SFDConfigError(
            f"{str(path)!r} holds a single array (.npy), not an .npz archive with 'images' "
            "and 'labels'"
        )
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):  # .npz files are zip archives
        raise SFDConfigError(
            f"{str(path)!r} is not an .npz archive (not a zip file); save one with "
            "numpy.savez(path, images=..., labels=...)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise SFDConfigError(
            f"{str(path)!r} is not a readable .npz archive (truncated or corrupted: {error})"
        ) from error
    with archive:
        missing = [key for key in ("images", "labels") if key not in archive.files]
        if missing:
            raise SFDConfigError(
                f"{str(path)!r} lacks the array(s) {missing}; a labelled .npz needs 'images' "
                f"and 'labels' (found {sorted(archive.files)})"
            )
        try:
            images, labels = archive["images"], archive["labels"]
            num_classes = int(archive["num_classes"]) if "num_classes" in archive.files else None
        except ValueError as error:  # object arrays need pickle, which is never allowed here
            raise SFDConfigError(
                f"{str(path)!r} holds an object array (pickled Python objects), which sfd "
                "never loads; store 'images' as uint8 and 'labels' as integers"
            ) from error
    if images.dtype != np.uint8:
        raise SFDConfigError(f"{str(path)!r}: 'images' must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 2, 3, 4) or images.shape[0] == 0:
        raise SFDConfigError(
            f"{str(path)!r}: 'images' has shape {images.shape}; allowed: N×H×W or N×H×W×C "
            "with N ≥ 1 and C in 1..4"
        )
    if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (images.shape[0],):
        raise SFDConfigError(
            f"{str(path)!r}: 'labels' must be integers of shape ({images.shape[0]},), got "
            f"{labels.dtype} {labels.shape}"
        )
    if labels.min() < 0:
        raise SFDConfigError(f"{str(path)!r}: labels must be ≥ 0, found {int(labels.min())}")
    labels = torch.from_numpy(labels.astype(np.int64))
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    if num_classes > MAX_CLASSES:
        raise SFDConfigError(
            f"{str(path)!r}: labels up to {num_classes - 1:,} make {num_classes:,} classes, more "
            f"than the {MAX_CLASSES:,} sfd trains; labels must be class indices 0..K-1"
        )
    check_label_range(labels, num_classes)
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    return LabelledImages(pixels, labels, num_classes)


# --- CIFAR-10's python archive ---------------------------------------------------------------


def latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """`_codecs.encode` as pickle protocol 2 uses it for bytes, limited to that one use."""
    if encoding != "latin1" or not isinstance(text, str):
        raise pickle.UnpicklingError("only latin1 text-to-bytes encoding is allowed")
    return text.encode("latin1")


def _numpy_reconstruct() -> Callable[..., Any]:
    core = getattr(np, "_core", None) or np.core  # numpy ≥ 2 renamed numpy.core to numpy._core
    return core.multiarray._reconstruct


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles plain data only: builtin containers and scalars, bytes and numpy arrays.

    Any other global (a class, a function) is refused, so a crafted file cannot run code.
    """

    ALLOWED: dict[tuple[str, str], Callable[[], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
        ("_codecs", "encode"): lambda: latin1_bytes,
        **{
            (module, name): (lambda kind=kind: kind)
            for module in ("builtins", "__builtin__")
            for name, kind in {
                "dict": dict,
                "list": list,
                "tuple": tuple,
                "set": set,
                "frozenset": frozenset,
                "bytes": bytes,
                "bytearray": bytearray,
                "str": str,
                "int": int,
                "float": float,
                "bool": bool,
            }.items()
        },
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to unpickle {module}.{name}: only plain data and numpy arrays are allowed"
            )
        return self.ALLOWED[(module, name)]()


def load_plain_pickle(raw: bytes, name: str = "pickle") -> Any:
    """Unpickle a plain-data pickle (Python 2 byte strings stay bytes) with `PlainDataUnpickler`.

    Args:
        raw: the pickled bytes.
        name: what they are, for the error message.

    Returns:
        the unpickled plain data.
    """
    try:
        return PlainDataUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError) as error:
        raise SFDConfigError(f"{name} is not a plain-data pickle: {error}") from error


def _text_keys(entry: Any, name: str) -> dict[str, Any]:
    if not isinstance(entry, dict):
        raise SFDConfigError(f"{name} holds a {type(entry).__name__}, not a dict of arrays")
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _read_cifar_members(path: Path, names: list[str]) -> dict[str, bytes]:
    """The raw bytes of the named batch files, from the folder or the (gzipped) tar archive."""
    found: dict[str, bytes] = {}
    if path.is_dir():
        folder = path / CIFAR_FOLDER if (path / CIFAR_FOLDER).is_dir() else path
        for name in names:
            if (folder / name).is_file():
                found[name] = (folder / name).read_bytes()
    else:
        try:
            with tarfile.open(path) as archive:
                for member in archive.getmembers():
                    name = Path(member.name).name
                    if member.isfile() and name in names and name not in found:
                        handle = archive.extractfile(member)
                        if handle is not None:
                            found[name] = handle.read()
        except tarfile.TarError as error:
            raise SFDConfigError(
                f"{str(path)!r} is not a readable tar archive ({error})"
            ) from error
    return found


def load_cifar10(path: str | Path, split: str = "train") -> LabelledImages:
    """CIFAR-10 from its python archive (tar.gz) or the extracted `cifar-10-batches-py` folder.

    Args:
        path: the archive or folder.
        split: "train" (data_batch_1..5), "test" (test_batch) or "all".

    Returns:
        the images (N, 3, 32, 32) uint8 and labels (N,) int64, mirrored training allowed.
    """
    if split not in CIFAR_SPLITS:
        raise SFDConfigError(f"CIFAR-10 split {split!r} is not one of {list(CIFAR_SPLITS)}")
    path = Path(path)
    batches = {
        "train": list(CIFAR_TRAIN_BATCHES),
        "test": [CIFAR_TEST_BATCH],
        "all": [*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH],
    }[split]
    raw = _read_cifar_members(path, [*batches, CIFAR_META])
    missing = [name for name in batches if name not in raw]
    if missing:
        raise SFDConfigError(
            f"{str(path)!r} is not a CIFAR-10 python archive: the batch file(s) {missing} are missing"
        )
    class_names: tuple[str, ...] | None = None
    if CIFAR_META in raw:
        where = f"{path}: {CIFAR_META}"
        meta = _text_keys(load_plain_pickle(raw[CIFAR_META], where), where)
        names = meta.get("label_names")
        if isinstance(names, list):
            class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    images, labels = [], []
    for name in batches:
        where = f"{path}: {name}"
        batch = _text_keys(load_plain_pickle(raw[name], where), where)
        data = batch.get("data")
        batch_labels = batch.get("labels")
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
            raise SFDConfigError(f"{str(path)!r}: {name} has no uint8 (N, 3072) 'data' array")
        if data.shape[1] != 3 * 32 * 32 or batch_labels is None:
            raise SFDConfigError(
                f"{str(path)!r}: {name} must hold 'data' (N, 3072) and 'labels', got "
                f"data {data.shape} and keys {sorted(batch)}"
            )
        if len(batch_labels) != data.shape[0]:
            raise SFDConfigError(
                f"{str(path)!r}: {name} has {data.shape[0]} images but {len(batch_labels)} labels"
            )
        images.append(data.reshape(-1, 3, 32, 32))  # rows are R(1024) G(1024) B(1024), row-major
        labels.append(np.asarray(batch_labels, dtype=np.int64))
    return LabelledImages(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        num_classes=10 if class_names is None else len(class_names),
        horizontal_flip=True,
        class_names=class_names,
    )


def train_heldout_split(
    data: LabelledImages, heldout_fraction: float = 0.2, seed: int = 0
) -> tuple[LabelledImages, LabelledImages]:
    """Split into training and held-out sets, stratified by class and deterministic in `seed`.

    Each class with n ≥ 2 images puts round(n·fraction) of them (at least 1, at most n − 1) into
    the held-out set; a class with one image stays in training.

    Args:
        data: the full set.
        heldout_fraction: share of each class held out, in (0, 1).
        seed: seed of the permutation.

    Returns:
        (train, heldout), disjoint, together the whole set, each in the original order.
    """
    if not 0.0 < heldout_fraction < 1.0:
        raise SFDConfigError(f"heldout_fraction={heldout_fraction} must lie strictly in (0, 1)")
    rng = torch.Generator().manual_seed(seed)
    heldout = torch.zeros(len(data), dtype=torch.bool)
    for label in range(data.num_classes):
        members = (data.labels == label).nonzero().flatten()  # (n,)
        count = members.numel()
        if count < 2:
            continue
        take = min(max(round(count * heldout_fraction), 1), count - 1)
        chosen = members[torch.randperm(count, generator=rng)[:take]]
        heldout[chosen] = True
    return data.subset(~heldout), data.subset(heldout)
