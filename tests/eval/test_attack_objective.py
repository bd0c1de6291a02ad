"""The attack objective's classifier: white-box (the judge) or transfer (an attacker classifier of
the judge's recipe and another seed). Oracles: hand-written cross-entropy through the attacker
classifier on the attack's own fixed draws, hand-counted agreement, bit-identical weights."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from text_fixtures import linear_classifier, save_tiny_bert, save_tiny_text_teacher, text_sensitive

from sfd.apps.harness.cache import data_fingerprint
from sfd.apps.harness.workspace import (
    attacker_classifier,
    attacker_for_judge,
    cached_attacker_classifier,
    cached_classifier,
    check_not_the_judge,
    source_fingerprint,
)
from sfd.core.conditions import TextCondition
from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import (
    ATTACKER_SEED_OFFSET,
    AttackBudget,
    ClassEmbeddingBudget,
    attack_objectives,
    suite_key,
)
from sfd.eval.attack_outcome import TRANSFER_NOTE, judged, objective_classifier
from sfd.eval.class_embedding import class_embedding_attack, replaced_embedding
from sfd.eval.evaluate import class_noise, one_step_sampler
from sfd.eval.soft_prompt import SoftPrompt, soft_prompt_attack
from sfd.eval.text_models import PromptEncoder, one_step_text_model, vae_decoder
from sfd.images import LabelledImages
from sfd.teachers import PretrainedVPTeacher, StableDiffusionTeacher
from sfd.teachers.stable_diffusion import load_text_encoder

SMALL = {"num_tokens": 2, "steps": 1, "lr": 0.1, "batch_size": 4, "eval_samples": 8, "restarts": 1}


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("objective")
    folder = save_tiny_text_teacher(root / "teacher", save_tiny_bert(root / "bert"))
    teacher = text_sensitive(StableDiffusionTeacher(str(folder)))
    encoder = PromptEncoder(*load_text_encoder(str(folder)))
    return folder, one_step_text_model(OneStepGenerator(teacher, 2.5), encoder, vae_decoder(None))


def first_gradients(monkeypatch) -> list[torch.Tensor]:
    """Record the gradients Adam's first step is given (the attack's objective on its draws)."""
    seen: list[torch.Tensor] = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        if not seen:
            seen.extend(p.grad.clone() for g in self.param_groups for p in g["params"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    return seen


def test_transfer_objective_is_cross_entropy_through_the_attacker(text_model, monkeypatch):
    folder, model = text_model
    judge, attacker = linear_classifier(1), linear_classifier(2)
    seen = first_gradients(monkeypatch)
    budget = AttackBudget(**SMALL)
    soft_prompt_attack(model, judge, "seven", 2, budget, attacker=attacker, objective="transfer")
    # The oracle: restart 0's start tokens and step 0's noise, CE written out by hand.
    tokenizer, encoder = load_text_encoder(str(folder))
    soft = SoftPrompt(tokenizer, encoder, "seven", 2, torch.Generator().manual_seed(budget.seed))
    z = class_noise(budget.batch_size, model.latent_shape, budget.seed + 2)
    empty = model.encoder.encode([""])
    embeds = soft().expand(len(z), -1, -1)
    images = model.images(z, TextCondition(embeds, empty.expand_as(embeds)))
    labels = torch.full((len(z),), 2)
    (through_attacker,) = torch.autograd.grad(F.cross_entropy(attacker(images), labels),
                                              soft.tokens, retain_graph=True)  # fmt: skip
    (through_judge,) = torch.autograd.grad(F.cross_entropy(judge(images), labels), soft.tokens)
    torch.testing.assert_close(seen[0], through_attacker)
    assert not torch.allclose(seen[0], through_judge, atol=1e-6)  # the option reached the objective


def test_white_box_objective_is_cross_entropy_through_the_judge(text_model, monkeypatch):
    folder, model = text_model
    judge, attacker = linear_classifier(1), linear_classifier(2)
    seen = first_gradients(monkeypatch)
    budget = AttackBudget(**SMALL)
    result = soft_prompt_attack(model, judge, "seven", 2, budget, attacker=attacker)
    tokenizer, encoder = load_text_encoder(str(folder))
    soft = SoftPrompt(tokenizer, encoder, "seven", 2, torch.Generator().manual_seed(budget.seed))
    z = class_noise(budget.batch_size, model.latent_shape, budget.seed + 2)
    empty = model.encoder.encode([""])
    embeds = soft().expand(len(z), -1, -1)
    images = model.images(z, TextCondition(embeds, empty.expand_as(embeds)))
    loss = F.cross_entropy(judge(images), torch.full((len(z),), 2))
    torch.testing.assert_close(seen[0], torch.autograd.grad(loss, soft.tokens)[0])
    assert result.objective_classifier == "white-box"
    assert result.objective.startswith("minimise CE(evaluation classifier(")
    assert TRANSFER_NOTE not in result.asr_definition
    assert result.second_classifier_success_rate is not None  # the attacker read the images


def test_transfer_record_names_its_objective_and_is_seeded(text_model):
    _, model = text_model
    judge, attacker = linear_classifier(1), linear_classifier(2)
    budget = AttackBudget(**{**SMALL, "steps": 3})
    runs = [
        soft_prompt_attack(
            model, judge, "seven", 2, budget, attacker=attacker, objective="transfer"
        ).to_dict()  # fmt: skip
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    record = runs[0]
    assert record["objective_classifier"] == "transfer"
    assert record["objective"].startswith("minimise CE(attacker classifier(")
    assert record["asr_definition"].endswith(TRANSFER_NOTE)
    assert "the evaluation classifier judges the result" in record["objective"]


def test_agreement_is_counted_on_the_judged_images():
    x = torch.linspace(-1, 1, 6 * 64).reshape(6, 1, 8, 8)
    judge, attacker = linear_classifier(1), linear_classifier(3)
    (success, probability), reading = judged(judge, attacker, x, 2)
    with torch.no_grad():
        hits, also = judge(x).argmax(1) == 2, attacker(x).argmax(1) == 2
        expected_probability = judge(x).softmax(1)[:, 2].mean().item()
    assert success == hits.float().mean().item()
    assert probability == pytest.approx(expected_probability)
    assert reading["second_classifier_success_rate"] == also.float().mean().item()
    expected = (hits & also).sum().item() / hits.sum().item() if hits.any() else None
    assert reading["agreement"] == expected
    assert judged(judge, None, x, 2)[1] == {}
    (_, _), same = judged(judge, linear_classifier(1), x, 2)  # a copy of the judge agrees fully
    assert same["second_classifier_success_rate"] == success
    assert same["agreement"] in (1.0, None)


def test_class_embedding_transfer_objective(tiny_teacher_dir, monkeypatch):
    generator = OneStepGenerator(PretrainedVPTeacher(str(tiny_teacher_dir)))
    sampler = one_step_sampler(generator)
    judge, attacker = linear_classifier(1), linear_classifier(2)
    seen = first_gradients(monkeypatch)
    budget = ClassEmbeddingBudget(steps=1, batch_size=4, eval_samples=8, restarts=1)
    result = class_embedding_attack(sampler, judge, 2, budget, attacker=attacker,
                                    objective="transfer")  # fmt: skip
    row = generator.denoiser.class_embedding_table().detach()[2].clone().requires_grad_(True)
    z = class_noise(budget.batch_size, sampler.sample_shape, budget.seed + 2)
    labels = torch.full((len(z),), 2)
    loss = F.cross_entropy(attacker(generator(z, replaced_embedding(labels, row))), labels)
    torch.testing.assert_close(seen[0], torch.autograd.grad(loss, row)[0])
    assert result.objective_classifier == "transfer" and TRANSFER_NOTE in result.asr_definition
    assert "learned class embedding" in result.asr_definition


def test_bad_objectives_are_refused():
    judge = linear_classifier(1)
    with pytest.raises(SFDConfigError, match="needs an attacker classifier"):
        objective_classifier(judge, None, "transfer")
    with pytest.raises(SFDConfigError, match="is the evaluation classifier itself"):
        objective_classifier(judge, judge, "white-box")
    with pytest.raises(SFDConfigError, match="attack objective 'grey-box'"):
        objective_classifier(judge, None, "grey-box")
    with pytest.raises(SFDConfigError, match="--attack-objective 'both-ways'"):
        attack_objectives("both-ways")
    assert attack_objectives("both") == ("white-box", "transfer")
    assert suite_key("soft", "white-box") == "soft" and suite_key("soft", "transfer") == (
        "soft-transfer"
    )


def tiny_split() -> tuple[LabelledImages, LabelledImages]:
    """Two classes of 8×8 bars (rows against columns), 24 training and 8 held-out images."""
    images = torch.zeros(32, 1, 8, 8, dtype=torch.uint8)
    labels = torch.arange(32) % 2
    for i in range(32):
        if labels[i] == 0:
            images[i, 0, i % 8, :] = 255
        else:
            images[i, 0, :, i % 8] = 255
    data = LabelledImages(images, labels, 2)
    return data.subset(torch.arange(32) < 24), data.subset(torch.arange(32) >= 24)


def test_attacker_classifier_is_another_seed_of_the_judges_recipe(tmp_path):
    train, heldout = tiny_split()
    split = {"data": "bars", "heldout_fraction": 0.25, "split_seed": 0}
    given = {"seed": 0, "max_steps": 3, "width": 4, "feature_dim": 4, "batch_size": 8}
    judge, judge_dir, *_ = cached_classifier(tmp_path, "classifier", split, train, heldout, given,
                                             False)  # fmt: skip
    attacker, attacker_dir, _, reused, recipe = cached_attacker_classifier(
        tmp_path, "classifier", split, train, heldout, given, False
    )
    assert not reused and attacker_dir != judge_dir
    assert attacker.config == judge.config  # the same architecture
    assert recipe["seed"] == given["seed"] + ATTACKER_SEED_OFFSET
    judge_recipe = json.loads((judge_dir / "cache.json").read_text())
    assert {k: v for k, v in recipe.items() if k != "seed"} == {
        k: v for k, v in judge_recipe.items() if k != "seed"
    }
    mine, theirs = judge.state_dict(), attacker.state_dict()
    assert any(not torch.equal(mine[k], theirs[k]) for k in mine)  # other weights
    check_not_the_judge(judge, attacker)
    with pytest.raises(SFDConfigError, match="has the evaluation classifier's weights"):
        check_not_the_judge(judge, cached_classifier(tmp_path, "classifier", split, train,
                                                     heldout, given, False)[0])  # fmt: skip
    # From the judge's folder alone (its recorded recipe): the same cache entry, reused.
    again, again_dir, _, reused, _ = attacker_for_judge(
        tmp_path, "classifier", judge_dir, train, heldout, {"split_seed": 0}, False
    )
    assert reused and again_dir == attacker_dir
    assert all(torch.equal(v, theirs[k]) for k, v in again.state_dict().items())
    with pytest.raises(SFDConfigError, match="split_seed=0"):
        attacker_for_judge(tmp_path, "classifier", judge_dir, train, heldout, {"split_seed": 3},
                           False)  # fmt: skip


def test_attacker_of_a_judge_trained_on_other_data_is_refused(tmp_path):
    """The attacker trains on this evaluation's data but is keyed on the judge's record: another
    --data (of any kind, not only digits) must be refused, not trained and filed under the
    judge's data."""
    train, heldout = tiny_split()
    data, other = tmp_path / "data.npz", tmp_path / "other.npz"
    data.write_bytes(b"the judge's data")
    other.write_bytes(b"another data set")
    cache = tmp_path / "cache"
    split = {"data": data_fingerprint(str(data)), "heldout_fraction": 0.25, "split_seed": 0}
    given = {"seed": 0, "max_steps": 3, "width": 4, "feature_dim": 4, "batch_size": 8}
    judge, judge_dir, *_ = cached_classifier(cache, "classifier", split, train, heldout, given,
                                             False)  # fmt: skip
    this = {"heldout_fraction": 0.25, "split_seed": 0}
    with pytest.raises(SFDConfigError, match="was trained on the data 'data.npz/sha256-"):
        attacker_classifier(judge, judge_dir, None, cache, "classifier", str(other), train,
                            heldout, this, False)  # fmt: skip
    assert [p.name for p in cache.iterdir()] == [judge_dir.name]  # nothing trained
    _, entry = attacker_classifier(judge, judge_dir, None, cache, "classifier", str(data), train,
                                   heldout, this, False)  # fmt: skip
    assert not entry["reused_from_cache"] and entry["recipe"]["seed"] == ATTACKER_SEED_OFFSET
    assert source_fingerprint("classifier", str(data)) == split["data"]


