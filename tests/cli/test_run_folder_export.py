"""A run's checkpoints live in `<default_root_dir>/checkpoints/` whatever the logger and however
often it restarts; `sfd fit` ends by naming its checkpoint and the export command, and
`sfd export RUN_FOLDER` exports the run's newest checkpoint, saying which."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CONFIGS, fit_args

import sfd
from sfd.cli import main
from sfd.errors import SFDConfigError


def relative_checkpoints(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*.ckpt"))


def test_resume_then_export_of_the_run_folder_takes_the_newest(
    tiny_teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    assert main(fit_args(tiny_teacher_dir, run_dir, "--trainer.max_steps", "10")) == 0
    first = capsys.readouterr().out.strip().splitlines()
    assert first[-2] == f"checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'} (iteration 10)"
    assert first[-1] == f"export it: sfd export {run_dir} {run_dir}-generator"

    resumed = fit_args(
        tiny_teacher_dir, run_dir, "--trainer.max_steps", "20", "--ckpt_path", "last"
    )
    assert main(resumed) == 0
    second = capsys.readouterr().out.strip().splitlines()
    assert second[-2] == f"checkpoint: {run_dir / 'checkpoints' / 'last.ckpt'} (iteration 20)"
    # One folder for both starts: the resumed run overwrote last.ckpt where the first wrote it.
    assert relative_checkpoints(run_dir) == [
        "checkpoints/epoch=0-step=10.ckpt",
        "checkpoints/epoch=0-step=20.ckpt",
        "checkpoints/last.ckpt",
    ]

    command = shlex.split(second[-1].removeprefix("export it: "))
    assert command[:2] == ["sfd", "export"]
    assert main(command[1:]) == 0  # the command exactly as printed
    out = capsys.readouterr().out
    exported = Path(f"{run_dir}-generator")
    assert out.strip() == (
        f"exported the generator of {run_dir / 'checkpoints' / 'last.ckpt'} (iteration 20) "
        f"to {exported}"
    )
    record = json.loads((exported / "sfd_export.json").read_text())
    assert record["training"]["global_step"] == 20
    assert record["checkpoint"] == str(run_dir / "checkpoints" / "last.ckpt")
    assert "- Iterations: 20" in (exported / "README.md").read_text()

    # The library takes the run folder too.
    path = sfd.export_checkpoint(run_dir, tmp_path / "from_library")
    assert json.loads((path / "sfd_export.json").read_text())["training"]["global_step"] == 20


def test_a_folder_without_checkpoints_is_one_error(tmp_path: Path) -> None:
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(SFDConfigError, match="holds no last"):
        sfd.export_checkpoint(tmp_path / "empty_run", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_csv_and_wandb_runs_share_one_checkpoint_layout(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    # Each fit in its own process: wandb keeps the settings of the first run of a process (its
    # mode and folders) and would impose them on the later runs of this pytest process.
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    layouts = {}
    for name, extra in {
        "csv": ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                "--trainer.logger.save_dir", str(tmp_path / "csv")],
        "wandb": ["-c", str(CONFIGS / "wandb.yaml")],
    }.items():  # fmt: skip
        run_dir = tmp_path / name
        args = fit_args(tiny_teacher_dir, run_dir, *extra, "--trainer.max_steps", "10")
        done = subprocess.run([sys.executable, "-m", "sfd.cli", *args], env=env, timeout=600)
        assert done.returncode == 0
        layouts[name] = relative_checkpoints(run_dir)
    expected = ["checkpoints/epoch=0-step=10.ckpt", "checkpoints/last.ckpt"]
    assert layouts["csv"] == layouts["wandb"] == expected
