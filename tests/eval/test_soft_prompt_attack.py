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


@pytest.fixture(scope="module")
def clip_teacher_dir(tmp_path_factory):
    """The same teacher on a Stable Diffusion 1.x text encoder (`CLIPTextModel`, CLIP tokenizer)."""
    from sd_fixtures import save_tiny_clip_text

    root = tmp_path_factory.mktemp("clip_attack")
    try:
        encoder = save_tiny_clip_text(root / "clip")
    except RuntimeError as error:
        pytest.skip(f"the CLIP BPE vocabulary is not cached and cannot be downloaded: {error}")
    return save_tiny_text_teacher(root / "teacher", encoder)


@pytest.fixture(params=["bert", "clip"])
def any_teacher_dir(request):
    return request.getfixturevalue("teacher_dir" if request.param == "bert" else "clip_teacher_dir")


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
def test_attack_raises_the_target_probability(any_teacher_dir, sampler, single_thread):
    teacher = text_sensitive(StableDiffusionTeacher(str(any_teacher_dir)))
    encoder = PromptEncoder(*load_text_encoder(str(any_teacher_dir)))
    if sampler == "one-step":
        model = one_step_text_model(OneStepGenerator(teacher, 2.5), encoder, vae_decoder(None))
    else:
        model = ddim_text_model(teacher, 2, encoder, vae_decoder(None), guidance_scale=2.0)
    budget = AttackBudget(num_tokens=3, steps=15, lr=0.2, batch_size=8, eval_samples=32, restarts=1)
    result = soft_prompt_attack(model, linear_classifier(), "the number 7", 2, budget)
    assert 0.0 <= result.success_rate <= 1.0 and len(result.losses) == 15
    assert sum(result.losses[-3:]) < sum(result.losses[:3])
    if "clip" not in str(any_teacher_dir):
        # BERT masks padding: 3 tokens among 8 attended ones beat the plain prompt within 15
        # steps. CLIP attends all its positions and its random start tokens move them all (the
        # first loss is far above the plain prompt's), so 15 steps only recover; the oracle of
        # its insertion is tests/teachers/test_soft_tokens.py.
        assert result.target_probability > result.target_probability_without_attack + 0.01
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


def test_eval_text_attacks_a_clip_teacher_end_to_end(clip_teacher_dir, tmp_path, single_thread):
    """`sfd eval-text --attack` on a teacher whose text encoder is CLIP's (no inputs_embeds):
    both prompt attacks run and report, nothing is refused."""
    import json

    from sfd.apps.data.captions import DIGITS_VOCABULARY, write_labelled
    from sfd.cli import main
    from sfd.eval.classifier import Classifier, save_classifier

    torch.manual_seed(0)
    save_classifier(Classifier(1, 10, (8, 8), width=8, feature_dim=8), tmp_path / "clf")
    forget = tmp_path / "forget.txt"
    forget.write_text("\n".join(DIGITS_VOCABULARY.captions(7)[:2]))
    remain = tmp_path / "remain.csv"
    write_labelled(remain, DIGITS_VOCABULARY.captions(3)[:2], [3, 3])
    out = tmp_path / "eval"
    code = main(["eval-text", str(clip_teacher_dir), "--classifier", str(tmp_path / "clf"),
                 "--forget-prompts", str(forget), "--remain-prompts", str(remain), "--forget", "7",
                 "--override", "1", "--neighbours", "3", "--forget-images", "2", "--remain-per-class", "2",
                 "--ddim-steps", "1", "--attack", "--attack-steps", "2", "--attack-batch", "2",
                 "--attack-eval-samples", "2", "--attack-restarts", "1", "--attack-tokens", "2",
                 "--attack-top-k", "2", "--attack-candidates", "2", "--attack-ddim-steps", "1",
                 "--output-dir", str(out), "--no-progress"])  # fmt: skip
    assert code == 0
    attacks = json.loads((out / "metrics.json").read_text())["attacks"]
    assert len(attacks["soft"]["per_prompt"][0]["losses"]) == 2
    assert 0.0 <= attacks["soft"]["success_rate"] <= 1.0
    discrete = attacks["discrete"]["per_prompt"][0]
    assert discrete["attacked_prompt"].startswith(discrete["prompt"])
