"""SLURM: rank detection under simulated variables, and the requeue path of the real sbatch
template (stub `srun` and `scontrol` first on PATH) with automatic resume."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning.fabric.utilities.rank_zero as fabric_rank_zero
import lightning_utilities.core.rank_zero as utils_rank_zero
import pytest
import torch
from conftest import SCRIPTS
from lightning.pytorch import Trainer
from lightning.pytorch.plugins.environments import SLURMEnvironment

sys.path.insert(0, str(SCRIPTS))
from cluster_helpers import REPO, fit_env, tiny_run_config, wait_for, write_config  # noqa: E402

from sfd.training.strategies import AlternatingDDPStrategy  # noqa: E402

TEMPLATES = sorted((REPO / "slurm").glob("*.sbatch"))
JOB_ID = "4242"


def slurm_variables(procid: int, localid: int, nodeid: int, ntasks_per_node: int, nodes: int):
    return {
        "SLURM_JOB_ID": JOB_ID,
        "SLURM_JOB_NAME": "sfd-test",
        "SLURM_NTASKS": str(ntasks_per_node * nodes),
        "SLURM_NTASKS_PER_NODE": str(ntasks_per_node),
        "SLURM_NNODES": str(nodes),
        "SLURM_NODELIST": "localhost",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_NODEID": str(nodeid),
    }


@pytest.mark.parametrize("strategy", ["sfd_ddp", "object"])
def test_trainer_picks_slurm_environment_with_its_ranks(
    strategy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in slurm_variables(5, 1, 2, ntasks_per_node=2, nodes=3).items():
        monkeypatch.setenv(name, value)
    # Building the trainer sets the process-wide rank-zero flag; restore it after the test.
    monkeypatch.setattr(
        fabric_rank_zero.rank_zero_only, "rank", fabric_rank_zero.rank_zero_only.rank
    )
    monkeypatch.setattr(utils_rank_zero.rank_zero_only, "rank", utils_rank_zero.rank_zero_only.rank)
    chosen = AlternatingDDPStrategy() if strategy == "object" else strategy
    trainer = Trainer(accelerator="cpu", devices=2, num_nodes=3, strategy=chosen, logger=False)
    assert isinstance(trainer.strategy, AlternatingDDPStrategy)
    environment = trainer.strategy.cluster_environment
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue
    assert (trainer.global_rank, trainer.local_rank, trainer.node_rank) == (5, 1, 2)
    assert trainer.world_size == 6
    assert environment.main_address == "localhost"


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda path: path.name)
def test_templates_keep_hyperparameters_in_configs(template: Path) -> None:
    text = template.read_text()
    subprocess.run(["bash", "-n", str(template)], check=True)
    directives = dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)", text, flags=re.MULTILINE))
    assert directives["signal"] == "SIGUSR1@90"  # to every task, not only the batch shell (B:)
    assert "requeue" in re.findall(r"^#SBATCH --([\w-]+)$", text, flags=re.MULTILINE)
    assert directives["gres"] == f"gpu:{directives['ntasks-per-node']}"  # one task per GPU
    assert re.search(r"^srun sfd fit", text, flags=re.MULTILINE)
    assert "--ckpt_path last" in text
    assert "--model." not in text and "max_steps" not in text and "lr" not in text.split()


@pytest.fixture()
def stub_bin(tmp_path: Path) -> Path:
    """`srun` that runs its command, `scontrol` that records its arguments."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "srun").write_text('#!/bin/sh\nexec "$@"\n')
    (folder / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/scontrol.log"\n')
    for stub in folder.iterdir():
        stub.chmod(0o755)
    return folder


def test_sigusr1_saves_requeues_and_the_requeued_job_resumes(
    tiny_teacher_dir: Path, tmp_path: Path, stub_bin: Path
) -> None:
    root, marker = tmp_path / "run", tmp_path / "paused"
    pause = {
        "class_path": "cluster_helpers.PauseAt",
        "init_args": {"step": 3, "marker": str(marker)},
    }
    first = tiny_run_config(
        tiny_teacher_dir, root, max_steps=6, checkpoint_every=100, extra_callbacks=[pause]
    )
    env = fit_env(
        **slurm_variables(0, 0, 0, ntasks_per_node=1, nodes=1),
        PATH=f"{stub_bin}{os.pathsep}{os.environ['PATH']}",
        SLURM_SUBMIT_DIR=str(REPO),
        SFD_VENV=str(Path(sys.executable).parents[1]),
        SFD_ACCELERATOR="cpu",
    )
    template = REPO / "slurm" / "sfd_1node.sbatch"
    config = write_config(tmp_path / "first.yaml", first)
    with open(tmp_path / "job1.log", "wb") as log:
        job = subprocess.Popen(
            ["bash", str(template), str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so the whole job can be ended
        )
    job.log = tmp_path / "job1.log"  # type: ignore[attr-defined]
    requeue_log = tmp_path / "scontrol.log"
    try:
        wait_for(marker, job)  # iteration 3 done, the run sleeps inside a callback
        os.kill(int(marker.read_text()), signal.SIGUSR1)  # what SLURM sends before the limit
        deadline = time.monotonic() + 120
        while not requeue_log.exists():
            assert job.poll() is None and time.monotonic() < deadline, job.log.read_text()
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)  # SLURM ends every process of a requeued job
        job.wait(timeout=60)
    assert requeue_log.read_text().split() == ["requeue", JOB_ID]
    hpc = root / "hpc_ckpt_1.ckpt"
    assert torch.load(hpc, weights_only=True)["global_step"] == 3

    # The requeued job runs the same script and command line and continues from the hpc checkpoint.
    second = write_config(
        config, tiny_run_config(tiny_teacher_dir, root, max_steps=6, checkpoint_every=3)
    )
    result = subprocess.run(
        ["bash", str(template), str(second)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=300,
    )
    output = result.stdout.decode(errors="replace")
    assert result.returncode == 0, output[-4000:]
    assert f"resuming from {hpc}" in output
    assert re.search(r"Restored all states from the checkpoint at .*hpc_ckpt_1\.ckpt", output)
    # Resumed after iteration 3, so the only periodic checkpoint is iteration 6's.
    assert [path.name for path in sorted(root.rglob("epoch=*.ckpt"))] == ["epoch=1-step=6.ckpt"]
    [final] = sorted(root.rglob("last.ckpt"))
    assert torch.load(final, weights_only=True)["global_step"] == 6
