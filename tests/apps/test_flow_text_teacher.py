"""The flow-matching text teacher (`--family sd3`): its loss, its folder, its sampler, its attack.

Oracles: a hand-written rectified-flow loss on the same fixed draws; the stock
`StableDiffusion3Pipeline` (loading, `encode_prompt`, and its own Euler sampling loop); the MiniLM
slot's `BertModel` called directly; the stock encoding of a longer prompt for the soft prompt.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import StableDiffusion3Pipeline
from text_fixtures import save_tiny_bert

from sfd.apps.data.captions import DIGITS_VOCABULARY
from sfd.apps.data.images import load_digits
from sfd.apps.harness.text_folders import flow_prompt_encoder, flow_teacher, teacher_model
from sfd.apps.teachers.flow_text import (
    CLIP_LENGTH,
    CLIP_WIDTH,
    FlowTextTeacherModule,
    make_text_transformer,
    train_flow_text_teacher,
)
from sfd.core.conditions import TextCondition
from sfd.core.ddim import ddim_trajectory, sampler_sigmas
from sfd.eval.soft_prompt import FlowSoftPrompt
from sfd.teachers import SD3Teacher
from sfd.teachers.flow_time import flow_time

LENGTH = 16


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert") / "encoder")


@pytest.fixture(scope="module")
def flow_teacher_dir(bert, tmp_path_factory):
    torch.set_num_threads(1)
    return train_flow_text_teacher(
        load_digits().subset(torch.arange(64)),
        DIGITS_VOCABULARY,
        tmp_path_factory.mktemp("flow") / "teacher",
        text_encoder=str(bert),
        max_steps=2,
        batch_size=8,
        max_length=LENGTH,
        accelerator="cpu",
        progress=False,
    )


def test_flow_loss_is_the_rectified_flow_loss_on_fixed_draws() -> None:
    torch.manual_seed(0)
    transformer = make_text_transformer((1, 8, 8), 32, layers=1, heads=1)
    captions = torch.randn(6, 1 + 5, 32)  # packed: pooled row, then 5 sequence rows
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    empty = torch.randn(1 + 5, 32)
    module = FlowTextTeacherModule(transformer, captions, labels, empty, prompt_dropout=0.5)
    x0 = torch.rand(8, 1, 8, 8) * 2 - 1
    batch_labels = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])
    torch.manual_seed(1)
    loss = module.flow_loss(x0, batch_labels)

    torch.manual_seed(1)  # the same draws, in the documented order
    pick = (torch.rand(8) * 2).long()  # two captions per class
    embeds = captions[batch_labels * 2 + pick]
    t = torch.sigmoid(torch.randn(8))
    eps = torch.randn(8, 1, 8, 8)
    drop = torch.rand(8) < 0.5
    embeds[drop] = empty
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    v = transformer(
        hidden_states=x_t,
        encoder_hidden_states=embeds[:, 1:],
        pooled_projections=embeds[:, 0, : 2 * CLIP_WIDTH],
        timestep=1000 * t,
    ).sample
    assert drop.any() and not drop.all()
    torch.testing.assert_close(loss, F.mse_loss(v, eps - x0))


def test_folder_is_a_stock_sd3_pipeline_with_minilm_doing_the_conditioning(
    flow_teacher_dir, bert
) -> None:
    from transformers import AutoModel, AutoTokenizer

    pipe = StableDiffusion3Pipeline.from_pretrained(flow_teacher_dir, vae=None)
    prompts = ["a handwritten digit seven", ""]
    with torch.no_grad():
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompt=prompts,
            prompt_2=None,
            prompt_3=None,
            do_classifier_free_guidance=False,
            max_sequence_length=LENGTH,
        )
        tokenizer, encoder = AutoTokenizer.from_pretrained(bert), AutoModel.from_pretrained(bert)
        ids = tokenizer(prompts, padding="max_length", max_length=LENGTH, return_tensors="pt")
        minilm = encoder(ids.input_ids)[0]  # unmasked, as the stock T5 slot is called
    assert embeds.shape == (2, CLIP_LENGTH + LENGTH, 32) and pooled.shape == (2, 16)
    assert not embeds[:, :CLIP_LENGTH].any() and not pooled.any()  # the zero CLIP slots
    torch.testing.assert_close(embeds[:, CLIP_LENGTH:], minilm)
    assert not torch.allclose(minilm[0], minilm[1])

    teacher = flow_teacher(flow_teacher_dir)
    assert isinstance(teacher, SD3Teacher) and teacher.max_sequence_length == LENGTH
    assert teacher.sample_shape == (1, 8, 8)
    packed = teacher.encode_prompts(prompts)
    torch.testing.assert_close(packed[:, 1:], embeds)
    assert not packed[:, 0].any()


def test_the_teachers_euler_sampler_is_the_stock_pipelines(flow_teacher_dir) -> None:
    teacher = flow_teacher(flow_teacher_dir).eval()
    sigmas = sampler_sigmas(teacher, 4)
    times = flow_time(sigmas.double()).tolist()
    packed = teacher.encode_prompts(["a handwritten digit three", ""])
    cond = TextCondition(packed[:1], packed[1:])
    z = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    pipe = StableDiffusion3Pipeline.from_pretrained(flow_teacher_dir, vae=None)
    pipe.set_progress_bar_config(disable=True)
    with torch.no_grad():
        ours = ddim_trajectory(teacher, z, cond, sigmas, guidance=2.0)
        stock = pipe(
            prompt_embeds=packed[:1, 1:],
            pooled_prompt_embeds=packed[:1, 0, :16],
            negative_prompt_embeds=packed[1:, 1:],
            negative_pooled_prompt_embeds=packed[1:, 0, :16],
            sigmas=times[:-1],
            guidance_scale=2.0,
            latents=z,
            output_type="latent",
        ).images
    torch.testing.assert_close(ours, stock, rtol=1e-4, atol=1e-5)
    model = teacher_model(flow_teacher_dir, 4, 2.0)
    assert model.name.startswith("flow Euler 4 steps") and model.nfe == 4


def test_flow_soft_prompt_goes_through_the_stock_encoding(flow_teacher_dir) -> None:
    encoder = flow_prompt_encoder(flow_teacher_dir, flow_teacher(flow_teacher_dir))
    soft = FlowSoftPrompt(encoder, "a handwritten digit", 1, torch.Generator().manual_seed(0))
    seven = encoder.tokenizer.convert_tokens_to_ids("seven")
    with torch.no_grad():
        soft.tokens.copy_(encoder.text_encoder.get_input_embeddings().weight[seven][None])
        torch.testing.assert_close(soft(), encoder.encode(["a handwritten digit seven"]))


def test_flow_discrete_prompt_goes_through_the_stock_encoding(flow_teacher_dir) -> None:
    from sfd.eval.discrete_prompt import FlowVocabularyPrompt

    encoder = flow_prompt_encoder(flow_teacher_dir, flow_teacher(flow_teacher_dir))
    words = FlowVocabularyPrompt(encoder, "a handwritten digit", 1)
    seven = encoder.tokenizer.convert_tokens_to_ids("seven")
    one_hot = torch.zeros(1, encoder.text_encoder.get_input_embeddings().weight.shape[0])
    one_hot[0, seven] = 1
    wanted = encoder.encode(["a handwritten digit seven"])
    with torch.no_grad():
        torch.testing.assert_close(words.states(torch.tensor([[seven]])), wanted)
        torch.testing.assert_close(words.one_hot_states(one_hot), wanted)
