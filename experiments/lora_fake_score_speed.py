"""Seconds per LoRA fake-score step: PEFT's adapters (what sfd uses) against a plain LoRA layer.

    python experiments/lora_fake_score_speed.py [--rank 8] [--steps 15] [--repeats 2]

Both adapt `to_q`, `to_k`, `to_v`, `to_out.0` of the same 2-level `UNet2DConditionModel` (16×16
latents, batch 4, 77×64 text embeddings) with the same rank and scale, freeze the base, and time
forward + backward + Adam step on one CPU thread. The plain layer is y = W·x + (α/r)·B·A·x, the
hand-written form PEFT replaced in `sfd.teachers.lora`.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from peft import LoraConfig
from torch import nn

TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class PlainLoRA(nn.Module):
    """y = base(x) + (α/r)·B·A·x with the base frozen and B = 0 at start."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.down = nn.Parameter(torch.empty(rank, base.in_features))
        self.up = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.down, a=5**0.5)
        self.scale = alpha / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.down), self.up)


def unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(64, 128),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def plain(rank: int) -> UNet2DConditionModel:
    network = unet().requires_grad_(False)
    for name, module in list(network.named_modules()):
        if isinstance(module, nn.Linear) and name.endswith(TARGETS):
            parent, _, child = name.rpartition(".")
            setattr(network.get_submodule(parent), child, PlainLoRA(module, rank, rank))
    return network


def peft(rank: int) -> UNet2DConditionModel:
    network = unet().requires_grad_(False)
    network.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=list(TARGETS)))
    return network


def median_step(network: UNet2DConditionModel, steps: int) -> tuple[float, int]:
    params = [p for p in network.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4)
    x, t, text = torch.randn(4, 4, 16, 16), torch.full((4,), 500.0), torch.randn(4, 77, 64)
    times = []
    for step in range(steps + 3):  # 3 warm-up steps
        start = time.perf_counter()
        network(x, t, encoder_hidden_states=text).sample.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
        if step >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times), sum(p.numel() for p in params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(1)
    for repeat in range(options.repeats):
        for name, build in (("plain", plain), ("peft", peft)):
            seconds, count = median_step(build(options.rank), options.steps)
            print(f"repeat {repeat} {name}: {count} trainable parameters, {seconds:.4f} s/step")


if __name__ == "__main__":
    main()
