"""Helpers of the cluster tests: a run config writer, `sfd fit` subprocesses, a pause callback.

`PauseAt` is loaded by `sfd fit` through a YAML class_path, so this folder must be on PYTHONPATH
of the subprocess (`fit_env` does that).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.callbacks import Callback

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


class PauseAt(Callback):
    """After iteration `step`, write `marker` and sleep, so a test can kill the run there."""

    def __init__(self, step: int, marker: str, seconds: float = 600.0) -> None:
        self.step, self.marker, self.seconds = step, marker, seconds

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.step:
            Path(self.marker).write_text(str(os.getpid()))
            time.sleep(self.seconds)


def tiny_run_config(
    teacher: Path,
    root: Path,
    max_steps: int = 8,
    checkpoint_every: int = 4,
    steps_per_epoch: int = 3,
    extra_callbacks: list[dict[str, Any]] | None = None,
    trainer: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A tiny `sfd fit` config (batch 2 per device, SGD so float noise stays small); `model`
    overrides model settings."""
    sgd = {"class_path": "torch.optim.SGD", "init_args": {"lr": 1.0e-2, "momentum": 0.9}}
    callbacks = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {
                "every_n_train_steps": checkpoint_every,
                "save_last": True,
                "save_top_k": -1,
            },
        },
        *(extra_callbacks or []),
    ]
    return {
        "seed_everything": 0,
        "trainer": {
            "accelerator": "cpu",
            "devices": 1,
            "max_steps": max_steps,
            "log_every_n_steps": 1,
            "default_root_dir": str(root),
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "callbacks": callbacks,
            **(trainer or {}),
        },
        "model": {
            "teacher": {
                "class_path": "sfd.teachers.PretrainedVPTeacher",
                "init_args": {"pretrained_model_name_or_path": str(teacher)},
            },
            "conditions": {
                "class_path": "sfd.core.conditions.ClassConditions",
                "init_args": {"forget": 0, "override": 1},
            },
            "sigma_sampler": {
                "class_path": "sfd.core.sigma.UniformTimestepSigma",
                "init_args": {"t_min": 38, "t_max": 712},
            },
            "lambda_sg_forget": 1.0,
            "lambda_g_forget": 1.0,
            "batch_size": 2,
            "fake_optimizer": sgd,
            "generator_optimizer": sgd,
            "ema_decay": 0.9,
            "seed": 5,
            "steps_per_epoch": steps_per_epoch,
            **(model or {}),
        },
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def fit_env(**extra: str) -> dict[str, str]:
    """Environment of an `sfd fit` subprocess: offline, one thread, this folder importable."""
    python_path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
        "PYTHONPATH": python_path,
        **extra,
    }


def start_fit(
    config: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """Start `sfd fit -c config ...` (the console script's module) with its output in `log`."""
    command = [sys.executable, "-m", "sfd.cli", "fit", "-c", str(config), *args]
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command, env=env or fit_env(), cwd=REPO, stdout=output, stderr=subprocess.STDOUT
        )
    process.log = log  # type: ignore[attr-defined]
    return process


def output_of(process: subprocess.Popen) -> str:
    return process.log.read_text(errors="replace")  # type: ignore[attr-defined]


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a run; return its output, failing with the output's tail on a non-zero exit."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    text = output_of(process)
    assert process.returncode == 0, text[-4000:]
    return text


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 300) -> None:
    """Poll until `path` exists; fail early with the run's output if the run ended first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"run ended ({process.returncode}) first:\n{output_of(process)[-4000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise TimeoutError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)
