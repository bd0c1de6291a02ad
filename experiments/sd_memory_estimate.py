"""GPU memory estimate of SFD on Stable Diffusion 1.5 / 2.1 (numbers quoted in the README).

Parameter counts come from the published UNet / text-encoder / VAE configurations, built on the
meta device (no weights, no download). Activation memory is measured, not guessed: one UNet
forward pass with grad under bf16 autocast at batch 1 and 2 on the CPU, summing the bytes of every
tensor autograd saves for the backward pass (deduplicated by storage), with and without
gradient checkpointing.

    python experiments/sd_memory_estimate.py            # parameter counts only (seconds)
    python experiments/sd_memory_estimate.py --measure  # + activations (SD 1.5 size UNet, minutes)
    python experiments/sd_memory_estimate.py --page-from runs/sd_memory/sd_memory.json

Writes the JSON record (`--json`, default runs/sd_memory/sd_memory.json) and the page
docs/results/sd_memory.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from results_page import (
    add_page_arguments,
    command_line,
    markdown_table,
    read_record,
    run_context,
    save_record,
    write_page,
)
from transformers import CLIPTextConfig, CLIPTextModel

from sfd.teachers.lora import LORA_TARGETS

SD15_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD21_UNET = {
    **SD15_UNET,
    "sample_size": 96,
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),
    "use_linear_projection": True,
    "upcast_attention": True,
}
SD15_TEXT = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "projection_dim": 768}  # fmt: skip
SD21_TEXT = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
             "num_attention_heads": 16, "projection_dim": 512, "hidden_act": "gelu"}  # fmt: skip
VAE = {
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "layers_per_block": 2,
    "latent_channels": 4,
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def lora_count(unet: torch.nn.Module, rank: int) -> int:
    return sum(
        rank * (m.in_features + m.out_features)
        for name, m in unet.named_modules()
        if isinstance(m, torch.nn.Linear) and name.endswith(tuple(LORA_TARGETS))
    )


def saved_activation_bytes(unet: UNet2DConditionModel, checkpointing: bool, batch: int) -> int:
    """Bytes autograd saves in one bf16-autocast forward (distinct storages).

    The input requires grad and the weights do not, as for the teacher in the generator step;
    the saved tensors then include the bf16 copies autocast makes of the weights.
    """
    if checkpointing:
        unet.enable_gradient_checkpointing()
    else:
        unet.disable_gradient_checkpointing()
    unet.train()
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    size = unet.config.sample_size
    unet.requires_grad_(False)
    x = torch.randn(batch, 4, size, size, requires_grad=True)
    embeds = torch.randn(batch, 77, unet.config.cross_attention_dim)
    with (
        torch.autocast("cpu", dtype=torch.bfloat16),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        unet(x, torch.full((batch,), 500.0), encoder_hidden_states=embeds)
    return sum(storages.values())


GB = 1e9


def parameter_rows() -> list[dict[str, Any]]:
    """Parameter counts and static memory of SD 1.5 and 2.1 (meta device, nothing downloaded)."""
    rows = []
    for name, unet_config, text_config in [
        ("SD 1.5", SD15_UNET, SD15_TEXT),
        ("SD 2.1", SD21_UNET, SD21_TEXT),
    ]:
        with torch.device("meta"):
            unet = UNet2DConditionModel(**unet_config)
            text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **text_config))
            vae = AutoencoderKL(**VAE)
        n_unet = count(unet)
        rows.append(
            {
                "model": name,
                "unet_params": n_unet,
                "text_encoder_params": count(text),
                "vae_params": count(vae),
                "lora_r64_params": lora_count(unet, 64),
                "lora_r16_params": lora_count(unet, 16),
                "unet_fp32_gb": n_unet * 4 / GB,
                "trained_network_gb": 4 * n_unet * 4 / GB,  # weights + grad + Adam m, v
                "bf16_weight_copy_gb": n_unet * 2 / GB,
            }
        )
    return rows


def activation_rows(model: str) -> Iterator[dict[str, Any]]:
    """Bytes saved for backward at batch 1 and 2, without and with gradient checkpointing."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**(SD15_UNET if model == "sd15" else SD21_UNET))
    for checkpointing in (False, True):
        start = time.time()
        one, two = (saved_activation_bytes(unet, checkpointing, b) for b in (1, 2))
        yield {
            "model": model,
            "checkpointing": checkpointing,
            "batch1_gb": one / GB,
            "batch2_gb": two / GB,
            "per_sample_gb": (two - one) / GB,
            "per_call_gb": (2 * one - two) / GB,
            "seconds": round(time.time() - start, 1),
        }


