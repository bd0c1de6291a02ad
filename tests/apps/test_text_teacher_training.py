"""Text-teacher and VAE training: captions per class, dropout, folders StableDiffusionTeacher loads."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import AutoencoderKL
from text_fixtures import save_tiny_bert, write_tiny_fashion

from sfd.apps.data.captions import DIGITS_VOCABULARY, load_fashion_mnist
from sfd.apps.data.images import load_digits
from sfd.apps.teachers.text import (
    TextTeacherModule,
    make_text_scheduler,
    make_text_unet,
    train_text_teacher,
)
from sfd.apps.teachers.text_encoders import load_encoder_folder
from sfd.apps.teachers.vae import latent_std, train_vae
from sfd.cli import main
from sfd.teachers import StableDiffusionTeacher
from sfd.teachers.stable_diffusion import encode_with, load_text_encoder


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "encoder")


def test_captions_come_from_the_label_and_dropout_gives_the_empty_prompt(bert):
    captions, labels = DIGITS_VOCABULARY.caption_table()
    embeds = torch.arange(len(captions), dtype=torch.float32).view(-1, 1, 1).expand(-1, 2, 3)
    module = TextTeacherModule(
        make_text_unet((1, 8, 8), 3, (8, 16)),
        make_text_scheduler(latent=False),
        embeds,
        labels,
        torch.full((2, 3), -1.0),
    )
    wanted = torch.tensor([7, 0, 7, 3] * 50)
    rows = module.captions_for(wanted)[:, 0, 0].long()  # the caption index
    assert bool((labels[rows] == wanted).all())
    assert len(set(rows[wanted == 7].tolist())) > 1  # several captions per class are drawn
    seen = []
    module.unet.register_forward_pre_hook(
        lambda net, args, kwargs: seen.append(kwargs["encoder_hidden_states"]), with_kwargs=True
    )
    module.hparams.prompt_dropout = 0.5
    module.diffusion_loss(torch.zeros(200, 1, 8, 8), wanted)
    dropped = (seen[0] == -1).all(dim=(1, 2))
    assert 0.3 < dropped.float().mean() < 0.7  # the empty prompt's rows


def test_pixel_teacher_folder_loads_as_stable_diffusion_teacher(bert, tmp_path, single_thread):
    digits = load_digits()
    out = train_text_teacher(
        digits.subset(torch.arange(64)),
        DIGITS_VOCABULARY,
        tmp_path / "teacher",
        text_encoder=str(bert),
        max_steps=2,
        batch_size=8,
        block_out_channels=(8, 16),
        accelerator="cpu",
        progress=False,
    )
    index = json.loads((out / "model_index.json").read_text())
    assert index["vae"] == [None, None] and index["text_encoder"][1] == "BertModel"
    assert not (out / "vae").exists()
    teacher = StableDiffusionTeacher(str(out))
    assert teacher.sample_shape == (1, 8, 8)
    tokenizer, encoder = load_text_encoder(str(out))
    assert tokenizer.model_max_length == 24
    own_tokenizer, own_encoder = load_encoder_folder(str(bert), 24)
    prompts = ["the number 7", ""]
    torch.testing.assert_close(  # the saved encoder is the source encoder
        encode_with(tokenizer, encoder, prompts), encode_with(own_tokenizer, own_encoder, prompts)
    )
    extra = json.loads((out / "sfd.json").read_text())
    assert extra["space"] == "pixels" and extra["class_names"][7] == "seven"


def test_vae_scaling_factor_is_one_over_the_latent_std(tmp_path, single_thread):
    images = load_fashion_mnist(str(write_tiny_fashion(tmp_path / "fashion", per_class=2)))
    vae = train_vae(
        images,
        tmp_path / "vae",
        max_steps=2,
        batch_size=8,
        block_out_channels=(8, 16, 16),
        accelerator="cpu",
        progress=False,
    )
    reloaded = AutoencoderKL.from_pretrained(tmp_path / "vae")
    assert reloaded.config.scaling_factor == pytest.approx(1.0 / latent_std(reloaded, images))
    assert reloaded.config.scaling_factor == vae.config.scaling_factor
    assert all(
        torch.equal(a, b) for a, b in zip(vae.parameters(), reloaded.parameters(), strict=True)
    )


def test_teacher_text_cli_writes_a_latent_teacher(bert, tmp_path, single_thread, capsys):
    folder = write_tiny_fashion(tmp_path / "fashion")
    out = tmp_path / "teacher"
    args = ["teacher-text", "--data", str(folder), "--output-dir", str(out)]
    tiny = ["--max-steps", "2", "--vae-steps", "2", "--channels", "8", "16", "--batch-size", "4"]
    code = main(
        [*args, *tiny, "--text-encoder", str(bert), "--accelerator", "cpu", "--no-progress"]
    )
    assert code == 0
    assert (out / "vae" / "config.json").is_file()
    assert StableDiffusionTeacher(str(out)).sample_shape == (4, 8, 8)
    assert main([*args, "--max-steps", "0"]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith("sfd: error: teacher max_steps=0")
    )
    # A teacher is never replaced by accident: --overwrite replaces it, once the new one is trained.
    rest = [*tiny, "--text-encoder", str(bert), "--accelerator", "cpu", "--no-progress"]
    written = (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    assert main([*args, *rest]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"sfd: error: --output-dir {str(out)!r} already holds a teacher; --overwrite replaces it "
        "once the new one is trained, or choose a new folder"
    )
    assert (out / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == written
    assert main([*args, *rest, "--seed", "1", "--overwrite"]) == 0
    assert StableDiffusionTeacher(str(out)).sample_shape == (4, 8, 8)
