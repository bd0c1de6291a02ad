"""The one checkpoint reader: tensors and plain data only, every bad file one clear sentence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sfd.core.checkpoint_files import load_checkpoint_safely
from sfd.errors import SFDConfigError

LIGHTNING = {"pytorch-lightning_version": "2.6.0", "state_dict": {"w": torch.arange(3.0)}}


class Opaque:
    """A Python object that only a full unpickle (running code) could rebuild."""


def test_reads_a_lightning_checkpoint_in_both_formats(tmp_path: Path) -> None:
    torch.save(LIGHTNING, tmp_path / "zip.ckpt")
    torch.save(LIGHTNING, tmp_path / "legacy.ckpt", _use_new_zipfile_serialization=False)
    for name in ("zip.ckpt", "legacy.ckpt"):  # the legacy format cannot be memory-mapped
        read = load_checkpoint_safely(tmp_path / name)
        assert torch.equal(read["state_dict"]["w"], torch.arange(3.0)), name


def test_refuses_a_pickled_object(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's old, unsafe default
    torch.save({**LIGHTNING, "extra": Opaque()}, tmp_path / "object.ckpt")
    with pytest.raises(SFDConfigError, match="'.*object.ckpt' cannot be loaded safely"):
        load_checkpoint_safely(tmp_path / "object.ckpt", "--ckpt_path")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda path: None, "does not exist"),
        (lambda path: path.mkdir(), "is a folder, not a file"),
        (lambda path: path.write_bytes(b""), "is empty (0 bytes)"),
        (lambda path: path.write_bytes(b"not a checkpoint at all"), "not a readable torch"),
        (lambda path: torch.save({"w": torch.ones(1)}, path), "not a Lightning checkpoint"),
        (lambda path: torch.save({"pytorch-lightning_version": "2"}, path), "no model weights"),
    ],
)
def test_bad_files_are_one_sentence(make, message: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.ckpt"
    make(path)
    with pytest.raises(SFDConfigError, match=f"^checkpoint '{path}' .*{message.split('(')[0]}"):
        load_checkpoint_safely(path)
