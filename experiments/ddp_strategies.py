"""Compare SFD's data-parallel strategies on 2 CPU gloo processes: time per iteration and
agreement with one process that draws the same global batch.

    python experiments/ddp_strategies.py --teacher DIR [--steps 12] [--batch-size 4] [--repeats 2]

Without --teacher a tiny random 8x8 class-conditional teacher is written to a temporary folder.
Prints one JSON line per run and a summary table (median seconds per iteration after warm-up,
largest weight difference from the single process, gradient megabytes each rank all-reduces per
iteration).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "tests" / "scripts" / "ddp_fit.py"


def tiny_teacher(folder: Path) -> Path:
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=10,
    )
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(folder)
    return folder


def run(teacher: Path, output: Path, strategy: str, devices: int, batch: int, steps: int) -> dict:
    command = [
        sys.executable,
        str(SCRIPT),
        *("--teacher", str(teacher), "--output", str(output), "--strategy", strategy),
        *("--devices", str(devices), "--batch-size", str(batch), "--steps", str(steps)),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    subprocess.run(command, env=env, check=True, capture_output=True)
    return torch.load(output, weights_only=True)


def max_difference(a: dict, b: dict) -> float:
    return max(
        (a["state_dict"][k] - b["state_dict"][k]).abs().max().item() for k in a["state_dict"]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", type=Path)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=4, help="per device")
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        teacher = options.teacher or tiny_teacher(scratch / "teacher")
        b, steps = options.batch_size, options.steps
        runs = {
            "single (1 process, batch 2B)": ("single", 1, 2 * b),
            "sfd_ddp (AlternatingDDPStrategy)": ("sfd_ddp", 2, b),
            "ddp_find_unused_parameters_true": ("ddp_find_unused", 2, b),
        }
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        sent: dict[str, float] = {}
        differences: dict[str, float] = {}
        reference = None
        for repeat in range(options.repeats):
            for name, (strategy, devices, batch) in runs.items():
                result = run(teacher, scratch / "out.pt", strategy, devices, batch, steps)
                seconds[name].append(result["seconds_per_iteration"])
                if strategy == "single" and reference is None:
                    reference = result
                differences[name] = max_difference(reference, result)
                sent[name] = result["allreduced_bytes_per_iteration"]
                line = {"run": name, "repeat": repeat, "s_per_it": result["seconds_per_iteration"]}
                line |= {"max_abs_diff_vs_single": differences[name], "allreduce_bytes": sent[name]}
                print(json.dumps(line), flush=True)
    print(f"\nB={b} per device, {steps} iterations, SGD, 2 gloo CPU processes, 1 thread each")
    print(f"{'run':36s} {'median s/it':>12s} {'max |Δw| vs single':>20s} {'MB reduced/it':>14s}")
    for name in runs:
        median = statistics.median(seconds[name])
        megabytes = sent[name] / 2**20
        print(f"{name:36s} {median:12.3f} {differences[name]:20.2e} {megabytes:14.2f}")


if __name__ == "__main__":
    main()
