"""Atomic folder and file writes: the swap, a kill in the middle of it, stale staging folders,
modes that follow the umask, writability checks and the cleanup of a failed command."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import SCRIPTS, fit_args

from sfd.errors import SFDConfigError
from sfd.folders import (
    NewPaths,
    check_writable_file,
    check_writable_folder,
    recover_interrupted_replace,
    write_file_atomically,
    write_folder_atomically,
)


def fill(text: str):
    return lambda folder: (folder / "weights.txt").write_text(text)


def siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


@pytest.mark.parametrize("swap", [True, False], ids=["exchange", "two-renames"])
def test_overwrite_replaces_the_folder_and_leaves_nothing_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    if not swap:
        monkeypatch.setattr("sfd.folders._exchange", lambda a, b: False)
    out = tmp_path / "export"
    write_folder_atomically(out, fill("old"))
    write_folder_atomically(out, fill("new"))
    assert (out / "weights.txt").read_text() == "new"
    assert siblings(out) == ["export"]


def test_a_failed_write_keeps_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "export"
    write_folder_atomically(out, fill("old"))

    def broken(folder: Path) -> None:
        (folder / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_folder_atomically(out, broken)
    assert [p.name for p in out.iterdir()] == ["weights.txt"]
    assert siblings(out) == ["export"]


def test_stale_staging_folders_of_earlier_kills_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "export"
    (tmp_path / ".export.staging-abc123").mkdir()  # a kill while writing
    (tmp_path / ".export.staging-abc123" / "half.bin").write_bytes(b"x")
    (tmp_path / ".other.staging-keep").mkdir()  # another folder's: not ours to touch
    write_folder_atomically(out, fill("new"))
    assert siblings(out) == [".other.staging-keep", "export"]


def test_a_folder_renamed_aside_by_a_kill_is_moved_back(tmp_path: Path) -> None:
    out = tmp_path / "export"
    aside = tmp_path / ".export.replaced-xyz"
    aside.mkdir()
    (aside / "weights.txt").write_text("old")
    recover_interrupted_replace(out)
    assert (out / "weights.txt").read_text() == "old"
    assert siblings(out) == ["export"]


# --- a kill during `sfd export --overwrite` --------------------------------------------------


@pytest.fixture(scope="module")
def two_checkpoints(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    from sfd.training.cli import sfd_lightning_cli

    root = tmp_path_factory.mktemp("two")
    sfd_lightning_cli(fit_args(tiny_teacher_dir, root / "run", "--trainer.max_steps", "10"))
    [first] = (root / "run").rglob("last.ckpt")
    contents = torch.load(first, weights_only=True)
    for key, value in contents["state_dict"].items():
        if key.startswith("ema."):
            contents["state_dict"][key] = value + 1.0
    second = root / "second.ckpt"
    torch.save(contents, second)
    return first, second


def generator_weight(folder: Path) -> torch.Tensor:
    from sfd.pipelines.io import load_generator

    return load_generator(folder).denoiser.unet.conv_in.weight.detach().clone()


@pytest.mark.parametrize("mode", ["exchange", "renames"])
def test_a_kill_during_the_swap_leaves_a_loadable_export(
    mode: str, two_checkpoints: tuple[Path, Path], tmp_path: Path
) -> None:
    from sfd.cli import main

    first, second = two_checkpoints
    out = tmp_path / "export"
    assert main(["export", str(first), str(out)]) == 0
    old = generator_weight(out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.run(
        [sys.executable, str(SCRIPTS / "kill_during_export.py"), mode, str(second), str(out)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr.decode()[-2000:]
    if mode == "exchange":
        # The swap is one atomic step: the new export is in place, the old one waits beside it.
        assert torch.equal(generator_weight(out), old + 1.0)
        assert any(name.startswith(".export.staging-") for name in siblings(out))
    else:
        # Between the two renames the old export is complete, renamed aside; the next export
        # (or `recover_interrupted_replace`) moves it back before anything else.
        [aside] = [p for p in out.parent.iterdir() if p.name.startswith(".export.replaced-")]
        assert not out.exists() and torch.equal(generator_weight(aside), old)
        recover_interrupted_replace(out)
        assert torch.equal(generator_weight(out), old)
    assert main(["export", str(second), str(out), "--overwrite"]) == 0
    assert torch.equal(generator_weight(out), old + 1.0)
    assert siblings(out) == ["export"]  # every stale staging folder is gone


# --- modes -------------------------------------------------------------------------------------


@pytest.fixture
def umask_027() -> Iterator[None]:
    previous = os.umask(0o027)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_written_files_and_folders_follow_the_umask(tmp_path: Path, umask_027: None) -> None:
    from sfd.training.checkpoint_io import AtomicCheckpointIO, atomic_torch_save

    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "a.ckpt")
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(2)}, tmp_path / "b.ckpt")
    folder = write_folder_atomically(tmp_path / "export", fill("x"))
    write_file_atomically(tmp_path / "grid.png", lambda p: p.write_bytes(b"png"))
    assert mode(tmp_path / "a.ckpt") == mode(tmp_path / "b.ckpt") == 0o640
    assert mode(folder) == 0o750 and mode(folder / "weights.txt") == 0o640
    assert mode(tmp_path / "grid.png") == 0o640


def test_an_export_follows_the_umask(tmp_path: Path, tiny_teacher_dir: Path, umask_027: None):
    from sfd.core.generator import OneStepGenerator
    from sfd.pipelines.io import save_generator
    from sfd.teachers import PretrainedVPTeacher

    out = save_generator(
        OneStepGenerator(PretrainedVPTeacher(str(tiny_teacher_dir))), tmp_path / "e"
    )
    modes = {mode(p) for p in [out, *out.rglob("*")] if p.is_dir()}
    assert modes == {0o750}
    assert {mode(p) for p in out.rglob("*") if p.is_file()} == {0o640}


# --- checks and cleanup -------------------------------------------------------------------------


def test_writability_checks(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert check_writable_folder(tmp_path / "new" / "deeper", "out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # the check writes nothing
    with pytest.raises(SFDConfigError, match="is a file; give a folder"):
        check_writable_folder(tmp_path / "file", "out")
    with pytest.raises(SFDConfigError, match="is a file, not a folder"):
        check_writable_folder(tmp_path / "file" / "sub", "out")
    with pytest.raises(SFDConfigError, match="is a folder; give a file name"):
        check_writable_file(tmp_path, "--output")
    with pytest.raises(SFDConfigError, match="not writable"):
        check_writable_folder("/proc/sfd-no/such", "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_new_paths_removes_only_what_was_added(tmp_path: Path) -> None:
    keep = tmp_path / "runs" / "old"
    keep.mkdir(parents=True)
    (keep / "kept.txt").write_text("mine")
    (tmp_path / "runs" / ".hidden").mkdir()
    watcher = NewPaths()
    watcher.watch([tmp_path / "runs", tmp_path / "fresh" / "deep"])
    (keep / "new.txt").write_text("added")
    (tmp_path / "runs" / "version_1" / "checkpoints").mkdir(parents=True)
    (tmp_path / "fresh" / "deep").mkdir(parents=True)
    removed = watcher.remove()
    assert sorted(p.name for p in removed) == ["fresh", "new.txt", "version_1"]
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [".hidden", "old"]
    assert [p.name for p in keep.iterdir()] == ["kept.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
