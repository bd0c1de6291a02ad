"""A Weights & Biases logger whose run continues when a run folder is resumed."""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import WandbLogger

RUN_ID_FILE = "wandb_run_id.txt"  # in save_dir: the wandb run this folder belongs to


class ResumableWandbLogger(WandbLogger):
    """`WandbLogger` that keeps one wandb run per run folder.

    The first start writes a fresh run id to `<save_dir>/wandb_run_id.txt`; a later start in the
    same folder (a resumed or requeued job) reads it and continues that wandb run
    (`resume="allow"`), and the checkpoints land in the same `<save_dir>/<project>/<id>/` folder.
    To start a new wandb run, use a new save_dir or pass `id`.

    Args:
        project: wandb project.
        entity: wandb team or user.
        name: display name of the run.
        tags: run tags.
        group: run group.
        save_dir: the run folder (wandb files, the run id file, checkpoints); None: `sfd fit`
            uses trainer.default_root_dir.
        offline: write locally only (`wandb sync` uploads later); WANDB_MODE=offline does the same.
        id: an explicit wandb run id (overrides the run id file).
        log_model: upload checkpoints as wandb artifacts (not in offline mode).
        prefix: prefix of every metric key.
        kwargs: passed on to `wandb.init`.
    """

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        tags: list[str] | None = None,
        group: str | None = None,
        save_dir: str | None = None,
        offline: bool = False,
        id: str | None = None,
        log_model: bool | str = False,
        prefix: str = "",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("resume", "allow")
        self._arguments = dict(
            project=project,
            entity=entity,
            name=name,
            tags=tags,
            group=group,
            offline=offline,
            id=id,
            log_model=log_model,
            prefix=prefix,
            **kwargs,
        )
        if id is None and save_dir is not None:
            id = run_id_for_folder(save_dir)
        super().__init__(**{**self._arguments, "id": id, "save_dir": save_dir})

    def in_folder(self, save_dir: str | os.PathLike[str]) -> ResumableWandbLogger:
        """The same logger settings with `save_dir` (before any run was opened).

        Args:
            save_dir: the run folder.

        Returns:
            a new logger writing to `save_dir`.
        """
        return ResumableWandbLogger(**self._arguments, save_dir=os.fspath(save_dir))


def run_id_for_folder(save_dir: str | os.PathLike[str]) -> str:
    """The wandb run id recorded in `save_dir`, created (on rank zero) if the folder has none.

    Args:
        save_dir: the run folder.

    Returns:
        the run id (on ranks other than zero, which never open a wandb run, possibly a fresh one).
    """
    path = Path(save_dir) / RUN_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    if rank_zero_only.rank == 0:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(run_id + "\n")
    return run_id
