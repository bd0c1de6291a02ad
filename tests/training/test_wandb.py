"""An offline wandb run of `sfd fit -c ... -c configs/wandb.yaml` records every loss term,
learning rates, gradient norms, image counts, the sample grids, the resolved config and flat
forget / override / teacher keys; the forgetting curve callback logs UA and remain accuracy; a
resumed run continues the same wandb run."""

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
    "lr-SGD",  # the fake score's optimizer (tiny_run_config: SGD for both)
    "lr-SGD-1",  # the generator's
    "grad_norm/fake_score",
    "grad_norm/generator",
    "train/samples",  # rates need configs/wandb.yaml's 50-iteration window
    "train/batches",
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
    # Flat keys to filter runs by: tiny_run_config forgets class 0 for class 1.
    assert logged_config["forget"] == "0" and logged_config["override"] == "1"
    assert logged_config["teacher"] == str(tiny_teacher_dir)
    assert logged_config["teacher_class"] == "PretrainedVPTeacher"
    assert logged_config["conditions"] == "ClassConditions"

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


def curve_history(run_dir: Path) -> list[dict[str, float]]:
    """The logged forgetting-curve points: {step, curve/ua, curve/remain_accuracy} per record."""
    points = []
    for record in complete_records(run_dir):
        if record.WhichOneof("record_type") != "history":
            continue
        items = {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in record.history.item
        }
        if "curve/ua" in items:
            points.append(items)
    return points


def test_forgetting_curve_from_yaml_is_logged(
    tiny_teacher_dir: Path, tmp_path: Path, offline: None, one_thread: None
) -> None:
    from sfd.core.generator import OneStepGenerator
    from sfd.eval.classifier import Classifier, save_classifier
    from sfd.eval.evaluate import class_noise
    from sfd.images import from_uint8, to_uint8
    from sfd.teachers import PretrainedVPTeacher
    from sfd.training.cli import sfd_lightning_cli

    # A classifier briefly fit to the teacher's one-step samples of other noise: its labels
    # depend on the image, so UA and remain accuracy are not trivially 0 or 1.
    teacher = OneStepGenerator(PretrainedVPTeacher(str(tiny_teacher_dir)), 2.5).eval()
    labels = torch.arange(10).repeat_interleave(6)
    with torch.no_grad():
        train = from_uint8(to_uint8(teacher(class_noise(60, teacher.sample_shape, 1), labels)))
    torch.manual_seed(0)
    classifier = Classifier(1, 10, (8, 8), 8, 16)
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-2)
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(classifier(train), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    classifier_dir = save_classifier(classifier, tmp_path / "classifier")
    curve = {
        "class_path": "sfd.eval.forgetting_curve.ForgettingCurve",
        "init_args": {"classifier": str(classifier_dir), "every_n": 2, "num_per_class": 6},
    }
    root = tmp_path / "run"
    run_config = tiny_run_config(tiny_teacher_dir, root, max_steps=4, extra_callbacks=[curve])
    config = write_config(tmp_path / "run.yaml", run_config)
    try:
        cli = sfd_lightning_cli(["fit", "-c", str(config), "-c", str(REPO / "configs/wandb.yaml")])
    finally:
        wandb.finish()
    [callback] = [c for c in cli.trainer.callbacks if type(c).__name__ == "ForgettingCurve"]
    assert callback.forget == [0]  # taken from the run's ClassConditions
    [run] = (root / "wandb").glob("offline-run-*")
    logged = curve_history(run)
    assert [p["trainer/global_step"] for p in logged] == [0, 2, 4]
    for point, item in zip(callback.points, logged, strict=True):
        assert item["curve/ua"] == pytest.approx(point.ua)
        assert item["curve/remain_accuracy"] == pytest.approx(point.remain_accuracy)
    # The last point, recomputed by hand from the final generator and the saved classifier.
    generator = cli.model.export_generator.eval()
    with torch.no_grad():
        images = to_uint8(generator(class_noise(60, generator.sample_shape, 0), labels))
        predicted = callback.classifier(from_uint8(images)).argmax(dim=1)
    correct = (predicted == labels).float().reshape(10, 6).mean(dim=1)  # per class
    ua = 1 - (predicted[labels == 0] == 0).float().mean().item()
    assert 0 < ua < 1 or 0 < correct[1:].mean() < 1  # a case that can tell values apart
    assert logged[-1]["curve/ua"] == pytest.approx(ua)
    assert logged[-1]["curve/remain_accuracy"] == pytest.approx(correct[1:].mean().item())
