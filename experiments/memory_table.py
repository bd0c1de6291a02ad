"""GPU memory per device of SFD on SD 1.5, SDXL, SD3.5 Medium / Large and Flux.1-dev.

Every network is built from its published config (written below) on the meta device: shapes only,
nothing downloaded, no memory. Parameter counts are those modules' own; activations come from
`sfd.training.activations` (one meta-device forward per call shape, summing the bytes autograd saves for
the backward pass; the method and what it leaves out are in docs/training.md#memory). Three modes:

- full copies: frozen teacher, generator and fake score as full networks, fp32 weights under
  bf16 autocast (configs/sd_base.yaml), Adam state in fp32;
- shared base: one frozen base in bf16, generator and fake score as two rank-16 LoRA adapters (fp32,
  Adam in fp32) on the layers sfd adapts by default (`DEFAULT_TARGETS`: attention, feed-forward,
  residual convolutions, time embeddings), activations counted with the adapters in the network;
- FSDP over 8 GPUs: full copies with weights, gradients and Adam state divided by 8; bf16 compute
  on the gathered units (two at a time), as `sfd_fsdp` runs `bf16-mixed` (FSDP2's bf16 gather).

Batch 8 + 8 per device (configs/sd_base.yaml) at SD 1.5 512², the others 1024².

    python experiments/memory_table.py                 # a few minutes on a laptop CPU
    python experiments/memory_table.py --page-from runs/memory/memory.json

Writes the JSON record (`--json`, default runs/memory/memory.json) and docs/results/memory.md.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, UNet2DConditionModel
from peft import LoraConfig
from results_page import (
    add_page_arguments,
    command_line,
    markdown_table,
    read_record,
    run_context,
    save_record,
    write_page,
)

from sfd.teachers.adapter_settings import GENERATOR_ADAPTER, AdapterSettings
from sfd.training.activations import (
    CallCache,
    StepShape,
    adapter_twin,
    step_activations,
)
from sfd.training.memory import (
    GIB,
    RUNTIME_OVERHEAD_BYTES,
)
from sfd.training.parameter_bytes import (
    ParameterGroup,
    attention_linear_names,
    lora_parameter_count,
    parameter_count,
    static_bytes,
    trainable_bytes,
)

SD15_UNET = {  # stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json
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
SDXL_UNET = {  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280),
    "layers_per_block": 2,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SD35_MEDIUM = {  # stabilityai/stable-diffusion-3.5-medium transformer/config.json (MMDiT-X)
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 24,
    "attention_head_dim": 64,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 384,
    "dual_attention_layers": tuple(range(13)),
    "qk_norm": "rms_norm",
}
SD35_LARGE = {  # stabilityai/stable-diffusion-3.5-large transformer/config.json
    "sample_size": 128,
    "patch_size": 2,
    "in_channels": 16,
    "out_channels": 16,
    "num_layers": 38,
    "attention_head_dim": 64,
    "num_attention_heads": 38,
    "joint_attention_dim": 4096,
    "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048,
    "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
}
FLUX_DEV = {  # black-forest-labs/FLUX.1-dev transformer/config.json
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": True,
    "axes_dims_rope": (16, 56, 56),
}
# name, network class, config, resolution (px), VAE factor, published size, classifier-free
# guidance (Flux.1-dev is guidance-distilled: one call with the guidance embedding)
FAMILIES = [
    ("SD 1.5", UNet2DConditionModel, SD15_UNET, 512, 8, "0.86 B", True),
    ("SDXL", UNet2DConditionModel, SDXL_UNET, 1024, 8, "2.6 B", True),
    ("SD3.5 Medium", SD3Transformer2DModel, SD35_MEDIUM, 1024, 8, "2.5 B", True),
    ("SD3.5 Large", SD3Transformer2DModel, SD35_LARGE, 1024, 8, "8.1 B", True),
    ("Flux.1-dev", FluxTransformer2DModel, FLUX_DEV, 1024, 8, "12 B", False),
]
MODES = ("full copies", "shared base + LoRA r16", "full copies, FSDP over 8")
RANK = 16
ADAM_STATES = 2
BATCH = 8  # per device, remain + forget each (configs/sd_base.yaml)
GPU_BYTES = 80 * 10**9  # an "80 GB" GPU, counted in decimal gigabytes (the smaller reading)


def build(network_class: type, config: dict[str, Any]) -> torch.nn.Module:
    """The network on the meta device in bf16 (the compute dtype of every mode), all trainable."""
    with torch.device("meta"):
        network = network_class(**config)
    torch.nn.Module.to(network, torch.bfloat16)
    return network.requires_grad_(True)


def with_adapter(network: torch.nn.Module, config: Any) -> torch.nn.Module:
    """A bf16 meta twin of `network` with one PEFT adapter (`config`), only the adapter trained."""
    twin = adapter_twin(network, config, GENERATOR_ADAPTER, torch.bfloat16)
    if twin is None:
        raise SystemExit(f"peft cannot adapt {type(network).__name__} with {config}")
    return twin


def trained_count(network: torch.nn.Module) -> int:
    return sum(p.numel() for p in network.parameters() if p.requires_grad)


def adapted_layers(network: torch.nn.Module) -> int:
    return sum(1 for m in network.modules() if GENERATOR_ADAPTER in getattr(m, "lora_A", {}))


def mode_groups(
    mode: str, params: int, buffers: int, lora: int
) -> tuple[list[ParameterGroup], int]:
    """The distinct parameters of one mode, and the devices they are sharded over."""
    if mode == "shared base + LoRA r16":
        return [
            ParameterGroup("base", params + buffers, 2, False),
            ParameterGroup("generator", lora, 4, True),
            ParameterGroup("fake score", lora, 4, True),
        ], 1
    full = [
        ParameterGroup("teacher", params + buffers, 4, False),
        ParameterGroup("generator", params, 4, True),
        ParameterGroup("generator", buffers, 4, False),
        ParameterGroup("fake score", params, 4, True),
        ParameterGroup("fake score", buffers, 4, False),
    ]
    return full, 8 if mode.startswith("full copies, FSDP") else 1


def family_rows(family: tuple[Any, ...]) -> dict[str, Any]:
    """Parameter counts and, per mode and checkpointing, the bytes per device."""
    name, network_class, config, resolution, factor, published, cfg = family
    start = time.time()
    network = build(network_class, config)
    params = parameter_count(network)
    buffers = sum(b.numel() for b in network.buffers() if b.is_floating_point())
    # The attention layers' LoRA, counted two ways (a cross-check of the walk against peft) ...
    targets = attention_linear_names(network)
    attention_lora = lora_parameter_count(network, RANK, targets)
    peft_attention = trained_count(
        with_adapter(network, LoraConfig(r=RANK, target_modules=targets))
    )
    # ... and the shipped one (`model.adapters`' default layers), which the shared-base rows train.
    adapted = with_adapter(network, AdapterSettings(rank=RANK).peft_config())
    lora = trained_count(adapted)
    latent = (resolution // factor, resolution // factor)
    full_twins = {"generator": network, "teacher": network, "fake score": network}
    shared_twins = {"generator": adapted, "teacher": network, "fake score": adapted}
    caches = {
        "full": CallCache(full_twins, latent, torch.bfloat16),
        "shared": CallCache(shared_twins, latent, torch.bfloat16),
    }
    rows = [
        mode_row(
            mode,
            caches["shared" if mode.startswith("shared") else "full"],
            params,
            buffers,
            lora,
            cfg,
        )
        for mode in MODES
    ]
    return {
        "family": name,
        "network": network_class.__name__,
        "resolution": resolution,
        "latent": list(latent),
        "published": published,
        "classifier_free_guidance": cfg,
        "params": params,
        "buffers": buffers,
        "lora_targets": len(targets),
        "lora_params": attention_lora,
        "peft_lora_params": peft_attention,
        "shipped_lora_layers": adapted_layers(adapted),
        "shipped_lora_params": lora,
        "modes": rows,
        "seconds": round(time.time() - start, 1),
    }


def mode_row(
    mode: str, cache: CallCache, params: int, buffers: int, lora: int, cfg: bool
) -> dict[str, Any]:
    """Bytes per device of one mode, with and without checkpointing, and its largest batch."""
    groups, shards = mode_groups(mode, params, buffers, lora)
    static = static_bytes(groups, ADAM_STATES, shards)
    fsdp = shards > 1
    copies = not mode.startswith("shared") and not fsdp  # fp32 weights under bf16 autocast

    def total(batch: int, checkpointing: bool) -> int:
        activations = step_activations(
            cache,
            StepShape(batch, cfg, cfg, cfg),
            checkpointing,
            weight_copies=copies,
            trained_weight_bytes={"generator": params * 2, "fake score": params * 2},
            gathered_units=2 if fsdp else 0,
        ).total
        return static.total + activations + RUNTIME_OVERHEAD_BYTES

    row: dict[str, Any] = {
        "mode": mode,
        "shards": shards,
        "weights": static.weights,
        "gradients": static.gradients,
        "optimizer": static.optimizer,
        "trainable_bytes": trainable_bytes(groups, ADAM_STATES),
    }
    for checkpointing in (False, True):
        at_preset = total(BATCH, checkpointing)
        row["checkpointing" if checkpointing else "no_checkpointing"] = {
            "activations": at_preset - static.total - RUNTIME_OVERHEAD_BYTES,
            "total": at_preset,
            "batch1_total": total(1, checkpointing),
            "largest_batch": largest_batch(functools.partial(total, checkpointing=checkpointing)),
        }
    return row


def largest_batch(total: Callable[[int], int], limit: int = 64) -> int:
    """The largest per-device batch (remain and forget each) whose total fits `GPU_BYTES`.

    The total is affine in the batch up to the recomputation term, so the guess from batches 1
    and 2 is checked and moved by single steps.
    """
    if total(1) > GPU_BYTES:
        return 0
    slope = total(2) - total(1)
    guess = limit if slope <= 0 else min(limit, 1 + (GPU_BYTES - total(1)) // slope)
    while guess > 1 and total(guess) > GPU_BYTES:
        guess -= 1
    while guess < limit and total(guess + 1) <= GPU_BYTES:
        guess += 1
    return guess


def gib(n: int) -> str:
    return f"{n / GIB:.1f}"


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def size(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.1f} M"


def summary_lines(family: dict[str, Any]) -> list[str]:
    """What the script prints for one family."""
    lines = [
        f"{family['family']}: {size(family['params'])} parameters (+ {size(family['buffers'])} "
        f"buffers; published {family['published']}), LoRA r{RANK} on {family['lora_targets']} "
        f"attention layers {size(family['lora_params'])} per adapter "
        f"(peft {size(family['peft_lora_params'])}); shipped LoRA on "
        f"{family['shipped_lora_layers']} layers {size(family['shipped_lora_params'])}, "
        f"{family['seconds']:.0f} s"
    ]
    for row in family["modes"]:
        ckpt, plain = row["checkpointing"], row["no_checkpointing"]
        lines.append(
            f"  {row['mode']}: weights {gib(row['weights'])} GiB, gradients "
            f"{gib(row['gradients'])}, Adam {gib(row['optimizer'])}, activations "
            f"{gib(plain['activations'])} / {gib(ckpt['activations'])} with checkpointing -> "
            f"{gib(plain['total'])} / {gib(ckpt['total'])} GiB"
        )
    return lines


def target_rows(record: dict[str, Any]) -> list[tuple[str, ...]]:
    """The issue's targets, each with its number and whether it holds."""
    rows = []
    for family in record["families"]:
        full, shared = family["modes"][0], family["modes"][1]
        ratio = shared["trainable_bytes"] / full["trainable_bytes"]
        rows.append(
            (
                f"{family['family']}: shared-base trainable bytes ≤ 5 % of full copies'",
                f"{mib(shared['trainable_bytes'])} MiB vs {mib(full['trainable_bytes'])} MiB "
                f"= {100 * ratio:.2f} %",
                "yes" if ratio <= 0.05 else "no",
            )
        )
    for flux in (f for f in record["families"] if f["family"] == "Flux.1-dev"):
        shared = flux["modes"][1]["checkpointing"]
        most, preset = shared["largest_batch"], record["batch"]
        preset_fits = shared["total"] <= GPU_BYTES
        rows.append(
            (
                "Flux.1-dev shared base, bf16 base, checkpointing, 1024²: fits one 80 GB GPU",
                f"at 1 + 1: {gib(shared['batch1_total'])} GiB; largest batch that fits: "
                f"{most} + {most}; at the preset's {preset} + {preset}: "
                f"{gib(shared['total'])} GiB ({'fits' if preset_fits else 'does not fit'})",
                (f"yes, at batch 1 + 1 to {most} + {most}" if most >= 1 else "no")
                + ("" if preset_fits else f"; not at the preset's {preset} + {preset}"),
            )
        )
    return rows


