"""An offline wandb run of `sfd fit -c ... -c configs/wandb.yaml` records every loss term,
learning rates, gradient norms, images/s, the sample grids and the resolved config; a resumed
run continues the same wandb run."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import wandb
from conftest import SCRIPTS
from PIL import Image

sys.path.insert(0, str(SCRIPTS))
from cluster_helpers import REPO, tiny_run_config, write_config  # noqa: E402
from wandb_records import read_records  # noqa: E402

from sfd.cli import main  # noqa: E402
from sfd.training.loggers import RUN_ID_FILE  # noqa: E402

LOSS_TERMS = [
    f"{network}/{term}"
    for network in ("fake", "generator")
    for term in ("remain", "forget", "total")
]
MONITORED = [
    "lr/fake_score",
    "lr/generator",
    "grad_norm/fake_score",
    "grad_norm/generator",
    "throughput/images_per_s",
]


def complete_records(run_dir: Path, timeout: float = 60) -> list:
    """The records of an offline run, once wandb's writer has flushed its final `exit` record
    (it may still be writing when `wandb.finish()` returns)."""
    [log] = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = list(read_records(log))
        if any(record.WhichOneof("record_type") == "exit" for record in records):
            return records
        assert time.monotonic() < deadline, f"{log} has no exit record after {timeout} s"
        time.sleep(0.1)


def history_keys_and_run(run_dir: Path) -> tuple[set[str], str, dict]:
    keys: set[str] = set()
    run_id, config = "", {}
    for record in complete_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            keys |= {item.key or "/".join(item.nested_key) for item in record.history.item}
        elif kind == "run":
            run_id = record.run.run_id
        elif kind == "config":
            config |= {item.key: json.loads(item.value_json) for item in record.config.update}
    return keys, run_id, config


def fit(config: Path, *extra: str) -> None:
    """`sfd fit` in this process, then close the wandb run as the end of the process would."""
    args = ["fit", "-c", str(config), "-c", str(REPO / "configs" / "wandb.yaml")]
    grids = ["--trainer.callbacks.every_n_steps", "2", "--trainer.callbacks.num_per_condition", "3"]
    try:
        assert main([*args, *grids, *extra]) == 0
    finally:
        wandb.finish()


@pytest.fixture()
def one_thread() -> Iterator[None]:
    """In-process fits use one thread, like the subprocess tests (the machine may be shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")


def test_offline_run_records_losses_grids_and_config(
    tiny_teacher_dir: Path, tmp_path: Path, offline: None, one_thread: None
) -> None:
    root = tmp_path / "run"
    config = write_config(
        tmp_path / "run.yaml", tiny_run_config(tiny_teacher_dir, root, max_steps=4)
    )
    fit(config)
    [run] = (root / "wandb").glob("offline-run-*")
    keys, run_id, logged_config = history_keys_and_run(run)
    assert run_id == (root / RUN_ID_FILE).read_text().strip()
    missing = [key for key in [*LOSS_TERMS, *MONITORED] if key not in keys]
    assert not missing, f"not logged: {missing}; logged: {sorted(keys)}"
    assert {"samples/remain/_type", "samples/forget/_type"} <= keys
    # The resolved config: the run's own values, as saved in config.yaml.
    assert logged_config["config"]["model"]["batch_size"] == 2
    assert logged_config["config"]["trainer"]["max_steps"] == 4

    # Grids at steps 2 and 4: rows = classes (9 remain, 1 forget) x 3 seeds of 8x8 images.
    media = sorted((run / "files" / "media" / "images" / "samples").glob("*.png"))
    kinds = [path.name.split("_")[0] for path in media]
    assert kinds.count("remain") == 2 and kinds.count("forget") == 2
    remain = np.asarray(Image.open(next(p for p in media if p.name.startswith("remain"))))
    forget = np.asarray(Image.open(next(p for p in media if p.name.startswith("forget"))))
    # 8x8 tiles upscaled 8x to 64 px, 4 px gutters and border, a caption column at the left.
    assert remain.shape[0] == 9 * (64 + 4) + 4 and forget.shape[0] == 1 * (64 + 4) + 4
    assert remain.shape[1] > 3 * (64 + 4) + 4 and forget.shape[1] > 3 * (64 + 4) + 4
    assert remain.std() > 0
    # The same grids are written as PNGs in the run folder, one per kind and step.
    pngs = sorted(path.name for path in (root / "samples").glob("*.png"))
    assert pngs == [
        f"{kind}_step{step:07d}.png" for kind in ("forget", "remain") for step in (2, 4)
    ]


def test_resumed_run_continues_the_same_wandb_run(
    tiny_teacher_dir: Path, tmp_path: Path, offline: None, one_thread: None
) -> None:
    root = tmp_path / "run"
    fit(write_config(tmp_path / "a.yaml", tiny_run_config(tiny_teacher_dir, root, max_steps=4)))
    [first] = (root / "wandb").glob("offline-run-*")
    _, run_id, _ = history_keys_and_run(first)
    resumed = tiny_run_config(tiny_teacher_dir, root, max_steps=6)
    fit(write_config(tmp_path / "b.yaml", resumed), "--ckpt_path", "last")
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    second = next(run for run in runs if run != first)
    _, second_id, _ = history_keys_and_run(second)
    assert second_id == run_id
