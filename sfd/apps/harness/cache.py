"""Cached demo artefacts (teacher, classifier), keyed by the data source and every training setting."""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfd.apps.data.images import DIGITS
from sfd.folders import write_folder_atomically

DONE_MARKER = "cache.json"  # written last: a folder without it is an interrupted build


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/sfd` (default `~/.cache/sfd`)."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "sfd"


def data_fingerprint(source: str) -> str:
    """Identity of a data source: 'digits' plus scikit-learn's version, or a hash of the file(s)."""
    if source == DIGITS:
        return f"digits/scikit-learn-{importlib.metadata.version('scikit-learn')}"
    path = Path(source)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(path if path.is_dir() else path.parent).as_posix().encode())
        with file.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return f"{path.name}/sha256-{digest.hexdigest()[:16]}"


def weights_fingerprint(module: Any) -> str:
    """Identity of a network's weights: a hash of its state dict (names, dtypes, shapes, values)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.view(-1).view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return f"sha256-{digest.hexdigest()[:16]}"


def resolved_settings(function: Callable[..., Any], **given: Any) -> dict[str, Any]:
    """Every keyword setting `function` would run with: `given` plus its defaults (JSON-ready).

    Positional data arguments (those without defaults) and `output_dir` / `progress` /
    `accelerator`, which do not change the result, are left out.
    """
    skip = {"output_dir", "progress", "accelerator"}
    settings = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name in skip or (parameter.default is inspect.Parameter.empty and name not in given):
            continue
        value = given.get(name, parameter.default)
        settings[name] = list(value) if isinstance(value, tuple) else value
    return settings


def cache_key(kind: str, description: dict[str, Any]) -> str:
    """`kind-<hash>` of a JSON description."""
    text = json.dumps(description, sort_keys=True, default=str)
    return f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def cached_build(
    cache_dir: Path, kind: str, description: dict[str, Any], build: Callable[[Path], None]
) -> tuple[Path, bool]:
    """The cached folder for `description`, built atomically by `build(folder)` if missing.

    Args:
        cache_dir: the cache root.
        kind: artefact kind ("teacher", "classifier").
        description: everything the artefact depends on.
        build: writes the artefact into the folder it is given.

    Returns:
        (folder, whether it was reused from the cache).
    """
    folder = cache_dir / cache_key(kind, description)
    if (folder / DONE_MARKER).is_file():
        return folder, True

    def write(staging: Path) -> None:
        build(staging)
        (staging / DONE_MARKER).write_text(json.dumps(description, indent=2, default=str) + "\n")

    write_folder_atomically(folder, write)  # replaces an interrupted earlier build
    return folder, False
