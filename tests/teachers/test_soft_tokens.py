"""Learned token embeddings inside any transformers text encoder (`insert_soft_tokens`).

The oracle: with the learned vectors set to the token-embedding rows of real vocabulary tokens,
the encoder's outputs (hidden states and pooled vector) are those of the prompt with these tokens
really typed before its end token, for CLIP (SD 1.x / 2.x, SDXL's second encoder, old and new
end-token conventions), BERT-style encoders and T5 (whose forward embeds with a separate
`encoder.embed_tokens` tied to the input table) alike.
"""

from __future__ import annotations

import copy

import pytest
import torch
from text_fixtures import save_tiny_bert

from sfd.errors import SFDConfigError
from sfd.teachers.text_encoder import (
    check_token_embeddings,
    hidden_states,
    insert_soft_tokens,
    learned_token_rows,
    tokenize,
)

PROMPTS = ["a photo of a cat", "a red car"]
WORDS = ["dog cat", "man woman"]  # really typed after each prompt: two tokens in every vocabulary


def tiny_clip(kind: str):
    """A tiny random CLIP text encoder and the real CLIP tokenizer (16 tokens) of one kind."""
    from sd_fixtures import clip_tokenizer_files
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    try:
        files = clip_tokenizer_files()
    except RuntimeError as error:
        pytest.skip(f"the CLIP BPE vocabulary is not cached and cannot be downloaded: {error}")
    # SD 1.x pads with the end token, SD 2.x / SDXL's second tokenizer with "!" (id 0).
    pad = {"pad_token": "!"} if kind in ("sd2", "sdxl_2") else {}
    tokenizer = CLIPTokenizer.from_pretrained(files, model_max_length=16, **pad)
    # "legacy": eos_token_id = 2 in the config (SD 1.5's own), pooled at the largest id.
    eos = {} if kind == "legacy" else {"eos_token_id": 49407, "pad_token_id": 49407}
    config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=8,
        **eos,
    )
    torch.manual_seed(0)
    model = CLIPTextModelWithProjection(config) if kind == "sdxl_2" else CLIPTextModel(config)
    return tokenizer, model.requires_grad_(False).eval()


def tiny_bert(tmp_path):
    from transformers import AutoTokenizer, BertModel

    folder = save_tiny_bert(tmp_path / "bert")
    encoder = BertModel.from_pretrained(folder).requires_grad_(False).eval()
    return AutoTokenizer.from_pretrained(folder), encoder


def tiny_t5():
    from flow_fixtures import t5_encoder, t5_tokenizer

    tokenizer = t5_tokenizer()
    tokenizer.model_max_length = 48  # the small vocabulary spells unknown words by letters
    torch.manual_seed(0)
    return tokenizer, t5_encoder().requires_grad_(False).eval()


@pytest.fixture(params=["sd1", "legacy", "sd2", "sdxl_2", "bert", "t5"])
def encoder(request, tmp_path):
    if request.param == "bert":
        return tiny_bert(tmp_path)
    if request.param == "t5":
        return tiny_t5()
    return tiny_clip(request.param)


def pooled(output) -> torch.Tensor:
    """The encoder's pooled vector (CLIP: at the end token; with projection: projected)."""
    if hasattr(output, "text_embeds"):
        return output.text_embeds
    if getattr(output, "pooler_output", None) is not None:
        return output.pooler_output
    return output.last_hidden_state  # T5: no pooled output


def typed(tokenizer, prompts: list[str], words: list[str]):
    """The prompts tokenised, the real tokens of `words` (B, n), and the prompts with them typed."""
    plain = tokenize(tokenizer, prompts)
    extra = [tokenizer(w, add_special_tokens=False).input_ids for w in words]
    text = [f"{p} {w}" for p, w in zip(prompts, words, strict=True)]
    real = tokenize(tokenizer, text)
    for row, ids in enumerate(extra):  # the typed prompt is the prompt's ids + these ids
        used = int(plain.attention_mask[row].sum())
        expected = plain.input_ids[row, : used - 1].tolist() + ids
        expected += plain.input_ids[row, used - 1 : used].tolist()
        assert real.input_ids[row, : used + len(ids)].tolist() == expected
    return plain, torch.tensor(extra), real


def test_real_tokens_as_learned_vectors_give_the_typed_prompt(encoder) -> None:
    tokenizer, model = encoder
    weights = copy.deepcopy(model.state_dict())
    plain, extra, real = typed(tokenizer, PROMPTS, WORDS)
    used = plain.attention_mask.sum(1)
    soft = model.get_input_embeddings().weight[extra].clone().requires_grad_(True)  # (B, n, D)

    got = insert_soft_tokens(model, plain.input_ids, used, soft)
    with torch.no_grad():
        expected = hidden_states(model, real.input_ids, real.attention_mask)
    assert torch.equal(got.detach(), expected), float((got - expected).abs().max())

    with learned_token_rows(model, plain.input_ids, used, soft) as (ids, mask):
        assert torch.equal(mask, real.attention_mask)
        got_pooled = pooled(model(input_ids=ids, attention_mask=mask))
    with torch.no_grad():
        expected_pooled = pooled(
            model(input_ids=real.input_ids, attention_mask=real.attention_mask)
        )
    assert torch.equal(got_pooled.detach(), expected_pooled)

    (got.square().sum() + got_pooled.square().sum()).backward()  # gradients reach the vectors
    assert soft.grad is not None and bool(soft.grad.isfinite().all())
    assert bool((soft.grad.abs().sum(-1) > 0).all())
    assert all(p.grad is None for p in model.parameters())
    for key, value in model.state_dict().items():  # the encoder is untouched
        assert torch.equal(value, weights[key]), key
    assert not any(m._forward_hooks for m in model.modules())  # the substitution is gone
    again = hidden_states(model, real.input_ids, real.attention_mask)
    assert torch.equal(again, expected)


def test_the_substitution_is_removed_when_the_encoder_fails(encoder) -> None:
    tokenizer, model = encoder
    plain = tokenize(tokenizer, PROMPTS)
    wrong = torch.zeros(len(PROMPTS), 2, 5)  # not the encoder's embedding width
    with pytest.raises(RuntimeError):
        insert_soft_tokens(model, plain.input_ids, plain.attention_mask.sum(1), wrong)
    assert not any(m._forward_hooks for m in model.modules())


def test_an_encoder_not_called_inside_the_block_is_an_error(encoder) -> None:
    """Leaving the block without the learned vectors entering any embedding is never silent."""
    tokenizer, model = encoder
    plain = tokenize(tokenizer, PROMPTS)
    soft = model.get_input_embeddings().weight[:2][None].expand(len(PROMPTS), -1, -1)
    with pytest.raises(RuntimeError, match="learned vectors were not used"):
        with learned_token_rows(model, plain.input_ids, plain.attention_mask.sum(1), soft):
            pass


def test_only_models_without_token_embeddings_are_refused(encoder) -> None:
    _, model = encoder
    check_token_embeddings(model, "the soft-prompt attack")  # CLIP and BERT alike
    with pytest.raises(SFDConfigError, match="needs a model with a text encoder; this one has"):
        check_token_embeddings(None, "the soft-prompt attack")
    with pytest.raises(SFDConfigError, match="token-embedding layer .* Linear has none"):
        check_token_embeddings(torch.nn.Linear(2, 2), "the soft-prompt attack")
