"""A run killed with SIGKILL and resumed with `--ckpt_path last` ends bit-identical to one that
was never interrupted; a kill during a checkpoint save leaves the previous checkpoint loadable."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, SCRIPTS

sys.path.insert(0, str(SCRIPTS))
from cluster_helpers import (  # noqa: E402
    finish,
    start_fit,
    tiny_run_config,
    wait_for,
    write_config,
)

MAX_STEPS = 8
CHECKPOINT_EVERY = 4
STEPS_PER_EPOCH = 3  # the step-4 checkpoint is taken mid-epoch (of the iterable "dataset")


def checkpoints(root: Path, name: str) -> list[Path]:
    return sorted(root.rglob(name))


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a["global_step"] == b["global_step"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert any(key.startswith("ema.") for key in a["state_dict"])
    assert any(key.startswith("fake_score.") for key in a["state_dict"])
    assert not any(key.startswith("teacher.") for key in a["state_dict"])
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert len(a["optimizer_states"]) == len(b["optimizer_states"]) == 2
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        assert opt_a["state"].keys() == opt_b["state"].keys()
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][index][name]), (index, name)


# The power-function EMA's decay depends on the iteration: (1 − 1/t)², never reaching the cap 0.9
# within 8 iterations; a resumed run must continue it from the restored step.
@pytest.mark.parametrize("ema", [{}, {"ema_power": 1.0}], ids=["constant-ema", "power-ema"])
def test_sigkill_then_resume_is_bit_identical(
    tiny_teacher_dir: Path, tmp_path: Path, ema: dict
) -> None:
    settings = dict(
        max_steps=MAX_STEPS,
        checkpoint_every=CHECKPOINT_EVERY,
        steps_per_epoch=STEPS_PER_EPOCH,
        model=ema,
    )
    straight_root, resumed_root = tmp_path / "straight", tmp_path / "resumed"
    straight = write_config(
        tmp_path / "straight.yaml", tiny_run_config(tiny_teacher_dir, straight_root, **settings)
    )
    marker = tmp_path / "paused"
    pause = {
        "class_path": "cluster_helpers.PauseAt",
        "init_args": {"step": 6, "marker": str(marker)},
    }
    interrupted = write_config(
        tmp_path / "interrupted.yaml",
        tiny_run_config(tiny_teacher_dir, resumed_root, extra_callbacks=[pause], **settings),
    )
    resumed = write_config(
        tmp_path / "resumed.yaml", tiny_run_config(tiny_teacher_dir, resumed_root, **settings)
    )

    uninterrupted_run = start_fit(straight, tmp_path / "straight.log")
    doomed_run = start_fit(interrupted, tmp_path / "interrupted.log")
    wait_for(marker, doomed_run)  # iteration 6 done; the last checkpoint is from iteration 4
    doomed_run.send_signal(signal.SIGKILL)
    assert doomed_run.wait(timeout=60) == -signal.SIGKILL
    assert [p.name for p in checkpoints(resumed_root, "*.ckpt")] == [
        f"epoch=1-step={CHECKPOINT_EVERY}.ckpt",
        "last.ckpt",
    ]

    # The resumed run is a new logger version (Lightning's own "last" would look only there);
    # its checkpoints go where the first start wrote them, <default_root_dir>/checkpoints/.
    output = finish(start_fit(resumed, tmp_path / "resumed.log", "--ckpt_path", "last"))
    assert "resuming from" in output and "last.ckpt" in output
    finish(uninterrupted_run)

    final_name = f"epoch=2-step={MAX_STEPS}.ckpt"
    [straight_final] = checkpoints(straight_root, final_name)
    [resumed_final] = checkpoints(resumed_root, final_name)
    assert straight_final.parent == straight_root / "checkpoints"
    assert resumed_final.parent == resumed_root / "checkpoints"
    assert_bit_identical(
        torch.load(straight_final, weights_only=True), torch.load(resumed_final, weights_only=True)
    )


# --- atomic checkpoint writes -------------------------------------------------------------------

SAVE_SCRIPT = SCRIPTS / "slow_save.py"


@pytest.mark.parametrize("writer", ["atomic", pytest.param("plain", marks=pytest.mark.slow)])
def test_sigkill_during_save(writer: str, tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    started = tmp_path / "started"
    process = subprocess.Popen(
        [sys.executable, str(SAVE_SCRIPT), writer, str(target), str(started)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_for_save(started, process)
    process.send_signal(signal.SIGKILL)
    assert process.wait(timeout=60) == -signal.SIGKILL
    if writer == "plain":
        # Control: a direct torch.save killed mid-write leaves an unreadable file behind.
        with pytest.raises((RuntimeError, EOFError)):
            torch.load(target, weights_only=True)
        return
    assert list(tmp_path.glob(".last.ckpt.*.tmp")), "the kill did not land during the save"
    previous = torch.load(target, weights_only=True)
    assert previous["global_step"] == 1
    assert torch.equal(previous["state_dict"]["weight"], torch.full((64, 64), 1.0))


def wait_for_save(started: Path, process: subprocess.Popen) -> None:
    import time

    deadline = time.monotonic() + 120
    while not started.exists():
        if process.poll() is not None:
            raise AssertionError(process.stderr.read().decode()[-3000:] if process.stderr else "")
        assert time.monotonic() < deadline, "the slow save never started"
        time.sleep(0.02)


def test_sfd_fit_writes_checkpoints_atomically_by_default(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from sfd.training.checkpoint_io import AtomicCheckpointIO
    from sfd.training.cli import sfd_lightning_cli
    from sfd.training.strategies import AlternatingDDPStrategy

    config = write_config(tmp_path / "run.yaml", tiny_run_config(tiny_teacher_dir, tmp_path))
    ddp = CONFIGS / "ddp.yaml"
    cli = sfd_lightning_cli(["-c", str(config)], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    cli = sfd_lightning_cli(["-c", str(config), "-c", str(ddp)], run=False)
    assert isinstance(cli.trainer.strategy, AlternatingDDPStrategy)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    # A checkpoint writer the user configures is kept.
    plugin = ["--trainer.plugins", "lightning.pytorch.plugins.io.TorchCheckpointIO"]
    cli = sfd_lightning_cli(["-c", str(config), *plugin], run=False)
    assert type(cli.trainer.strategy.checkpoint_io) is TorchCheckpointIO
