"""GPU memory estimate of SFD on Stable Diffusion 1.5 / 2.1 (numbers quoted in the README).

Parameter counts come from the published UNet / text-encoder / VAE configurations, built on the
meta device (no weights, no download). Activation memory is measured, not guessed: one UNet
forward pass with grad under bf16 autocast at batch 1 and 2 on the CPU, summing the bytes of every
tensor autograd saves for the backward pass (deduplicated by storage), with and without
gradient checkpointing.

    python experiments/sd_memory_estimate.py            # parameter counts only (seconds)
    python experiments/sd_memory_estimate.py --measure  # + activations (SD 1.5 size UNet, minutes)
"""

from __future__ import annotations

import argparse
import time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
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
        if isinstance(m, torch.nn.Linear) and name.endswith(LORA_TARGETS)
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measure", action="store_true", help="measure activations (slow)")
    parser.add_argument("--model", choices=("sd15", "sd21"), default="sd15")
    options = parser.parse_args()
    gb = 1e9
    for name, unet_config, text_config in [
        ("SD 1.5", SD15_UNET, SD15_TEXT),
        ("SD 2.1", SD21_UNET, SD21_TEXT),
    ]:
        with torch.device("meta"):
            unet = UNet2DConditionModel(**unet_config)
            text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **text_config))
            vae = AutoencoderKL(**VAE)
        n_unet, n_text, n_vae = count(unet), count(text), count(vae)
        print(
            f"{name}: UNet {n_unet / 1e6:.1f} M, text encoder {n_text / 1e6:.1f} M, "
            f"VAE {n_vae / 1e6:.1f} M, LoRA r=64 {lora_count(unet, 64) / 1e6:.1f} M, "
            f"r=16 {lora_count(unet, 16) / 1e6:.1f} M"
        )
        weights = n_unet * 4 / gb
        print(
            f"  fp32 UNet weights {weights:.2f} GB; trained network (w + grad + Adam m, v) "
            f"{4 * weights:.2f} GB; bf16 autocast weight copy {n_unet * 2 / gb:.2f} GB"
        )
    if options.measure:
        torch.manual_seed(0)
        config = SD15_UNET if options.model == "sd15" else SD21_UNET
        unet = UNet2DConditionModel(**config)
        for checkpointing in (False, True):
            start = time.time()
            one, two = (saved_activation_bytes(unet, checkpointing, b) for b in (1, 2))
            print(
                f"{options.model}, bf16 autocast, checkpointing={checkpointing}: saved for backward "
                f"{one / gb:.2f} GB at batch 1, {two / gb:.2f} GB at batch 2 -> "
                f"{(two - one) / gb:.2f} GB per sample + {(2 * one - two) / gb:.2f} GB per call "
                f"({time.time() - start:.0f} s)"
            )


if __name__ == "__main__":
    main()
