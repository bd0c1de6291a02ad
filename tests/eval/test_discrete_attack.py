"""The discrete prompt attack: only whole words of the model's own tokenizer go in, and it lowers
its objective against the unattacked prompt on a fixed tiny model."""

from __future__ import annotations

import pytest
import torch
from text_fixtures import linear_classifier, save_tiny_bert, save_tiny_text_teacher, text_sensitive

from sfd.core.conditions import TextCondition
from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import DiscreteAttackBudget
from sfd.eval.attack_outcome import attack_loss, selection_noise
from sfd.eval.discrete_prompt import (
    VocabularyPrompt,
    attacked_text,
    discrete_prompt_attack,
    whole_word_ids,
)
from sfd.eval.text_models import PromptEncoder, one_step_text_model, vae_decoder
from sfd.teachers import StableDiffusionTeacher
from sfd.teachers.stable_diffusion import encode_with, load_text_encoder

PROMPT = "the number 7"


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("discrete")
    return save_tiny_text_teacher(root / "teacher", save_tiny_bert(root / "bert"))


@pytest.fixture(scope="module")
def model(teacher_dir):
    teacher = text_sensitive(StableDiffusionTeacher(str(teacher_dir)))
    encoder = PromptEncoder(*load_text_encoder(str(teacher_dir)))
    return one_step_text_model(OneStepGenerator(teacher, 2.5), encoder, vae_decoder(None))


def test_whole_words_are_real_ids_that_tokenise_back_to_themselves(teacher_dir):
    tokenizer, _ = load_text_encoder(str(teacher_dir))
    allowed = whole_word_ids(tokenizer).tolist()
    assert allowed and set(allowed).isdisjoint(tokenizer.all_special_ids)
    assert all(0 <= i < len(tokenizer) for i in allowed)
    vocab = tokenizer.get_vocab()
    assert vocab["seven"] in allowed and vocab["[CLS]"] not in allowed
    assert all(not tokenizer.convert_ids_to_tokens(i).startswith("##") for i in allowed)


def test_id_path_and_one_hot_path_are_the_typed_text(teacher_dir):
    tokenizer, encoder = load_text_encoder(str(teacher_dir))
    words = VocabularyPrompt(tokenizer, encoder, PROMPT, 2)
    vocab = tokenizer.get_vocab()
    chosen = torch.tensor([[vocab["seven"], vocab["ink"]]])
    expected = encode_with(tokenizer, encoder, [attacked_text(tokenizer, PROMPT, [*chosen[0]])])
    one_hot = torch.nn.functional.one_hot(chosen[0], encoder.get_input_embeddings().num_embeddings)
    with torch.no_grad():
        torch.testing.assert_close(words.states(chosen), expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(words.one_hot_states(one_hot.float()), expected, rtol=1e-4,
                                   atol=1e-5)  # fmt: skip


def test_attack_emits_vocabulary_tokens_and_lowers_its_objective(model, single_thread):
    budget = DiscreteAttackBudget(num_tokens=3, steps=12, top_k=8, candidates=6, batch_size=6,
                                  eval_samples=24, restarts=2)  # fmt: skip
    target = 2
    result = discrete_prompt_attack(model, linear_classifier(), PROMPT, target, budget)
    tokenizer = model.encoder.tokenizer
    allowed = set(whole_word_ids(tokenizer).tolist())
    assert len(result.token_ids) == 3 and set(result.token_ids) <= allowed
    assert result.attacked_prompt == attacked_text(tokenizer, PROMPT, result.token_ids)
    plain_ids = tokenizer(PROMPT).input_ids
    assert tokenizer(result.attacked_prompt).input_ids == (
        plain_ids[:-1] + result.token_ids + plain_ids[-1:]
    )  # the text re-tokenises to the prompt's ids plus exactly the chosen ids
    # the oracle: the objective of the unattacked prompt on the same selection noise
    z = selection_noise(model, budget, "cpu")
    with torch.no_grad():
        plain = model.encoder.condition([PROMPT])
        unattacked = attack_loss(
            model, linear_classifier(), TextCondition(plain.prompt_embeds.expand(len(z), -1, -1),
                                                      plain.negative_embeds.expand(len(z), -1, -1)),
            z, target).item()  # fmt: skip
    assert min(result.restart_losses) < unattacked
    assert result.restart_losses[result.chosen_restart] == min(result.restart_losses)
    assert result.target_probability > result.target_probability_without_attack
    assert result.budget["top_k"] == 8 and "vocabulary tokens" in result.objective


def test_discrete_budget_and_prompt_length_are_checked(teacher_dir):
    for field in ("num_tokens", "steps", "top_k", "candidates", "restarts"):
        with pytest.raises(SFDConfigError, match=f"{field}=-1"):
            DiscreteAttackBudget(**{field: -1})
    tokenizer, encoder = load_text_encoder(str(teacher_dir))
    with pytest.raises(SFDConfigError, match="model_max_length"):
        VocabularyPrompt(tokenizer, encoder, "seven", 30)
