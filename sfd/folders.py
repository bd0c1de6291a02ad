"""Files and folders that survive failures: atomic folder writes, writability checks, the umask.

A model folder is written into a staging folder beside its destination and swapped in only when
complete, so a failure or a kill never leaves a half-written folder and never destroys the one
that was there. Everything here is standard library only: the command line checks paths with it
before it imports torch.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sfd.errors import SFDConfigError

STAGING = "staging"  # .<name>.staging-<random>: a folder being written
REPLACED = "replaced"  # .<name>.replaced-<random>: the folder it replaces, until deleted
_RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically
_AT_FDCWD = -100


def current_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it; restore at once
    os.umask(mask)
    return mask


def follow_umask(path: str | os.PathLike[str]) -> None:
    """Give `path` the mode a plain `open` / `mkdir` would have: 0o666 / 0o777 minus the umask.

    `tempfile.mkstemp` and `mkdtemp` create 0600 files and 0700 folders, which would make a
    checkpoint or an export unreadable to a colleague or a serving account.
    """
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~current_umask())


def nearest_existing(path: Path) -> Path:
    """`path` itself or its closest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(path: str | os.PathLike[str], what: str) -> Path:
    """Raise `SFDConfigError` unless `path` is, or can be created as, a folder this process writes.

    Nothing is left behind: the probe is an anonymous temporary file.

    Args:
        path: the folder.
        what: how the message names it, e.g. "trainer.default_root_dir".

    Returns:
        the path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SFDConfigError(f"{what} {str(path)!r} is a file; give a folder")
    existing = nearest_existing(path)
    if not existing.is_dir():
        raise SFDConfigError(
            f"{what} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder"
        )
    _probe(existing, f"{what} {str(path)!r}")
    return path


def check_input_file(path: str | os.PathLike[str], what: str) -> Path:
    """Raise `SFDConfigError` unless `path` is a file with something in it (e.g. a checkpoint).

    Args:
        path: the file.
        what: how the message names it, e.g. "checkpoint".

    Returns:
        the path.
    """
    path = Path(path)
    name = f"{what} {str(path)!r}"
    if not path.exists():
        raise SFDConfigError(f"{name} does not exist")
    if path.is_dir():
        raise SFDConfigError(f"{name} is a folder, not a file")
    if not path.is_file():
        raise SFDConfigError(f"{name} is not a file")
    if path.stat().st_size == 0:
        raise SFDConfigError(f"{name} is empty (0 bytes)")
    return path


def check_output_folder(path: str | os.PathLike[str], what: str, overwrite: bool) -> Path:
    """`check_writable_folder`, and refuse a folder with files in it unless `overwrite`.

    Args:
        path: the folder to create or replace.
        what: how the message names it, e.g. "output folder".
        overwrite: whether a non-empty folder may be replaced.

    Returns:
        the path.
    """
    path = check_writable_folder(path, what)
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise SFDConfigError(
            f"{what} {str(path)!r} exists and is not empty (--overwrite replaces it)"
        )
    return path


def check_writable_file(path: str | os.PathLike[str], what: str) -> Path:
    """Raise `SFDConfigError` unless a file can be written at `path` (not a folder, folder writable).

    Args:
        path: the file.
        what: how the message names it, e.g. "--output".

    Returns:
        the path.
    """
    path = Path(path)
    if path.is_dir():
        raise SFDConfigError(f"{what} {str(path)!r} is a folder; give a file name")
    existing = nearest_existing(path.parent)
    if not existing.is_dir():
        raise SFDConfigError(
            f"{what} {str(path)!r} cannot be created: {str(existing)!r} is a file, not a folder"
        )
    _probe(existing, f"{what} {str(path)!r}")
    return path


def _probe(folder: Path, name: str) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise SFDConfigError(f"{name} is not writable ({str(folder)!r}: {reason})") from error


def write_folder_atomically(output_dir: str | Path, write: Callable[[Path], None]) -> Path:
    """Let `write` fill a staging folder beside `output_dir`, then move it into place.

    An existing folder is replaced only once `write` succeeded, by an atomic swap where the file
    system offers one (Linux `renameat2(RENAME_EXCHANGE)`), so `output_dir` always holds either
    the old or the new folder. Elsewhere the old folder is renamed aside, the new one moved in
    and the old one deleted; if a kill lands between those two renames, the next call moves the
    old folder back first. Staging and replaced folders left by earlier kills are removed.

    Args:
        output_dir: the folder to create or replace.
        write: fills the staging folder it is given.

    Returns:
        the folder.
    """
    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    recover_interrupted_replace(output_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.{STAGING}-", dir=output_dir.parent))
    try:
        write(staging)
        for path in [staging, *staging.rglob("*")]:
            # Writers that go through temporary files (safetensors via huggingface_hub) leave
            # 0600 files: give everything the mode a plain write would have.
            if not path.is_symlink():
                follow_umask(path)
        if not output_dir.exists():
            staging.rename(output_dir)
        elif _exchange(staging, output_dir):
            shutil.rmtree(staging)  # now holds the old folder
        else:
            aside = Path(
                tempfile.mkdtemp(prefix=f".{output_dir.name}.{REPLACED}-", dir=output_dir.parent)
            )
            aside.rmdir()  # only its unique name is wanted
            output_dir.rename(aside)
            staging.rename(output_dir)
            shutil.rmtree(aside)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return output_dir


def write_file_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Let `write` write a temporary file beside `path`, then rename it over `path`.

    A failure or a kill leaves the earlier file (if any) as it was; the file gets the mode the
    umask gives a plain file.

    Args:
        path: the file to create or replace.
        write: writes the temporary file it is given (its name keeps `path`'s suffix).

    Returns:
        the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, name = tempfile.mkstemp(
        prefix=f".{path.stem}.{STAGING}-", suffix=path.suffix, dir=path.parent
    )
    os.close(descriptor)
    try:
        write(Path(name))
        follow_umask(name)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)
    return path


def recover_interrupted_replace(output_dir: str | Path) -> None:
    """Undo what a kill during an earlier `write_folder_atomically` of `output_dir` left behind.

    A folder renamed aside while `output_dir` is missing is moved back (it is complete: only
    complete folders are ever renamed aside); other staging and replaced folders are deleted.

    Args:
        output_dir: the destination folder of the earlier call.
    """
    output_dir = Path(output_dir)
    if not output_dir.parent.is_dir():
        return
    replaced = sorted(output_dir.parent.glob(f".{output_dir.name}.{REPLACED}-*"))
    if replaced and not output_dir.exists():
        newest = max(replaced, key=lambda path: path.stat().st_mtime_ns)
        newest.rename(output_dir)
        replaced.remove(newest)
    for stale in [*replaced, *output_dir.parent.glob(f".{output_dir.name}.{STAGING}-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ≥ 3.15); False where the system or file system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # not supported here: fall back to two renames
    raise OSError(error, os.strerror(error), str(b))


def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc ≥ 2.28, musl ≥ 1.2
    except (OSError, AttributeError, TypeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


class NewPaths:
    """Remembers what exists under some folders, to delete later what was added since.

    For commands that must leave nothing behind when they fail: `watch` the folders they write
    to before they start, `remove` on failure. Hidden folders (`.venv`, `.git`, ...) are
    neither listed nor touched, so watching a project folder stays cheap.
    """

    def __init__(self) -> None:
        self._existing: dict[Path, set[Path]] = {}  # watched folder -> paths under it
        self._created_tops: set[Path] = set()  # missing folders: their first missing ancestor

    def watch(self, folders: list[str | os.PathLike[str]]) -> None:
        """Record the current content of `folders` (missing ones: that they are missing)."""
        for folder in folders:
            path = Path(os.path.abspath(folder))
            if path.is_dir():
                self._existing.setdefault(path, set(_listing(path)))
                continue
            existing = nearest_existing(path)
            if existing.is_dir() and existing != path:
                top = existing / path.relative_to(existing).parts[0]
                self._created_tops.add(top)

    def remove(self) -> list[Path]:
        """Delete every path added under the watched folders since `watch`.

        Returns:
            the deleted paths (folders deleted whole are listed once).
        """
        removed = []
        for folder, before in self._existing.items():
            if not folder.is_dir():
                continue
            for path in sorted(_listing(folder)):
                if path in before or any(parent in removed for parent in path.parents):
                    continue
                _delete(path)
                removed.append(path)
        for top in self._created_tops:
            if top.exists() and top not in removed:
                _delete(top)
                removed.append(top)
        return removed


def _listing(folder: Path) -> list[Path]:
    found = []
    for root, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        found += [Path(root) / name for name in folders + files]
    return found


def _delete(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def pipeline_class_name(index: dict[str, Any]) -> Any:
    """The pipeline class a model_index.json names, also in an export's custom-pipeline list
    form `["one_step_pipeline", "OneStepPipeline"]` (file, class)."""
    name = index.get("_class_name")
    return name[1] if isinstance(name, list) and len(name) == 2 else name


def read_json_file(path: Path) -> Any:
    """The content of a JSON file; one that is not JSON is refused in one line."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SFDConfigError(f"{str(path)!r} is not valid JSON ({error})") from error


# model_index.json classes of class-conditional folders: an export, a teacher (`sfd eval` takes them)
CLASS_PIPELINES = ("OneStepPipeline", "DDPMPipeline")


def text_model_index(folder: str | Path) -> dict[str, Any]:
    """The model_index.json of a text-to-image folder; a class-conditional one, or a folder
    without one, is refused in one line before anything loads."""
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        raise SFDConfigError(f"{str(folder)!r} is not a diffusers folder (no model_index.json)")
    config = read_json_file(index)
    name = pipeline_class_name(config)
    if name in CLASS_PIPELINES:
        raise SFDConfigError(
            f"{str(folder)!r} holds a class-conditional model ({name}); sfd eval-text takes "
            f"text-to-image models: evaluate it with sfd eval {str(folder)} --classifier DIR "
            "--forget CLASS"
        )
    return config
