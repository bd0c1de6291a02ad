"""The soft-prompt attack raises the forget-class probability of a model that has not forgotten."""

from __future__ import annotations

import pytest
import torch
from text_fixtures import linear_classifier, save_tiny_bert, save_tiny_text_teacher, text_sensitive

from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.eval.attacks import ATTACKS, DiscreteAttackBudget, attack_for
from sfd.eval.discrete_prompt import discrete_prompt_attack
from sfd.eval.soft_prompt import AttackBudget, SoftPrompt, soft_prompt_attack
from sfd.eval.text_models import PromptEncoder, ddim_text_model, one_step_text_model, vae_decoder
from sfd.teachers import StableDiffusionTeacher
from sfd.teachers.stable_diffusion import encode_with, load_text_encoder


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack")
    return save_tiny_text_teacher(root / "teacher", save_tiny_bert(root / "bert"))


def test_soft_prompt_without_learning_is_the_prompt_plus_tokens(teacher_dir):
    tokenizer, encoder = load_text_encoder(str(teacher_dir))
    soft = SoftPrompt(tokenizer, encoder, "the number 7", 2, torch.Generator().manual_seed(0))
    table = encoder.get_input_embeddings().weight
    ids = tokenizer("the number 7").input_ids  # [CLS] the number 7 [SEP]
    chosen = [int((table - t).abs().sum(1).argmin()) for t in soft.tokens.detach()]
    text = tokenizer.decode(ids[1:-1] + chosen)
    expected = encode_with(tokenizer, encoder, [text])  # the oracle: the same tokens as text
    with torch.no_grad():
        got = soft()
    assert tokenizer(text).input_ids == ids[:-1] + chosen + ids[-1:]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["one-step", "ddim"])
def test_attack_raises_the_target_probability(teacher_dir, sampler, single_thread):
    teacher = text_sensitive(StableDiffusionTeacher(str(teacher_dir)))
    encoder = PromptEncoder(*load_text_encoder(str(teacher_dir)))
    if sampler == "one-step":
        model = one_step_text_model(OneStepGenerator(teacher, 2.5), encoder, vae_decoder(None))
    else:
        model = ddim_text_model(teacher, 2, encoder, vae_decoder(None), guidance_scale=2.0)
    budget = AttackBudget(num_tokens=3, steps=15, lr=0.2, batch_size=8, eval_samples=32, restarts=1)
    result = soft_prompt_attack(model, linear_classifier(), "the number 7", 2, budget)
    assert 0.0 <= result.success_rate <= 1.0 and len(result.losses) == 15
    assert result.target_probability > result.target_probability_without_attack + 0.01
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    assert result.budget["steps"] == 15


def test_attack_budget_and_prompt_length_are_checked(teacher_dir):
    with pytest.raises(SFDConfigError, match="steps=0"):
        AttackBudget(steps=0)
    tokenizer, encoder = load_text_encoder(str(teacher_dir))
    with pytest.raises(SFDConfigError, match="model_max_length"):
        SoftPrompt(tokenizer, encoder, "seven", 30, torch.Generator())


def test_attack_registry() -> None:
    assert ATTACKS["soft"].run is soft_prompt_attack
    assert ATTACKS["soft"].budget is AttackBudget
    assert attack_for(AttackBudget()) is ATTACKS["soft"]
    assert ATTACKS["discrete"].run is discrete_prompt_attack
    assert attack_for(DiscreteAttackBudget()) is ATTACKS["discrete"]
    for name, attack in ATTACKS.items():
        attack.budget()  # every budget has defaults (the command line's)
        assert name.isidentifier()
    with pytest.raises(SFDConfigError, match="no attack spends a dict"):
        attack_for({})


def test_restarts_keep_the_first_start_and_report_the_lowest_selection_loss(teacher_dir):
    teacher = text_sensitive(StableDiffusionTeacher(str(teacher_dir)))
    encoder = PromptEncoder(*load_text_encoder(str(teacher_dir)))
    model = one_step_text_model(OneStepGenerator(teacher, 2.5), encoder, vae_decoder(None))
    small = {"num_tokens": 2, "steps": 3, "lr": 0.2, "batch_size": 4, "eval_samples": 8}
    one = soft_prompt_attack(
        model, linear_classifier(), "seven", 2, AttackBudget(**small, restarts=1)
    )
    three = soft_prompt_attack(
        model, linear_classifier(), "seven", 2, AttackBudget(**small, restarts=3)
    )
    assert three.restart_losses[0] == one.restart_losses[0]  # restart 0 is the 1-restart run
    assert len(three.restart_losses) == 3
    assert three.restart_losses[three.chosen_restart] == min(three.restart_losses)
    assert "evaluation classifier" in three.objective and "held-out noise" in three.asr_definition
