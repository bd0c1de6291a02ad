"""FSDP2 (`sfd_fsdp`, configs/fsdp.yaml) on CPU gloo processes: two sharded processes with batch B
end where one process with batch 2·B ends, a resumed sharded run ends bit-exactly where a straight
one ends, and settings it cannot run are refused in one line.

Runs in subprocesses (tests/scripts/ddp_fit.py, `sfd fit`): in-process, Lightning would re-run
the pytest command line as rank 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS, SCRIPTS
from test_distributed import TIMEOUT, assert_same_training, run_all
from torch import nn

from sfd.errors import SFDConfigError
from sfd.training.cli import parse_fit_config
from sfd.training.fsdp import AlternatingFSDPStrategy, check_fsdp_config, outer_blocks

sys.path.insert(0, str(SCRIPTS))
from cluster_helpers import start_fit, tiny_run_config, write_config  # noqa: E402


def by_position(optimizer_state: dict) -> dict:
    """Optimizer state keyed 0..n-1: a sharded run numbers parameters over the whole module."""
    keys = sorted(optimizer_state["state"])
    return {
        **optimizer_state,
        "state": {i: optimizer_state["state"][k] for i, k in enumerate(keys)},
    }


def test_two_sharded_processes_match_one_process(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    single, sharded = tmp_path / "single.pt", tmp_path / "fsdp.pt"
    outputs = run_all(
        tiny_teacher_dir,
        {
            single: ["--devices", "1", "--batch-size", "4", "--steps", "3"],
            sharded: [
                "--devices",
                "2",
                "--batch-size",
                "2",
                "--steps",
                "3",
                "--strategy",
                "sfd_fsdp",
            ],
        },
    )
    assert outputs[sharded]["world_size"] == 2
    assert_reduced_once_per_update(outputs[sharded], steps=3)
    for output in outputs.values():
        output["optimizers"] = [by_position(state) for state in output["optimizers"]]
    assert_same_training(outputs[single], outputs[sharded], atol=1e-4)


def assert_reduced_once_per_update(output: dict, steps: int) -> None:
    """Each update reduce-scatters the gradients of the network it updates, every FSDP unit of it
    once, and of no other network: the fake score's, then the generator's, per iteration."""
    updates = output["reduce_scatters"]
    assert [list(update) for update in updates] == [["fake_score"], ["generator"]] * steps
    for update in updates:
        [(network, units)] = update.items()
        assert sorted(units) == list(range(output["fsdp_units"][network])), network


@pytest.mark.slow
def test_two_sharded_bf16_processes_match_one_bf16_process(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    """bf16-mixed under FSDP2 (bf16 gathered weights, fp32 reductions and master weights) against
    one process of bf16 autocast without FSDP. bf16 rounding sets the tolerances: weights differ
    by ~4e-3 here while the generator moves by ~6e-2 in these 3 steps; momentum buffers (gradients
    up to ~2.7) by ~0.23, as bf16 and fp32 runs differ by ~0.55; a gradient reduced twice or
    not averaged would be off by the gradient itself."""
    single, sharded = tmp_path / "single.pt", tmp_path / "fsdp.pt"
    bf16 = ["--precision", "bf16-mixed", "--steps", "3"]
    outputs = run_all(
        tiny_teacher_dir,
        {
            single: ["--devices", "1", "--batch-size", "4", *bf16],
            sharded: ["--devices", "2", "--batch-size", "2", "--strategy", "sfd_fsdp", *bf16],
        },
    )
    assert_reduced_once_per_update(outputs[sharded], steps=3)
    for output in outputs.values():
        output["optimizers"] = [by_position(state) for state in output["optimizers"]]
    assert_same_training(outputs[single], outputs[sharded], atol=1e-2, optimizer_atol=0.5)


def test_the_bf16_policy_gathers_bf16_and_reduces_in_fp32() -> None:
    from sfd.training.fsdp import mixed_precision_policy

    policy = mixed_precision_policy("bf16-mixed")
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert policy.cast_forward_inputs is False  # σ reaches the preconditioning in fp32
    assert mixed_precision_policy("32-true").param_dtype is None


def last_state(root: Path) -> dict:
    [path] = sorted(root.rglob("last.ckpt"))
    return torch.load(path, weights_only=True)


@pytest.mark.slow
def test_sharded_resume_is_bit_exact(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    straight_root, resumed_root = tmp_path / "straight", tmp_path / "resumed"
    configs = {
        root: write_config(
            tmp_path / f"{root.name}.yaml",
            tiny_run_config(tiny_teacher_dir, root, max_steps=4, checkpoint_every=2),
        )
        for root in (straight_root, resumed_root)
    }
    sharded = ["-c", str(CONFIGS / "fsdp.yaml"), "--trainer.devices", "2"]
    runs = [
        (configs[straight_root], [*sharded]),
        (configs[resumed_root], [*sharded, "--trainer.max_steps", "2"]),
    ]
    for index, (config, args) in enumerate(runs):
        process = start_fit(config, tmp_path / f"run{index}.log", *args)
        assert process.wait(timeout=TIMEOUT) == 0, process.log.read_text()[-3000:]
    process = start_fit(
        configs[resumed_root], tmp_path / "resume.log", *sharded, "--ckpt_path", "last"
    )
    assert process.wait(timeout=TIMEOUT) == 0, process.log.read_text()[-3000:]
    straight, resumed = last_state(straight_root), last_state(resumed_root)
    assert straight["global_step"] == resumed["global_step"] == 4
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    assert not any(key.startswith("teacher.") for key in resumed["state_dict"])
    for key, value in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], value), key
    for a, b in zip(straight["optimizer_states"], resumed["optimizer_states"], strict=True):
        for index, state in a["state"].items():
            assert all(torch.equal(b["state"][index][k], v) for k, v in state.items())


def test_fsdp_config_parses_to_the_sharding_strategy() -> None:
    config = parse_fit_config(["-c", str(CONFIGS / "tiny.yaml"), "-c", str(CONFIGS / "fsdp.yaml")])
    strategy = config.trainer.strategy
    assert strategy.class_path == "sfd.training.fsdp.AlternatingFSDPStrategy"
    assert strategy.init_args.reshard_after_forward is True
    assert AlternatingFSDPStrategy()._save_distributed_checkpoint is False  # single files


def test_fsdp_refuses_what_it_cannot_run() -> None:
    fsdp = {"class_path": "sfd.training.fsdp.AlternatingFSDPStrategy"}
    with pytest.raises(SFDConfigError, match=r"trainer.precision='16-mixed' with sfd_fsdp"):
        check_fsdp_config({"trainer": {"strategy": fsdp, "precision": "16-mixed"}})
    check_fsdp_config({"trainer": {"strategy": fsdp, "precision": "bf16-mixed"}})
    # configs/fsdp.yaml's own example: sd_base.yaml's bf16-mixed, sharded
    example = ["-c", str(CONFIGS / "sd_base.yaml"), "-c", str(CONFIGS / "sd15_nudity.yaml")]
    config = parse_fit_config([*example, "-c", str(CONFIGS / "fsdp.yaml")])
    check_fsdp_config(config.as_dict())
    with pytest.raises(SFDConfigError, match="model.adapters with sfd_fsdp is not supported"):
        check_fsdp_config({"trainer": {"strategy": "sfd_fsdp"}, "model": {"adapters": {"rank": 4}}})
    check_fsdp_config({"trainer": {"strategy": "sfd_ddp", "precision": "16-mixed"}})  # not FSDP


def test_blocks_are_the_outermost_module_lists() -> None:
    inner = torch.nn.ModuleList([torch.nn.Linear(1, 1)])
    outer = torch.nn.ModuleList([torch.nn.Sequential(inner), torch.nn.Linear(1, 1)])
    network = torch.nn.Sequential(outer, torch.nn.ModuleList([torch.nn.ReLU()]))
    assert outer_blocks(network) == [outer[0], outer[1], network[1][0]]


def test_sharding_invalidates_the_caches_of_the_networks_structure(monkeypatch) -> None:
    """`fully_shard` swaps parameters without torch's registration hooks: the sharding step moves
    `structure_version`, so an EMA list or mode plan made before it is rebuilt, not reused."""
    import torch.distributed.fsdp as fsdp

    from sfd.core.loop import structure_version, watch_structure
    from sfd.training.fsdp import AlternatingFSDPStrategy

    sharded: list[nn.Module] = []
    monkeypatch.setattr(fsdp, "fully_shard", lambda module, **_: sharded.append(module))
    strategy = AlternatingFSDPStrategy()
    strategy._device_mesh = {"data_parallel": None}
    holder = nn.Module()
    holder.generator = nn.Sequential(nn.Linear(2, 2))
    version = watch_structure(holder.generator)
    strategy.shard_networks(holder)
    assert sharded[-1] is holder.generator
    assert structure_version() != version
