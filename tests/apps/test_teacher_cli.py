"""`sfd teacher` as a command: where its logs go, and the warning for a one-class data set."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS

from sfd.cli import main

SMALL = ["--model.block_out_channels", "[8, 16]", "--model.norm_num_groups", "4",
         "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
         "--data.batch_size", "8"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_logs_and_checkpoints_go_beside_the_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the preset once wrote to ./runs/teacher_training
    output = tmp_path / "teachers" / "digits"
    argv = ["teacher", "-c", str(CONFIGS / "teacher_digits.yaml"), "--trainer.max_steps", "2",
            "--output_dir", str(output), *SMALL]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teachers"]
    assert sorted(p.name for p in output.parent.iterdir()) == ["digits", "digits-training"]
    run = output.parent / "digits-training"
    assert list(run.rglob("config.yaml")) and list(run.rglob("last.ckpt"))
    assert (output / "model_index.json").is_file()


def test_a_named_checkpoint_resumes_and_a_changed_setting_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The model settings linked from the data (classes, image shape) are the checkpoint's as
    much as the run's: an unchanged configuration resumes from the file; a changed learning rate
    (restored with the optimizer state) is refused in one line naming it, exit 2."""
    base = ["teacher", "-c", str(CONFIGS / "teacher_digits.yaml"), *SMALL]
    assert main([*base, "--trainer.max_steps", "2", "--output_dir", str(tmp_path / "a")]) == 0
    [last] = (tmp_path / "a-training").rglob("last.ckpt")
    capsys.readouterr()
    changed = [*base, "--model.lr", "0.01", "--trainer.max_steps", "3",
               "--output_dir", str(tmp_path / "b"), "--ckpt_path", str(last)]  # fmt: skip
    assert main(changed) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "other model settings (model.lr: " in line and "0.01 now)" in line
    assert not (tmp_path / "b").exists() and not (tmp_path / "b-training").exists()
    same = [*base, "--trainer.max_steps", "3", "--output_dir", str(tmp_path / "b"),
            "--ckpt_path", str(last)]  # fmt: skip
    assert main(same) == 0
    assert (tmp_path / "b" / "model_index.json").is_file()


def test_a_one_class_data_set_is_warned_about(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "one.npz", images=rng.integers(0, 255, (32, 8, 8), dtype=np.uint8),
             labels=np.zeros(32, dtype=np.int64))  # fmt: skip
    argv = ["teacher", "-c", str(CONFIGS / "teacher_digits.yaml"), "--trainer.max_steps", "1",
            "--data.source", str(tmp_path / "one.npz"), "--output_dir", str(tmp_path / "t"),
            "--trainer.callbacks", "[]", "--trainer.enable_checkpointing", "false",
            "--trainer.logger", "false", *SMALL]  # fmt: skip
    assert main(argv) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("sfd: warning:")]
    assert len(warnings) == 1 and "single class (0)" in warnings[0] and "sfd fit" in warnings[0]
    # Two classes: no warning.
    np.savez(tmp_path / "two.npz", images=rng.integers(0, 255, (32, 8, 8), dtype=np.uint8),
             labels=np.arange(32) % 2)  # fmt: skip
    argv[argv.index(str(tmp_path / "one.npz"))] = str(tmp_path / "two.npz")
    argv[argv.index(str(tmp_path / "t"))] = str(tmp_path / "t2")
    assert main(argv) == 0
    assert "sfd: warning:" not in capsys.readouterr().err
