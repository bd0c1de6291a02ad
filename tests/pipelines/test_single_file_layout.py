"""The original-layout conversion on architectures the tiny export does not cover: two layers per
block with an attention block that upsamples (SD's own shape), and the OpenCLIP text tower of
SD 2.x; both read back bit-identically by diffusers' `from_single_file`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file, save_file
from sd_fixtures import EMBED_DIM

from sfd.errors import SFDConfigError
from sfd.pipelines.single_file import unet_to_ldm, write_single_file

pytestmark = pytest.mark.usefixtures("single_thread")


def sd_shaped_unet() -> UNet2DConditionModel:
    """Three levels, two resnets per level, cross-attention in the upsampling middle level."""
    torch.manual_seed(1)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=EMBED_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def test_unet_with_two_layers_per_block_round_trips(tmp_path: Path) -> None:
    unet = sd_shaped_unet()
    unet.save_pretrained(tmp_path / "unet")
    tensors = unet_to_ldm(unet.state_dict(), unet.config)
    # SD 1.5's own numbering: level 1's upsampler follows its attention (slot 2).
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in tensors
    assert "model.diffusion_model.input_blocks.3.0.op.weight" in tensors
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp_path / "unet.safetensors"))
    reloaded = UNet2DConditionModel.from_single_file(
        str(tmp_path / "unet.safetensors"),
        config=str(tmp_path),
        subfolder="unet",
        local_files_only=True,
    )
    ours, theirs = unet.state_dict(), reloaded.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_open_clip_text_encoder_round_trips(sd_dirs, tmp_path: Path) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = tmp_path / "sd2-like"
    shutil.copytree(sd_dirs["v_prediction"], folder)
    config = CLIPTextConfig.from_pretrained(folder / "text_encoder")
    config.hidden_act = "gelu"  # the OpenCLIP text tower
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(config)
    shutil.rmtree(folder / "text_encoder")
    text_encoder.save_pretrained(folder / "text_encoder")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    path = write_single_file(unet, vae, text_encoder, tmp_path / "sd2.safetensors")
    keys = load_file(path).keys()
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert not any(k.startswith("cond_stage_model.transformer.") for k in keys)
    reloaded = StableDiffusionPipeline.from_single_file(
        str(path), config=str(folder), local_files_only=True, safety_checker=None
    )
    ours, theirs = text_encoder.state_dict(), reloaded.text_encoder.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_unmappable_unet_is_a_clear_error() -> None:
    unet = sd_shaped_unet()
    state = {**unet.state_dict(), "class_embedding.weight": torch.zeros(3, 3)}
    with pytest.raises(SFDConfigError, match="class_embedding.weight"):
        unet_to_ldm(state, unet.config)


def test_single_file_with_fp16_keeps_the_float32_file(sd_dirs, tmp_path: Path) -> None:
    """`sfd export --single-file --dtype fp16`: the float32 single file is the full-precision
    weights (as `--dtype` keeps the float32 folder), and the fp16 file beside it is their cast."""
    import json

    from sfd.core.generator import OneStepGenerator
    from sfd.pipelines.io import load_pipeline, save_generator
    from sfd.teachers import StableDiffusionTeacher

    generator = OneStepGenerator(StableDiffusionTeacher(str(sd_dirs["epsilon"])))
    folder = save_generator(generator, tmp_path / "export", dtype="fp16", single_file=True)
    record = json.loads((folder / "sfd_export.json").read_text())
    full = load_file(folder / record["single_file"])
    half = load_file(folder / record["single_file_variant"])
    assert record["single_file_variant"] == "sfd_generator.fp16.safetensors"
    assert {v.dtype for v in full.values()} == {torch.float32}
    assert full.keys() == half.keys()
    assert all(torch.equal(half[k], v.to(torch.float16)) for k, v in full.items())
    exported = load_pipeline(folder).unet.state_dict()  # the float32 file is the generator
    [prefix] = {k.split("input_blocks")[0] for k in full if "input_blocks.0.0.weight" in k}
    assert torch.equal(full[prefix + "input_blocks.0.0.weight"], exported["conv_in.weight"])