@pytest.fixture(scope="module")
def digits_judges(tmp_path_factory):
    """Evaluation classifiers of the digits split (0.2, seed 0) with their cache records, as the
    demos leave them: {kind: folder}, for `sfd eval` ("classifier") and `sfd eval-text`."""
    from sfd.apps.data.images import DIGITS, load_images, train_heldout_split

    root = tmp_path_factory.mktemp("judges")
    train, heldout = train_heldout_split(load_images(DIGITS), 0.2, 0)
    split = {"data": data_fingerprint(DIGITS), "heldout_fraction": 0.2, "split_seed": 0}
    given = {"seed": 0, "max_steps": 2, "width": 4, "feature_dim": 4, "batch_size": 8}
    return {kind: cached_classifier(root, kind, split, train, heldout, given, False)[1]
            for kind in ("classifier", "text-classifier")}  # fmt: skip


def test_eval_refuses_before_training_the_attacker(digits_judges, tiny_teacher_dir, tmp_path):
    """A refusal of `sfd eval`'s own inputs (here too few revival images) comes before the
    attacker classifier of a transfer attack is trained: its cache stays empty."""
    from sfd.cli import main

    cache = tmp_path / "cache"
    code = main(["eval", str(tiny_teacher_dir), "--classifier", str(digits_judges["classifier"]),
                 "--forget", "0", "--num-per-class", "2", "--attack", "--attack-steps", "1",
                 "--attack-objective", "transfer", "--cache", str(cache), "--revival", "1",
                 "--revival-images", "100000", "--no-progress"])  # fmt: skip
    assert code == 2
    assert not cache.exists() or not any(cache.iterdir())


def test_eval_text_refuses_before_training_the_attacker(digits_judges, tmp_path):
    """`sfd eval-text`: a bad prompt file is refused before the attacker classifier trains."""
    from sfd.apps.harness.concept_run import ConceptEvalSettings, run_concept_evaluation

    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 seven\n".encode("latin-1"))
    cache = tmp_path / "cache"
    model = tmp_path / "never-loaded"  # a text pipeline's index only: its weights are never read
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    settings = ConceptEvalSettings(
        model=model, classifier=digits_judges["text-classifier"],
        forget_prompts=latin1, remain_prompts=latin1, forget=7, override=1,
        output_dir=tmp_path / "out", attacks={"soft": AttackBudget(**SMALL)},
        attack_objective="transfer", cache=cache, progress=False,
    )  # fmt: skip
    with pytest.raises(SFDConfigError, match="prompt file"):
        run_concept_evaluation(settings)
    assert not cache.exists() or not any(cache.iterdir())
