"""Shared base over two gloo processes: per-device batch B on two ranks ends where one process
with batch 2·B ends (subprocesses: an in-process DDP run would re-run pytest as rank 1)."""

from __future__ import annotations

from pathlib import Path

from test_distributed import assert_same_training, run_all


def test_two_processes_match_one_process_with_adapters(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    single, double = tmp_path / "single.pt", tmp_path / "double.pt"
    adapters = ["--adapters", "4", "--steps", "3"]
    outputs = run_all(
        tiny_teacher_dir,
        {
            single: ["--devices", "1", "--batch-size", "4", *adapters],
            double: ["--devices", "2", "--batch-size", "2", "--strategy", "sfd_ddp", *adapters],
        },
    )
    assert outputs[double]["world_size"] == 2
    state = outputs[single]["state_dict"]
    assert state and all("lora_" in key for key in state)  # the adapters alone
    # Each network's adapter gradients are averaged once per iteration; the base never is.
    trained = sum(
        v.numel() for k, v in state.items() if k.startswith(("generator.", "fake_score."))
    )
    assert outputs[double]["allreduced_bytes_per_iteration"] == 4 * trained
    assert_same_training(outputs[single], outputs[double], atol=1e-4)


def test_shared_base_fragment_and_option_parse() -> None:
    from conftest import CONFIGS

    from sfd.training.cli import parse_fit_config

    tiny = ["-c", str(CONFIGS / "tiny.yaml")]
    fragment = parse_fit_config([*tiny, "-c", str(CONFIGS / "shared_base.yaml")]).model.adapters
    assert (fragment.rank, fragment.kind, fragment.base_dtype) == (16, "lora", "float32")
    option = parse_fit_config([*tiny, "--model.adapters.rank", "8"]).model.adapters
    assert option.rank == 8 and option.kind == "lora"
    assert parse_fit_config(tiny).model.adapters is None  # full copies by default
