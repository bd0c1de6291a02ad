"""Text encoders beyond CLIP: a BERT-style folder loads by its model_index, pads and masks as BERT."""

from __future__ import annotations

import json

import pytest
import torch
from text_fixtures import save_tiny_bert, save_tiny_text_teacher

from sfd.teachers import StableDiffusionTeacher
from sfd.teachers.stable_diffusion import (
    cross_attention_mask,
    encode_with,
    load_text_encoder,
    masks_padding,
)


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "encoder")


@pytest.fixture(scope="module")
def text_teacher_dir(tmp_path_factory, bert_dir):
    return save_tiny_text_teacher(tmp_path_factory.mktemp("text-teacher") / "pixels", bert_dir)


def test_model_index_names_the_classes_that_load(text_teacher_dir):
    index = json.loads((text_teacher_dir / "model_index.json").read_text())
    tokenizer, encoder = load_text_encoder(str(text_teacher_dir))
    assert index["text_encoder"] == ["transformers", "BertModel"]
    assert type(encoder).__name__ == "BertModel"
    assert type(tokenizer).__name__ == index["tokenizer"][1]
    assert masks_padding(encoder)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_bert_hidden_states_follow_its_mask_and_zero_the_padding(text_teacher_dir):
    tokenizer, encoder = load_text_encoder(str(text_teacher_dir))
    prompts = ["a handwritten digit seven", "seven", ""]
    embeds = encode_with(tokenizer, encoder, prompts)  # (3, L, D)
    assert embeds.shape == (3, tokenizer.model_max_length, encoder.config.hidden_size)
    for row, prompt in enumerate(prompts):
        ids = tokenizer(prompt, return_tensors="pt").input_ids  # unpadded: [CLS] ... [SEP]
        with torch.no_grad():
            alone = encoder(ids)[0][0]  # the oracle: the prompt encoded without any padding
        used = ids.shape[1]
        torch.testing.assert_close(embeds[row, :used], alone, rtol=1e-5, atol=1e-5)
        assert bool((embeds[row, used:] == 0).all())


def test_masked_cross_attention_equals_attending_to_the_real_tokens_only(text_teacher_dir):
    teacher = StableDiffusionTeacher(str(text_teacher_dir), attention="eager")
    embeds = teacher.encode_prompts(["the number 7"])  # (1, L, D), padded with zeros
    used = int(cross_attention_mask(embeds).sum())
    x = torch.randn(1, *teacher.sample_shape)
    t = torch.tensor([500])
    with torch.no_grad():
        masked = teacher.unet(
            x, t, encoder_hidden_states=embeds, encoder_attention_mask=cross_attention_mask(embeds)
        ).sample
        short = teacher.unet(x, t, encoder_hidden_states=embeds[:, :used]).sample
    torch.testing.assert_close(masked, short, rtol=1e-5, atol=1e-5)


def test_no_padding_means_no_mask():
    assert cross_attention_mask(torch.ones(2, 5, 4)) is None
    mask = cross_attention_mask(torch.cat([torch.ones(1, 3, 4), torch.zeros(1, 2, 4)], 1))
    assert mask.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]


def test_clip_keeps_stable_diffusion_padding(sd_teacher):
    tokenizer, encoder = load_text_encoder(sd_teacher.pipeline)
    assert not masks_padding(encoder)
    embeds = encode_with(tokenizer, encoder, ["a photo"])
    assert embeds.shape[1] == 77 and cross_attention_mask(embeds) is None