def parameter_lines(r: dict[str, Any]) -> str:
    """What the script prints for one model's parameter row."""
    return (
        f"{r['model']}: UNet {r['unet_params'] / 1e6:.1f} M, text encoder "
        f"{r['text_encoder_params'] / 1e6:.1f} M, VAE {r['vae_params'] / 1e6:.1f} M, "
        f"LoRA r=64 {r['lora_r64_params'] / 1e6:.1f} M, r=16 {r['lora_r16_params'] / 1e6:.1f} M\n"
        f"  fp32 UNet weights {r['unet_fp32_gb']:.2f} GB; trained network (w + grad + Adam m, v) "
        f"{r['trained_network_gb']:.2f} GB; bf16 autocast weight copy "
        f"{r['bf16_weight_copy_gb']:.2f} GB"
    )


def activation_line(r: dict[str, Any]) -> str:
    """What the script prints for one activation measurement."""
    return (
        f"{r['model']}, bf16 autocast, checkpointing={r['checkpointing']}: saved for backward "
        f"{r['batch1_gb']:.2f} GB at batch 1, {r['batch2_gb']:.2f} GB at batch 2 -> "
        f"{r['per_sample_gb']:.2f} GB per sample + {r['per_call_gb']:.2f} GB per call "
        f"({r['seconds']:.0f} s)"
    )


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/sd_memory.md from a record of `main`."""
    sections = {
        "Parameters and static memory": (
            "Counted on UNet / text-encoder / VAE modules built from the published configurations "
            "on the meta device (no weights). LoRA counts are the adapters on the fake score's "
            "target layers. The trained network holds weights, gradients and Adam's two moments "
            "in fp32.\n\n"
            + markdown_table(
                (
                    "model",
                    "UNet",
                    "text encoder",
                    "VAE",
                    "LoRA r=64",
                    "LoRA r=16",
                    "fp32 UNet weights",
                    "trained UNet (w + grad + m + v)",
                    "bf16 weight copy",
                ),
                [
                    (
                        r["model"],
                        _millions(r["unet_params"]),
                        _millions(r["text_encoder_params"]),
                        _millions(r["vae_params"]),
                        _millions(r["lora_r64_params"]),
                        _millions(r["lora_r16_params"]),
                        f"{r['unet_fp32_gb']:.2f} GB",
                        f"{r['trained_network_gb']:.2f} GB",
                        f"{r['bf16_weight_copy_gb']:.2f} GB",
                    )
                    for r in record["parameters"]
                ],
            )  # fmt: skip
        )
    }
    if record["activations"]:
        sections["Activations saved for backward (measured)"] = (
            "One UNet forward with grad under bf16 autocast on the CPU, summing the bytes of "
            "every tensor autograd saves (distinct storages); the input requires grad, the "
            "weights do not.\n\n"
            + markdown_table(
                (
                    "model",
                    "gradient checkpointing",
                    "batch 1",
                    "batch 2",
                    "per sample",
                    "per call",
                    "seconds",
                ),
                [
                    (
                        r["model"],
                        "yes" if r["checkpointing"] else "no",
                        f"{r['batch1_gb']:.2f} GB",
                        f"{r['batch2_gb']:.2f} GB",
                        f"{r['per_sample_gb']:.2f} GB",
                        f"{r['per_call_gb']:.2f} GB",
                        f"{r['seconds']:.0f}",
                    )
                    for r in record["activations"]
                ],
            )  # fmt: skip
        )
    else:
        sections["Activations saved for backward"] = (
            "Not measured in this run (`--measure` measures them)."
        )
    return write_page(
        "sd_memory",
        "Memory estimate of SFD on Stable Diffusion 1.5 / 2.1",
        record["run"]["command"],
        json_file,
        record,
        sections,
        results_dir,
    )


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f} M"


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="measure activations (slow)")
    parser.add_argument("--model", choices=("sd15", "sd21"), default="sd15")
    parser.add_argument("--json", default="runs/sd_memory/sd_memory.json", help="the record")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if options.page_from:
        print(write_results_page(read_record(options.page_from), options.page_from))
        return
    load_start = os.getloadavg()
    parameters = parameter_rows()
    for row in parameters:
        print(parameter_lines(row))
    activations = []
    for row in activation_rows(options.model) if options.measure else ():
        print(activation_line(row))
        activations.append(row)
    record = {
        "run": run_context(command_line(__file__, argv), load_start),
        "parameters": parameters,
        "activations": activations,
    }
    save_record(record, options.json)
    if not options.no_page:
        print(write_results_page(record, options.json))


if __name__ == "__main__":
    main()