def write_results_page(record: dict[str, Any], json_file: str, results_dir: Any = None) -> Any:
    """docs/results/memory.md from a record of `main`."""
    parameters = markdown_table(
        ("family", "network", "parameters", "published", "buffers", "attention layers",
         f"attention LoRA r{RANK} (walk)", "peft's count", "shipped layers adapted",
         f"shipped LoRA r{RANK} per adapter"),
        [
            (f["family"], f"`{f['network']}`", size(f["params"]), f["published"],
             size(f["buffers"]), f["lora_targets"], size(f["lora_params"]),
             size(f["peft_lora_params"]), f["shipped_lora_layers"],
             size(f["shipped_lora_params"]))
            for f in record["families"]
        ],
    )  # fmt: skip
    memory_rows = []
    for f in record["families"]:
        for row in f["modes"]:
            plain, ckpt = row["no_checkpointing"], row["checkpointing"]
            memory_rows.append(
                (
                    f["family"], row["mode"], gib(row["weights"]), gib(row["gradients"]),
                    gib(row["optimizer"]), gib(plain["activations"]), gib(ckpt["activations"]),
                    gib(plain["total"]), gib(ckpt["total"]),
                    f"{plain['largest_batch']} / {ckpt['largest_batch']}",
                )
            )  # fmt: skip
    table = markdown_table(
        ("family", "mode", "weights", "gradients", "Adam state", "activations",
         "activations (ckpt)", "total", "total (ckpt)", "largest batch in 80 GB (– / ckpt)"),
        memory_rows,
    )  # fmt: skip
    sections = {
        "Per GPU, batch 8 + 8": (
            f"GiB per device at batch {record['batch']} + {record['batch']} per device "
            "(configs/sd_base.yaml), SD 1.5 at 512², the others at 1024². *total* adds "
            f"{gib(RUNTIME_OVERHEAD_BYTES)} GiB for the CUDA context and allocator slack; *ckpt*: "
            "gradient checkpointing. The last column is the largest batch (remain and forget "
            f"each) whose total fits {GPU_BYTES / 1e9:.0f} GB (0: not even 1 + 1). Full copies: "
            "fp32 weights under bf16 autocast, Adam state fp32; shared base: one bf16 base, two "
            f"rank-{RANK} LoRA adapters in fp32 with their Adam state on the layers `sfd` "
            "adapts by default (`model.adapters.targets`: attention projections, feed-forward, "
            "residual convolutions and time embeddings; the activations counted with the "
            "adapters in the network); FSDP "
            "(`trainer.precision: bf16-mixed` with FSDP2's bf16 gather, configs/fsdp.yaml): "
            "weights, gradients and Adam state / 8, two bf16 blocks gathered at a time, the batch "
            "per device unchanged.\n\n" + table
        ),
        "Targets": markdown_table(("target", "measured", "met"), target_rows(record)),
        "Networks": (
            "Parameters of the networks built from their published configs on the meta device; "
            "buffers are persistent tensors outside the parameters (SD3.5's position-embedding "
            "table: the published sizes count it). The attention LoRA count walks the module tree "
            "for the `nn.Linear` layers of the attention modules; peft's is the count peft gives "
            "the same targets (a cross-check). The shared-base rows train the shipped LoRA: "
            "peft's adapter on the default layers (`sfd.teachers.adapter_settings.DEFAULT_TARGETS`)"
            ".\n\n" + parameters
        ),
        "Method": (
            "Activations are the bytes autograd saves for the backward pass in one meta-device "
            "forward per call shape (`sfd.training.activations`; attention saved as FlashAttention "
            "saves it) with prompts of 77 CLIP tokens (SD 1.5, SDXL), 77 + 256 (SD3.5) and 512 T5 "
            "tokens (Flux.1-dev), the presets' lengths, summed over what the larger of SFD's two "
            "steps keeps: the generator step "
            "keeps two generator calls, two teacher and two fake-score calls (conditional and null "
            "halves in one batch when the family uses classifier-free guidance: Flux.1-dev does not, "
            "it is guidance-distilled). With checkpointing only the blocks' inputs stay, plus "
            "one block's recomputation. Under autocast with fp32 weights, the bf16 weight copies "
            "that ops save are counted too. See docs/training.md#memory for what is not counted "
            "(kernel workspaces, fragmentation beyond the flat allowance)."
        ),
    }
    return write_page(
        "memory",
        "GPU memory of SFD per family",
        record["run"]["command"],
        json_file,
        record,
        sections,
        results_dir,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="runs/memory/memory.json", help="the record")
    parser.add_argument(
        "--families", nargs="+", default=[f[0] for f in FAMILIES], help="a subset, by name"
    )
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if options.page_from:
        print(write_results_page(read_record(options.page_from), options.page_from))
        return
    load_start = os.getloadavg()
    families = []
    for family in FAMILIES:
        if family[0] in options.families:
            families.append(family_rows(family))
            print("\n".join(summary_lines(families[-1])), flush=True)
    record = {
        "run": run_context(command_line(__file__, argv), load_start),
        "batch": BATCH,
        "families": families,
    }
    save_record(record, options.json)
    if not options.no_page and len(families) == len(FAMILIES):
        print(write_results_page(record, options.json))


if __name__ == "__main__":
    main()
