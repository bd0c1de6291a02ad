"""Adversarial SFD (docs/method.md §9): the inner attack, where its term goes, its checkpoint."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import pytest
import torch
from conftest import quiet_trainer, tiny_unet
from diffusers import DDPMScheduler
from gaussian import EmbeddedGaussian, GaussianClassNet, gaussian_teacher
from lightning.pytorch.callbacks import ModelCheckpoint
from text_fixtures import save_tiny_bert, save_tiny_text_teacher

from sfd.apps.data.captions import DIGITS_VOCABULARY
from sfd.core.adversarial import ADVERSARIAL_KEY
from sfd.core.adversarial_settings import AdversarialSettings, check_adversarial_settings
from sfd.core.attack_spaces import START_KEY, spread
from sfd.core.conditions import ClassConditions, PromptConditions
from sfd.core.generator import OneStepGenerator
from sfd.core.losses import LossTerms
from sfd.core.module import SFDModule
from sfd.core.sigma import LogUniformSigma, UniformTimestepSigma
from sfd.errors import SFDConfigError
from sfd.teachers import (
    EDMDenoiser,
    StableDiffusionDenoiser,
    StableDiffusionTeacher,
    VPUNetDenoiser,
)

SIGMAS = UniformTimestepSigma(20, 980)


def class_module(settings: AdversarialSettings, **kwargs) -> SFDModule:
    """A 10-class tiny-UNet module forgetting 0 (override 1), the attack on."""
    teacher = VPUNetDenoiser(tiny_unet(), DDPMScheduler(num_train_timesteps=1000))
    options = {"batch_size": 4, "ema_decay": None, "lambda_sg_forget": 1.0, "lambda_g_forget": 1.0}
    return SFDModule(
        teacher, ClassConditions(0, 1), SIGMAS, adversarial=settings, **{**options, **kwargs}
    )


@pytest.fixture(scope="module")
def text_setup(tmp_path_factory):
    """A tiny BERT text teacher folder and its digit prompt files (forget seven -> one)."""
    root = tmp_path_factory.mktemp("adversarial_text")
    teacher = save_tiny_text_teacher(root / "teacher", save_tiny_bert(root / "bert"))
    forget, remain = root / "forget.txt", root / "remain.txt"
    forget.write_text("\n".join(DIGITS_VOCABULARY.captions(7)))
    remain.write_text("\n".join(DIGITS_VOCABULARY.captions(3)))
    return teacher, forget, remain


def text_module(text_setup, settings: AdversarialSettings, **kwargs) -> SFDModule:
    teacher_dir, forget, remain = text_setup
    conditions = PromptConditions(
        DIGITS_VOCABULARY.concept_pairs(7, 1),
        forget_prompts=str(forget),
        remain_prompts=str(remain),
    )
    options = {"batch_size": 4, "ema_decay": None, **kwargs}
    return SFDModule(
        StableDiffusionTeacher(str(teacher_dir)),
        conditions,
        SIGMAS,
        adversarial=settings,
        **options,
    )


def clip_module(sd_dirs, settings: AdversarialSettings, **kwargs) -> SFDModule:
    """The tiny Stable Diffusion 1.x teacher (CLIPTextModel) forgetting the celebrity concepts."""
    from sd_fixtures import celebrity_conditions

    options = {"batch_size": 4, "ema_decay": None, **kwargs}
    teacher = StableDiffusionTeacher(str(sd_dirs["epsilon"]))
    return SFDModule(teacher, celebrity_conditions(), SIGMAS, adversarial=settings, **options)


@pytest.fixture(params=["bert", "clip"])
def prompt_module(request):
    """`(settings, **kwargs) -> SFDModule` on a BERT-style text teacher or an SD 1.x (CLIP) one."""
    if request.param == "bert":
        setup = request.getfixturevalue("text_setup")
        return lambda settings, **kwargs: text_module(setup, settings, **kwargs)
    dirs = request.getfixturevalue("sd_dirs")
    return lambda settings, **kwargs: clip_module(dirs, settings, **kwargs)


def mean_objective(module: SFDModule, state: dict, rng: torch.Generator) -> float:
    """The attack objective of `state`'s rows on the draws of `rng` (the oracle)."""
    attack = module.adversarial
    with torch.no_grad():
        learned = state[attack.space.learned]
        return float(attack.objective(module, state, learned, rng).mean())


def attacked_from_fresh_rows(module: SFDModule) -> dict:
    """Run iteration 0's attack on a fixed generator; return the rows it started from."""
    attack = module.adversarial
    module.generator.eval()
    generator = copy.deepcopy(module.generator.state_dict())
    start = attack.space.draw(attack.rows, module._stream(3), module.generator)
    attack.attack(module)  # iteration 0 draws afresh: the same rows as `start`
    rows = "forget" if "forget" in start else "prompt"
    assert torch.equal(attack.state[rows], start[rows])
    for key, value in module.generator.state_dict().items():  # the generator stayed fixed
        assert torch.equal(value, generator[key]), key
    return start


def test_class_embedding_attack_raises_its_objective(single_thread) -> None:
    """On held-out draws (z, σ, ε) the attacked vectors score higher than where they started."""
    module = class_module(AdversarialSettings(steps=15, share=1.0, lr=0.2, noise_levels=4))
    start = attacked_from_fresh_rows(module)
    for seed in (11, 12):
        before = mean_objective(module, start, torch.Generator().manual_seed(seed))
        after = mean_objective(
            module, module.adversarial.state, torch.Generator().manual_seed(seed)
        )
        assert after > before, (seed, before, after)


def test_the_pooled_attack_raises_its_objective_and_leaves_the_teacher(single_thread) -> None:
    """Several z per row, fixed σ levels, a pool of two blocks: on a fixed generator, iteration
    0 refines block 0 and leaves block 1 as drawn; the objective rises on held-out draws; the
    teacher's weights stay bit-identical."""
    settings = AdversarialSettings(
        steps=15, share=1.0, lr=0.2, noise_levels=2, pool=2, samples=2, sigmas=[0.4, 0.8, 1.6]
    )
    module = class_module(settings)
    teacher = copy.deepcopy(module.teacher.state_dict())
    attack = module.adversarial
    module.generator.eval()
    pool = attack.space.draw(2 * attack.rows, module._stream(3), module.generator)
    attack.attack(module)
    first, second = slice(0, attack.rows), slice(attack.rows, 2 * attack.rows)
    assert torch.equal(attack.state["forget"], pool["forget"])
    assert torch.equal(attack.state["embedding"][second], pool["embedding"][second])
    assert attack.state["adam_t"].tolist() == [15.0] * attack.rows + [0.0] * attack.rows
    block = {key: value[first] for key, value in pool.items()}
    refined = {key: value[first] for key, value in attack.state.items()}
    for seed in (11, 12):
        before = mean_objective(module, block, torch.Generator().manual_seed(seed))
        after = mean_objective(module, refined, torch.Generator().manual_seed(seed))
        assert after > before, (seed, before, after)
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher[key]), key


LINE = torch.tensor([1.5, -1.5, 4.5]).view(3, 1, 1, 1)  # forget 0, override 1, remain 2


def line_module(rivals: int) -> SFDModule:
    """Three one-pixel Gaussian classes on a line, the forget class between the override and a
    remain class, equally far from both. The generator has forgotten 0 (its table's row 0 is
    μ_1) and barely trains: its sample under a class vector v is v up to noise of scale ≈ 0.04,
    so where the attack's vectors end is where its samples are."""
    forgotten = LINE.clone()
    forgotten[0] = forgotten[1]
    optimizer = lambda p: torch.optim.SGD(p, lr=1e-12)  # noqa: E731
    attack = AdversarialSettings(steps=60, lr=0.2, share=1.0, samples=2, rivals=rivals)
    return SFDModule(
        EDMDenoiser(GaussianClassNet(LINE, 0.3), (1, 1, 1), num_classes=3),
        ClassConditions(0, 1),
        LogUniformSigma(0.1, 5.0),
        batch_size=4,
        ema_decay=None,
        generator=OneStepGenerator(EmbeddedGaussian(forgotten, 0.3), sigma_init=2.5),
        fake_score=EmbeddedGaussian(forgotten, 0.3),
        fake_optimizer=optimizer,
        generator_optimizer=optimizer,
        adversarial=attack,
    )


def test_the_attack_over_every_concept_finds_the_forget_class_not_a_remain_one(single_thread):
    """Oracle: the class means of an exact Gaussian teacher. The attack over every concept
    (forget, override, remain; `rivals`) ends at the forget class's mean, where the teacher's
    posterior of the forget class peaks; the forget-vs-override margin (`rivals` 0), linear in
    the sample, only moves away from the override, past the forget class to the remain class
    (what the diagnosis found on text digits: fives and threes for seven → one)."""
    ends = {}
    for rivals in (9, 0):
        module = line_module(rivals)
        module.generator.eval()
        attack = module.adversarial
        start = attack.space.draw(attack.rows, module._stream(3), module.generator)
        assert torch.equal(start["embedding"], LINE[[1] * 4].flatten(1))  # at the override
        attack.attack(module)
        ends[rivals] = attack.state["embedding"].flatten()
    nearest = (ends[9].view(-1, 1) - LINE.view(1, -1)).abs().argmin(1)
    assert nearest.tolist() == [0] * 4, ends[9]
    # Within the forget class's half-cell: the posterior is ≈ 1 on a plateau around μ_0, where
    # the ascent stops moving (ends near 2.0 here), far from the cell's edges at 0 and 3.
    assert (ends[9] - LINE[0].flatten()).abs().max() < 1.0, ends[9]
    # The pairwise margin's maximiser: nearer the remain class than the forget class.
    assert (ends[0] > 3.0).all(), ends[0]


def test_the_rivals_take_one_of_each_slice() -> None:
    """`spread`: one index per row from each of the equal slices (random, or the slice's
    middle), every item when there are no more items than picks."""
    rng = torch.Generator().manual_seed(0)
    picked = spread(9, 3, 200, rng, "cpu")
    for (low, high), index in zip([(0, 3), (3, 6), (6, 9)], picked, strict=True):
        assert set(index.tolist()) == set(range(low, high))  # 200 draws reach the whole slice
    assert [int(i[0]) for i in spread(9, 3, 2, None, "cpu")] == [1, 4, 7]
    assert [i.tolist() for i in spread(2, 3, 2, rng, "cpu")] == [[0, 0], [1, 1]]


def test_the_inner_steps_are_torch_adam_ascent(single_thread) -> None:
    """The pool's hand-kept Adam is torch.optim.Adam(maximize=True) on the same draws."""
    module = class_module(AdversarialSettings(steps=3, share=0.5, lr=0.1))
    attack = module.adversarial
    module.generator.eval()
    start = attack.space.draw(attack.rows, module._stream(3), module.generator)
    attack.attack(module)
    learned = start["embedding"].clone().requires_grad_(True)
    reference = torch.optim.Adam([learned], lr=0.1, maximize=True)
    rng = module._stream(4)
    for _ in range(3):
        (learned.grad,) = torch.autograd.grad(
            attack.objective(module, start, learned, rng).sum(), [learned]
        )
        reference.step()
    torch.testing.assert_close(attack.state["embedding"], learned.detach())
    adam = reference.state[learned]
    torch.testing.assert_close(attack.state["adam_m"], -adam["exp_avg"])  # maximize: of −grad
    torch.testing.assert_close(attack.state["adam_v"], adam["exp_avg_sq"])


def test_restarted_rows_are_fresh_draws_in_turn(monkeypatch, single_thread) -> None:
    """`restart_share`: between refreshes, each iteration starts ⌈share·K⌉ rows of the block,
    the positions after the previous visit's (cyclically), from the draw stream's fresh rows at
    that iteration (oracle: `space.draw` called by hand) with zero Adam moments; the other rows
    start from their vectors and moments. Without it every row keeps its own until the refresh."""
    step = {"now": 0}
    monkeypatch.setattr(SFDModule, "global_step", property(lambda self: step["now"]))
    cases = {0.5: [[2, 3], [0, 1], [2, 3]], 0.25: [[1], [2], [3]], 0.0: [[], [], []]}
    for share, restarted in cases.items():
        step["now"] = 0
        module = class_module(AdversarialSettings(steps=1, share=1.0, lr=0.1, restart_share=share))
        attack = module.adversarial
        module.generator.eval()
        starts = []
        objective = attack.objective
        monkeypatch.setattr(
            attack,
            "objective",
            lambda m, state, learned, rng, starts=starts, objective=objective: (
                starts.append(learned.detach().clone()) or objective(m, state, learned, rng)
            ),
        )
        attack.attack(module)  # iteration 0: the whole pool drawn afresh, one step each
        for positions, now in zip(restarted, (1, 2, 3), strict=True):
            step["now"] = now
            before = {key: value.clone() for key, value in attack.state.items()}
            fresh = attack.space.draw(len(positions), module._stream(3), module.generator)
            kept = [i for i in range(attack.rows) if i not in positions]
            attack.attack(module)
            start = starts[-1]
            assert torch.equal(start[positions], fresh["embedding"])
            assert torch.equal(start[kept], before["embedding"][kept])
            assert attack.state["adam_t"][positions].tolist() == [1.0] * len(positions)
            assert torch.equal(attack.state["adam_t"][kept], before["adam_t"][kept] + 1)
            for key in ("forget", "override"):
                assert torch.equal(attack.state[key][positions], fresh[key])
                assert torch.equal(attack.state[key][kept], before[key][kept])


def test_soft_prompt_attack_step_raises_its_objective(prompt_module, single_thread) -> None:
    """One inner step raises the objective on the draws it took (a random text teacher barely
    depends on the prompt, so held-out draws would measure noise; the class test does that)."""
    module = prompt_module(
        AdversarialSettings(steps=1, share=1.0, tokens=4, lr=1e-3, noise_levels=4)
    )
    start = attacked_from_fresh_rows(module)
    assert not torch.equal(module.adversarial.state["tokens"], start["tokens"])
    before = mean_objective(module, start, module._stream(4))  # iteration 0's attack draws
    after = mean_objective(module, module.adversarial.state, module._stream(4))
    assert after > before, (before, after)


def test_the_remain_anchor_is_the_remain_prompt_with_the_rows_tokens(text_setup, single_thread):
    """Oracle: with the learned vectors set to vocabulary rows, the anchored condition is the
    text encoder's encoding of the remain prompt followed by those words, and the teacher sees
    the remain prompt's own cached condition."""
    from sfd.teachers.text_encoder import encode_with, load_text_encoder

    module = text_module(text_setup, AdversarialSettings(steps=0, share=1.0, tokens=2))
    space, attack = module.adversarial.space, module.adversarial
    attack.attack(module)  # iteration 0: fresh rows, each with a remain prompt
    state = attack.state
    tokenizer, _ = load_text_encoder(module.teacher.pipeline, None)
    table = space.text_encoder.get_input_embeddings().weight.detach()
    ids = tokenizer("one two three four five six seven eight").input_ids[1:-1]
    words = torch.tensor(ids).view(4, 2)  # whole-word vocabulary ids, (K, 2)
    with torch.no_grad():
        anchored, remain = space.remain_conditions(state, table[words])
    prompts = [module.conditions.remain_prompts[i] for i in state["remain"].tolist()]
    texts = [
        tokenizer.decode(tokenizer(p).input_ids[1:-1] + row.tolist())
        for p, row in zip(prompts, words, strict=True)
    ]
    expected = encode_with(tokenizer, space.text_encoder, texts)  # the same tokens as text
    torch.testing.assert_close(anchored.prompt_embeds, expected, rtol=1e-4, atol=1e-5)
    cached = module.conditions.embeddings("cpu")["remain"][state["remain"]]
    assert torch.equal(remain.prompt_embeds, cached)
    assert set(state["remain"].tolist()) <= set(space.remain_attackable.tolist())


def test_remain_starts_put_the_last_rows_tokens_into_remain_prompts(text_setup, single_thread):
    """Oracle: with the learned vectors set to vocabulary rows and remain_starts 0.5 of 4 rows,
    rows 0-1 are the encoding of their forget prompt followed by those words, rows 2-3 that of
    their remain prompt followed by them; every row keeps its forget prompt's cached forget and
    override conditions (the objective's concept and the unlearning target). The rows, vectors
    and remain prompts are those drawn with remain_starts 0 (no extra draw)."""
    from sfd.teachers.text_encoder import encode_with, load_text_encoder

    states = {}
    for starts in (0.0, 0.5):
        settings = AdversarialSettings(steps=0, share=1.0, tokens=2, remain_starts=starts)
        module = text_module(text_setup, settings)
        module.adversarial.attack(module)  # iteration 0: a pool of 4 fresh rows
        states[starts] = module.adversarial.state
    assert START_KEY not in states[0.0]
    assert states[0.5].pop(START_KEY).tolist() == [False, False, True, True]
    assert states[0.0].keys() == states[0.5].keys()
    for key, value in states[0.0].items():
        assert torch.equal(value, states[0.5][key]), key
    space, state = module.adversarial.space, module.adversarial._with_starts(states[0.5])
    tokenizer, _ = load_text_encoder(module.teacher.pipeline, None)
    table = space.text_encoder.get_input_embeddings().weight.detach()
    ids = tokenizer("one two three four five six seven eight").input_ids[1:-1]
    words = torch.tensor(ids).view(4, 2)  # whole-word vocabulary ids, (4, 2)
    with torch.no_grad():
        attacked, forget, override = space.conditions(state, table[words])
    conditions = module.conditions
    prompts = [conditions.forget_prompts[i] for i in state["prompt"][:2].tolist()]
    prompts += [conditions.remain_prompts[i] for i in state["remain"][2:].tolist()]
    texts = [
        tokenizer.decode(tokenizer(p).input_ids[1:-1] + row.tolist())
        for p, row in zip(prompts, words, strict=True)
    ]
    expected = encode_with(tokenizer, space.text_encoder, texts)  # the same tokens as text
    torch.testing.assert_close(attacked.prompt_embeds, expected, rtol=1e-4, atol=1e-5)
    assert attacked.prompts == tuple(f"{p} <2 learned tokens>" for p in prompts)
    cached = conditions.embeddings("cpu")
    assert torch.equal(forget.prompt_embeds, cached["forget"][state["prompt"]])
    assert torch.equal(override.prompt_embeds, cached["override"][state["prompt"]])
    assert torch.equal(attacked.negative_embeds, cached["empty"].expand(4, -1, -1))


def test_remain_starts_on_every_row_attack_remain_prompts_only(text_setup, single_thread):
    """Oracle: with ⌈remain_starts·K⌉ = K (here remain_starts 1), no row starts from a forget
    prompt: each row is the encoding of its remain prompt followed by its words, and the inner
    attack runs on them (it had run the text encoder on zero forget rows and crashed)."""
    from sfd.teachers.text_encoder import encode_with, load_text_encoder

    settings = AdversarialSettings(steps=1, share=1.0, tokens=2, remain_starts=1.0)
    module = text_module(text_setup, settings)
    module.adversarial.attack(module)  # iteration 0: a pool of 4 fresh rows, one inner step
    space = module.adversarial.space
    state = module.adversarial._with_starts(module.adversarial.state)
    assert state[START_KEY].tolist() == [True] * 4
    tokenizer, _ = load_text_encoder(module.teacher.pipeline, None)
    table = space.text_encoder.get_input_embeddings().weight.detach()
    ids = tokenizer("one two three four five six seven eight").input_ids[1:-1]
    words = torch.tensor(ids).view(4, 2)
    with torch.no_grad():
        attacked, _, _ = space.conditions(state, table[words])
    prompts = [module.conditions.remain_prompts[i] for i in state["remain"].tolist()]
    texts = [
        tokenizer.decode(tokenizer(p).input_ids[1:-1] + row.tolist())
        for p, row in zip(prompts, words, strict=True)
    ]
    expected = encode_with(tokenizer, space.text_encoder, texts)
    torch.testing.assert_close(attacked.prompt_embeds, expected, rtol=1e-4, atol=1e-5)


def test_the_probe_conditions_cycle_the_pool_as_typed_prompts(text_setup, single_thread):
    """Oracle for the completion rule's attacked probe (docs/method.md §8): with the pool's
    vectors set to vocabulary rows, probe sample i is the encoding of pool row (i mod 4)'s forget
    prompt followed by those words, judged against that prompt's cached forget and override
    conditions; nothing before the first attack."""
    from sfd.teachers.text_encoder import encode_with, load_text_encoder

    module = text_module(text_setup, AdversarialSettings(steps=0, share=1.0, tokens=2))
    space, attack = module.adversarial.space, module.adversarial
    assert attack.probe_conditions(6, torch.device("cpu")) is None
    attack.attack(module)  # iteration 0: a pool of 4 fresh rows
    tokenizer, _ = load_text_encoder(module.teacher.pipeline, None)
    table = space.text_encoder.get_input_embeddings().weight.detach()
    ids = tokenizer("one two three four five six seven eight").input_ids[1:-1]
    words = torch.tensor(ids).view(4, 2)  # whole-word vocabulary ids, (4, 2)
    attack.state["tokens"] = table[words].clone()
    attacked, forget, rivals = attack.probe_conditions(6, torch.device("cpu"))
    rows = [i % 4 for i in range(6)]
    prompts = [module.conditions.forget_prompts[int(attack.state["prompt"][r])] for r in rows]
    texts = [
        tokenizer.decode(tokenizer(p).input_ids[1:-1] + words[r].tolist())
        for p, r in zip(prompts, rows, strict=True)
    ]
    expected = encode_with(tokenizer, space.text_encoder, texts)  # the same tokens as text
    torch.testing.assert_close(attacked.prompt_embeds, expected, rtol=1e-4, atol=1e-5)
    cached = module.conditions.embeddings("cpu")
    index = attack.state["prompt"][rows]
    assert torch.equal(forget.prompt_embeds, cached["forget"][index])
    override, *remain = rivals
    assert torch.equal(override.prompt_embeds, cached["override"][index])
    # Then the fixed remain rivals: the middle of each of 9 equal slices of the 16 remain prompts.
    assert len(module.conditions.remain_prompts) == 16
    for rival, prompt in zip(remain, [0, 1, 3, 5, 7, 8, 10, 12, 14], strict=True):
        assert torch.equal(rival.prompt_embeds, cached["remain"][[prompt] * 6])


def adversarial_terms(step: str, module: SFDModule, attacked: Any, terms: LossTerms) -> LossTerms:
    """`terms` plus adversarial SFD's terms of SFD step `step` ("fake" or "generator") on
    `attacked`, each term in its own network calls on the step's own stream."""
    compute = module._fake_dsms if step == "fake" else module._generator_terms
    draws = module.adversarial.draws(step, module, attacked)
    losses = [compute([draw])[0] for draw in draws]
    return module.adversarial.step_terms(step, module, attacked, terms, losses)


def test_the_remain_anchor_leaves_the_adversarial_draws_and_adds_a_remain_term(
    text_setup, single_thread
) -> None:
    """anchor=0 is adversarial SFD without it: the same rows, vectors and adversarial terms;
    anchor>0 adds its weighted term to the remain side only."""
    zero = torch.zeros(())
    results = {}
    for anchor in (0.0, 2.0):
        module = text_module(text_setup, AdversarialSettings(steps=1, share=0.5, anchor=anchor))
        attacked = module.adversarial.attack(module)
        with torch.no_grad():
            fake = adversarial_terms("fake", module, attacked, LossTerms(zero, zero, zero))
        results[anchor] = (module.adversarial.state, fake, attacked)
    (off_state, off, off_attacked), (on_state, on, on_attacked) = results[0.0], results[2.0]
    assert off_attacked.remain is None and on_attacked.remain is not None
    for key in ("prompt", "tokens"):
        assert torch.equal(off_state[key], on_state[key]), key
    assert torch.equal(off.forget, on.forget)  # the adversarial term: the same draws
    assert float(off.remain) == 0.0 and float(on.remain) > 0.0
    torch.testing.assert_close(on.total - off.total, on.remain)  # λ_sg_r = 1


def test_the_posterior_weight_is_the_teachers_reading_of_each_row(single_thread) -> None:
    """posterior_weight: each row's unlearning term times exp(objective) of its vectors at its
    last inner step (oracle: the objective of the freshly drawn rows on the attack's stream, and
    the unweighted per-row term on the generator step's stream), the attack itself unchanged."""
    settings = AdversarialSettings(steps=1, share=0.5, rivals=3, posterior_weight=True)
    module = class_module(settings)
    attack = module.adversarial
    start = attacked_from_fresh_rows(module)  # iteration 0's rows, before their one step
    attack.state = None  # draw them again below, as iteration 0 does
    with torch.no_grad():
        expected = attack.objective(module, start, start["embedding"], module._stream(4)).exp()
    attacked = attack.attack(module)
    torch.testing.assert_close(attacked.weights, expected)
    assert bool(((expected > 0) & (expected < 1)).all())
    zero = torch.zeros(())
    with torch.no_grad():
        per_row = module._generator_term(
            attacked.condition, attacked.override, module._stream(6), attacked.rows
        )
        terms = adversarial_terms("generator", module, attacked, LossTerms(zero, zero, zero))
    torch.testing.assert_close(terms.forget, settings.weight * (per_row * expected).mean())
    unweighted = class_module(replace(settings, posterior_weight=False))
    plain = unweighted.adversarial.attack(unweighted)
    assert plain.weights is None
    assert torch.equal(unweighted.adversarial.state["embedding"], attack.state["embedding"])


def test_a_class_embedding_condition_is_the_label_where_it_equals_the_label() -> None:
    """Feeding the table's own row as the learned vector changes nothing (the injection oracle)."""
    from sfd.core.conditions import ClassEmbeddingCondition

    denoiser = VPUNetDenoiser(tiny_unet(), DDPMScheduler(num_train_timesteps=1000)).eval()
    labels = torch.tensor([0, 3, 7])
    x, sigma = torch.randn(3, 1, 8, 8), torch.tensor([0.5, 2.0, 8.0])
    rows = denoiser.class_embedding_table()[labels].detach()
    same = ClassEmbeddingCondition(labels, rows, torch.ones(3, dtype=torch.bool))
    other = ClassEmbeddingCondition(labels, rows[[1, 2, 0]], torch.tensor([True, False, True]))
    with torch.no_grad():
        plain = denoiser(x, sigma, labels)
        assert torch.equal(denoiser(x, sigma, same), plain)
        swapped = denoiser(x, sigma, other)
        assert torch.equal(swapped[1], plain[1])  # inactive row: its label
        assert torch.equal(swapped[0], denoiser(x, sigma, torch.tensor([3, 3, 0]))[0])


def test_the_adversarial_term_reaches_the_generator_never_the_teacher(tmp_path, single_thread):
    module = class_module(AdversarialSettings(steps=2, share=0.5, refresh_every=2))
    teacher = copy.deepcopy(module.teacher.state_dict())
    attacked = module.adversarial.attack(module)
    zero = torch.zeros(())
    terms = adversarial_terms("generator", module, attacked, LossTerms(zero, zero, zero))
    terms.total.backward()
    grads = [p.grad for p in module.generator.parameters() if p.grad is not None]
    assert grads and any(bool(g.abs().sum() > 0) for g in grads)
    assert all(p.grad is None for p in module.teacher.parameters())
    assert not attacked.condition.class_embeds.requires_grad  # the vectors are data here
    module.zero_grad(set_to_none=True)
    quiet_trainer(tmp_path, steps=3).fit(module)
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher[key]), key


def test_off_by_default_and_plain_draws_unchanged(single_thread) -> None:
    """The attack draws from its own streams: the plain terms' draws are those of plain SFD."""
    plain = class_module(None)
    assert plain.adversarial is None and plain.hparams.adversarial is None
    attacked = class_module(AdversarialSettings(steps=1))
    for phase in (0, 1, 2):
        assert torch.equal(
            torch.rand(3, generator=plain._stream(phase)),
            torch.rand(3, generator=attacked._stream(phase)),
        )
    seeds = {int(torch.randint(2**62, (1,), generator=plain._stream(p))) for p in range(7)}
    assert len(seeds) == 7
    assert attacked.hparams.adversarial["steps"] == 1  # plain data in the checkpoint
    again = class_module(attacked.hparams.adversarial)  # as `load_from_checkpoint` passes it
    assert again.adversarial.settings == AdversarialSettings(steps=1)


@pytest.mark.parametrize(
    "settings",
    [
        AdversarialSettings(steps=2, share=0.5, refresh_every=3, lr=0.1),
        # The pool is drawn once (refresh after the run): the resumed run must carry its two
        # blocks, their vectors and their Adam moments through the checkpoint.
        AdversarialSettings(
            steps=2, share=0.5, refresh_every=10, lr=0.1, pool=2, samples=2, sigmas=[0.4, 1.6]
        ),
        # Fewer rivals than remain classes: a random one of each slice per step, from the
        # attack's stream.
        AdversarialSettings(steps=2, share=0.5, refresh_every=3, lr=0.1, rivals=3),
        # Rows weighted by the teacher's posterior at their last step (no state of its own).
        AdversarialSettings(steps=2, share=0.5, refresh_every=3, lr=0.1, posterior_weight=True),
        # A share of the pool drawn afresh each iteration (from the iteration: no state).
        AdversarialSettings(
            steps=2, share=0.5, refresh_every=10, lr=0.1, pool=2, restart_share=0.5
        ),
    ],
    ids=["rows", "pool", "rivals", "posterior", "restart"],
)
def test_resume_is_bit_exact_with_the_adversarial_state(tmp_path, settings, single_thread):

    def fit(root, steps, ckpt=None) -> SFDModule:
        module = class_module(settings)
        saver = ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=-1)
        trainer = quiet_trainer(root, steps=steps, enable_checkpointing=True, callbacks=[saver])
        trainer.fit(module, ckpt_path=ckpt, weights_only=True)
        return module

    straight = fit(tmp_path / "straight", 5)
    fit(tmp_path / "first", 2)
    [ckpt] = (tmp_path / "first").glob("*.ckpt")
    stored = torch.load(ckpt, weights_only=True)[ADVERSARIAL_KEY]
    assert set(stored) == {"forget", "override", "embedding", "adam_m", "adam_v", "adam_t"}
    assert len(stored["forget"]) == 2 * settings.pool
    # Two iterations of two steps: on the same rows, or one iteration on each block.
    expected = [4.0, 4.0] if settings.pool == 1 else [2.0] * 4
    assert stored["adam_t"].tolist() == expected
    resumed = fit(tmp_path / "resumed", 5, ckpt)
    for network in ("generator", "fake_score"):
        a, b = getattr(straight, network).state_dict(), getattr(resumed, network).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{network}.{key}"
    for key, value in straight.adversarial.state.items():
        assert torch.equal(value, resumed.adversarial.state[key]), key


@pytest.mark.slow
def test_remain_starts_resume_bit_exact_and_checkpoint_their_rows(
    text_setup, tmp_path, single_thread
):
    """A text run whose rows start from remain prompts resumes bit-exact; the checkpointed pool
    marks them, and a resume takes the marks of its own settings."""
    settings = AdversarialSettings(steps=1, share=0.5, refresh_every=3, tokens=2, remain_starts=0.5)

    def fit(root, steps, ckpt=None) -> SFDModule:
        module = text_module(text_setup, settings)
        saver = ModelCheckpoint(dirpath=root, every_n_train_steps=2, save_top_k=-1)
        trainer = quiet_trainer(root, steps=steps, enable_checkpointing=True, callbacks=[saver])
        trainer.fit(module, ckpt_path=ckpt, weights_only=True)
        return module

    straight = fit(tmp_path / "straight", 4)
    fit(tmp_path / "first", 2)
    [ckpt] = (tmp_path / "first").glob("*.ckpt")
    stored = torch.load(ckpt, weights_only=True)[ADVERSARIAL_KEY]
    assert stored[START_KEY].tolist() == [False, True]  # ⌈0.5·2⌉ of the 2 rows
    resumed = fit(tmp_path / "resumed", 4, ckpt)
    for network in ("generator", "fake_score"):
        a, b = getattr(straight, network).state_dict(), getattr(resumed, network).state_dict()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{network}.{key}"
    for key, value in straight.adversarial.state.items():
        assert torch.equal(value, resumed.adversarial.state[key]), key
    plain = text_module(text_setup, replace(settings, remain_starts=0.0)).adversarial
    plain.load_state_dict(stored, world_size=1)
    assert START_KEY not in plain.state


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"steps": -1}, "adversarial.steps=-1 must be an integer of at least 0"),
        ({"tokens": 0}, "adversarial.tokens=0 must be an integer of at least 1"),
        ({"tokens": -3}, "adversarial.tokens=-3"),
        ({"share": 1.5}, "adversarial.share=1.5 must be a finite number in [0, 1]"),
        ({"share": -0.1}, "adversarial.share=-0.1"),
        ({"restart_share": 1.5}, "adversarial.restart_share=1.5 must be a finite number in [0, 1]"),
        ({"restart_share": -0.5}, "adversarial.restart_share=-0.5"),
        ({"refresh_every": 0}, "adversarial.refresh_every=0"),
        ({"lr": 0.0}, "adversarial.lr=0.0"),
        ({"noise_levels": 0}, "adversarial.noise_levels=0"),
        ({"weight": -1.0}, "adversarial.weight=-1.0"),
        ({"anchor": -0.5}, "adversarial.anchor=-0.5"),
        ({"pool": 0}, "adversarial.pool=0 must be an integer of at least 1"),
        ({"samples": 0}, "adversarial.samples=0 must be an integer of at least 1"),
        ({"rivals": -1}, "adversarial.rivals=-1 must be an integer of at least 0"),
        ({"rivals": 2.5}, "adversarial.rivals=2.5 must be an integer"),
        ({"sigmas": []}, "adversarial.sigmas=[] must be a non-empty list"),
        ({"sigmas": [0.4, -1.0]}, "adversarial.sigmas=-1.0 must be a finite number in"),
        ({"posterior_weight": 1}, "adversarial.posterior_weight=1 must be true or false"),
        (
            {"posterior_weight": True, "rivals": 0},
            "adversarial.posterior_weight=True needs adversarial.rivals ≥ 1",
        ),
        ({"posterior_weight": True, "steps": 0}, "(got rivals 9, steps 0)"),
        ({"remain_starts": 1.5}, "adversarial.remain_starts=1.5 must be a finite number in [0, 1]"),
        ({"remain_starts": -0.1}, "adversarial.remain_starts=-0.1"),
    ],
)
def test_bad_settings_are_one_line(settings, fragment) -> None:
    with pytest.raises(SFDConfigError, match=fragment.replace("[", r"\[").replace(".", r"\.")):
        AdversarialSettings(**settings)
    with pytest.raises(SFDConfigError, match="model.adversarial"):
        check_adversarial_settings(
            {**AdversarialSettings().as_dict(), **settings}, "model.adversarial"
        )


def test_models_the_attack_cannot_reach_are_refused(text_setup) -> None:
    settings = AdversarialSettings()
    with pytest.raises(SFDConfigError, match="class-embedding table; EDMDenoiser has none"):
        SFDModule(
            gaussian_teacher(), ClassConditions(0, 1), LogUniformSigma(), adversarial=settings
        )
    teacher_dir, forget, remain = text_setup
    teacher = StableDiffusionTeacher(str(teacher_dir))
    conditions = PromptConditions(
        DIGITS_VOCABULARY.concept_pairs(7, 1),
        forget_prompts=str(forget),
        remain_prompts=str(remain),
    )
    conditions.bind(teacher)  # a denoiser rebuilt without its pipeline has no text encoder
    bare = StableDiffusionDenoiser(teacher.unet, teacher.scheduler_config)
    bare.encode_prompts = teacher.encode_prompts
    with pytest.raises(SFDConfigError, match="needs the teacher's text encoder"):
        SFDModule(bare, conditions, SIGMAS, adversarial=settings)
    with pytest.raises(
        SFDConfigError, match=r"tokens=40: even the shortest .* model_max_length=24"
    ):
        SFDModule(teacher, conditions, SIGMAS, adversarial=AdversarialSettings(tokens=40))
    long = SFDModule(teacher, conditions, SIGMAS, adversarial=AdversarialSettings(tokens=18))
    space = long.adversarial.space  # 24 positions: only prompts of at most 6 tokens are attacked
    assert 0 < len(space.attackable) < len(conditions.forget_prompts)
    assert bool((space.used[space.attackable] <= 6).all())
    drawn = space.draw(64, torch.Generator().manual_seed(0), long.generator)["prompt"]
    assert set(drawn.tolist()) <= set(space.attackable.tolist())
    with pytest.raises(SFDConfigError, match=r"remain_starts=0.5 needs prompt conditions"):
        class_module(AdversarialSettings(remain_starts=0.5))


def test_remain_starts_without_a_remain_prompt_with_room_are_one_line(text_setup, tmp_path):
    teacher_dir, forget, _ = text_setup
    remain = tmp_path / "remain.txt"  # 19 words: no room for 18 tokens in 24 positions
    remain.write_text(" ".join(["three"] * 19) + "\n")
    conditions = PromptConditions(
        DIGITS_VOCABULARY.concept_pairs(7, 1),
        forget_prompts=str(forget),
        remain_prompts=str(remain),
    )
    settings = AdversarialSettings(tokens=18, remain_starts=0.25)
    with pytest.raises(SFDConfigError, match=r"remain_starts=0.25: no remain prompt has room"):
        SFDModule(
            StableDiffusionTeacher(str(teacher_dir)), conditions, SIGMAS, adversarial=settings
        )


def test_the_preset_holds_the_defaults() -> None:
    import yaml
    from conftest import CONFIGS

    preset = yaml.safe_load((CONFIGS / "adversarial.yaml").read_text())
    assert preset == {"model": {"adversarial": AdversarialSettings().as_dict()}}


def test_sfd_fit_with_the_preset_checkpoints_the_attack(tiny_teacher_dir, tmp_path) -> None:
    from conftest import CONFIGS, fit_args

    from sfd.cli import main
    from sfd.training.cli import sfd_lightning_cli

    run = tmp_path / "run"
    extra = ("-c", str(CONFIGS / "adversarial.yaml"), "--trainer.max_steps", "10")
    cli = sfd_lightning_cli(fit_args(tiny_teacher_dir, run, *extra))
    assert cli.model.adversarial.rows == 2  # ⌈0.25 · batch 8⌉
    [last] = run.rglob("last.ckpt")
    stored = torch.load(last, weights_only=True)
    assert stored[ADVERSARIAL_KEY]["embedding"].shape == (2, 64)
    assert stored["hyper_parameters"]["adversarial"]["steps"] == AdversarialSettings().steps
    assert main(["export", str(last), str(tmp_path / "export")]) == 0  # ships as plain SFD


def test_the_demos_turn_it_on_for_sfd_only() -> None:
    from sfd.apps.demo_text.settings import TextDemoSettings
    from sfd.apps.harness.class_run import ADVERSARIAL_ARGS, ClassRunSettings
    from sfd.training.cli import parse_fit_config

    for settings in (ClassRunSettings(adversarial=True), TextDemoSettings(adversarial=True)):
        sfd = settings.sfd_command_line()
        assert " ".join(ADVERSARIAL_ARGS) in " ".join(sfd)
        assert " ".join(ADVERSARIAL_ARGS) not in " ".join(settings.sfd_command_line(stage="stage1"))
    stage2 = ClassRunSettings(adversarial=True).sfd_command_line(stage="stage2")
    assert " ".join(ADVERSARIAL_ARGS) in " ".join(stage2)  # the two-stage path's SFD stage
    parsed = parse_fit_config(ClassRunSettings(adversarial=True).sfd_command_line())
    assert parsed.model.adversarial.steps == AdversarialSettings().steps
    assert parse_fit_config(ClassRunSettings().sfd_command_line()).model.adversarial is None
    refined = ["--model.adversarial.steps", "5"]  # refines SFD; stage 1 stays plain distillation
    for settings in (
        ClassRunSettings(adversarial=True, sfd_args=refined),
        TextDemoSettings(adversarial=True, sfd_args=refined, family="sd3"),
    ):
        assert parse_fit_config(settings.sfd_command_line()).model.adversarial.steps == 5
        stage1 = parse_fit_config(settings.sfd_command_line(stage="stage1"))
        assert stage1.model.adversarial is None


def test_adversarial_overrides_do_not_reach_stage_1() -> None:
    """Stage 1 does not forget: `--model.adversarial.*` would only change its cache key."""
    from sfd.apps.demo_text.settings import TextDemoSettings
    from sfd.apps.harness.class_run import ClassRunSettings

    extra = ["--model.adversarial.weight", "0.25", "--model.adversarial.steps=4"]
    for kind in (ClassRunSettings, TextDemoSettings):
        keep = ["--trainer.max_steps", "10"]
        tuned = kind(adversarial=True, sfd_args=[*extra[:2], *keep, extra[2]])
        plain = kind(sfd_args=keep)
        assert tuned.sfd_command_line(stage="stage1") == plain.sfd_command_line(stage="stage1")
        stage2 = tuned.sfd_command_line()
        assert all(arg in stage2 for arg in [*extra, *keep])


FLOW_LENGTH = 32  # T5 tokens per prompt (the tiny T5 vocabulary spells names letter by letter)


def flow_module(flow_dirs, family: str, settings: AdversarialSettings, **kwargs) -> SFDModule:
    """A tiny SD3 (CLIP-L, CLIP-G, T5, pooled) or Flux (CLIP pooled, T5) teacher forgetting two
    celebrities, the soft-prompt attack on its sequence encoder (T5, `FLOW_LENGTH` tokens)."""
    from sd_fixtures import celebrity_conditions

    from sfd.core.sigma import LogitNormalTime
    from sfd.teachers import FluxTeacher, SD3Teacher

    loader = {"sd3": SD3Teacher, "flux": FluxTeacher}[family]
    teacher = loader(str(flow_dirs[family]), max_sequence_length=FLOW_LENGTH)
    options = {"batch_size": 4, "ema_decay": None, "t_init": 0.97, **kwargs}
    return SFDModule(
        teacher, celebrity_conditions(), LogitNormalTime(), adversarial=settings, **options
    )


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_flow_soft_prompt_is_the_stock_encoding_of_the_inserted_tokens(
    flow_dirs, family, single_thread
) -> None:
    """Oracle: learned vectors that are vocabulary rows give what the stock pipeline's
    `encode_prompt` gives for the prompt, its sequence-encoder rows replaced by that encoder's
    plain call (ids, no attention mask) on the prompt's ids with those token ids inserted
    before the end token; the other rows (CLIP, pooled) stay the plain prompt's."""
    module = flow_module(flow_dirs, family, AdversarialSettings(tokens=3, share=1.0))
    space, teacher = module.adversarial.space, module.teacher
    tokenizer_name, encoder_name = teacher.sequence_encoder
    stock = teacher.pipeline_class.from_pretrained(teacher.pipeline, transformer=None, vae=None)
    encoder = getattr(stock, encoder_name)
    picks = torch.tensor([[5, 9, 7], [12, 3, 20]])
    state = {"prompt": torch.tensor([0, 3])}
    learned = encoder.get_input_embeddings().weight[picks].detach()
    with torch.no_grad():
        attacked, forget, _ = space.conditions(state, learned)
    prompts = [module.conditions.forget_prompts[i] for i in (0, 3)]
    expected = teacher.encode_prompts(prompts)  # the stock encode_prompt, packed
    tokens = getattr(stock, tokenizer_name)(
        prompts, padding="max_length", max_length=FLOW_LENGTH, truncation=True, return_tensors="pt"
    )
    for row, ids in enumerate(tokens.input_ids):
        end = int(tokens.attention_mask[row].sum()) - 1
        inserted = torch.cat([ids[:end], picks[row], ids[end:]])[:FLOW_LENGTH]
        with torch.no_grad():
            t5 = encoder(inserted[None])[0].float()  # (1, L, D)
        sequence = attacked.prompt_embeds[row, -FLOW_LENGTH:]
        assert torch.allclose(sequence, t5[0], atol=1e-5)
        others = attacked.prompt_embeds[row, :-FLOW_LENGTH]
        assert torch.allclose(others, expected[row, :-FLOW_LENGTH], atol=1e-5)
    assert torch.equal(attacked.negative_embeds, forget.negative_embeds)
    assert attacked.prompts[0] == f"{prompts[0]} <3 learned tokens>"


def test_the_flow_soft_prompt_attack_raises_its_objective_and_spares_the_teacher(
    flow_dirs, tmp_path, single_thread
) -> None:
    """One inner step on a fixed generator raises the objective on the draws it took; then
    training with the attack changes the generator, never the SD3 teacher."""
    module = flow_module(
        flow_dirs, "sd3", AdversarialSettings(steps=1, share=1.0, tokens=4, lr=1e-2, noise_levels=4)
    )
    teacher = copy.deepcopy(module.teacher.state_dict())
    start = attacked_from_fresh_rows(module)
    assert not torch.equal(module.adversarial.state["tokens"], start["tokens"])
    before = mean_objective(module, start, module._stream(4))  # iteration 0's attack draws
    after = mean_objective(module, module.adversarial.state, module._stream(4))
    assert after > before, (before, after)
    generator = copy.deepcopy(module.generator.state_dict())
    quiet_trainer(tmp_path, steps=2).fit(module)
    assert any(not torch.equal(v, generator[k]) for k, v in module.generator.state_dict().items())
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher[key]), key


def test_flow_tokens_beyond_the_sequence_length_are_one_line(flow_dirs) -> None:
    with pytest.raises(
        SFDConfigError, match=r"tokens=30: even the shortest .* max_sequence_length=32"
    ):
        flow_module(flow_dirs, "sd3", AdversarialSettings(tokens=30))


def test_sfd_trains_with_the_attack_and_never_moves_the_teacher(
    prompt_module, tmp_path, single_thread
) -> None:
    """One adversarial SFD iteration through BERT-style and CLIP (SD 1.x) text encoders alike."""
    module = prompt_module(AdversarialSettings(steps=1, share=0.5, tokens=4), batch_size=2)
    teacher = copy.deepcopy(module.teacher.state_dict())
    encoder = module.adversarial.space.text_encoder
    encoder_weights = copy.deepcopy(encoder.state_dict())
    generator = copy.deepcopy(module.generator.state_dict())
    quiet_trainer(tmp_path, steps=1).fit(module)
    for key, value in module.teacher.state_dict().items():
        assert torch.equal(value, teacher[key]), key
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, encoder_weights[key]), key
    assert any(not torch.equal(v, generator[k]) for k, v in module.generator.state_dict().items())
    tokens = module.adversarial.state["tokens"]
    assert tokens.shape == (1, 4, encoder.get_input_embeddings().embedding_dim)
    assert bool(tokens.isfinite().all())


def test_an_sdxl_teacher_is_refused_in_one_line(sdxl_dirs) -> None:
    """SDXL packs two CLIP encoders' hidden states and a pooled vector: not yet attacked."""
    from sd_fixtures import celebrity_conditions

    from sfd.teachers import StableDiffusionXLTeacher

    teacher = StableDiffusionXLTeacher(str(sdxl_dirs["epsilon"]))
    with pytest.raises(SFDConfigError, match="does not give StableDiffusionXLTeacher's prompt"):
        SFDModule(
            teacher, celebrity_conditions(), SIGMAS, adversarial=AdversarialSettings(tokens=4)
        )


def test_non_finite_learned_vectors_stop_the_run_at_the_next_read_back(
    single_thread, monkeypatch
) -> None:
    from sfd.errors import NonFiniteError

    module = class_module(AdversarialSettings(steps=1, refresh_every=5))
    module.adversarial.attack(module)  # iteration 0: fresh rows
    module.adversarial.state["embedding"].fill_(float("nan"))
    monkeypatch.setattr(SFDModule, "global_step", property(lambda self: 1))
    module._raise_if_nonfinite()  # nothing recorded yet
    with pytest.raises(NonFiniteError, match="non-finite loss adversarial/learned vectors"):
        module.adversarial.attack(module)  # warm-started from the broken rows (no sync here)
        module._raise_if_nonfinite()


def test_with_a_shared_base_the_attack_reads_the_frozen_table(tmp_path, single_thread) -> None:
    """model.adapters: the generator is an adapter view of the teacher's network; the attack
    starts from the base's class embeddings, which stay bit-identical."""
    from sfd.teachers.adapter_settings import AdapterSettings

    module = class_module(AdversarialSettings(steps=1, share=0.5), adapters=AdapterSettings(rank=4))
    table = module.teacher.class_embedding_table().detach().clone()
    quiet_trainer(tmp_path, steps=2).fit(module)
    assert module.adversarial.state["embedding"].shape == (2, table.shape[1])
    assert torch.equal(module.generator.denoiser.class_embedding_table(), table)


def test_a_pool_without_adam_moments_is_refused_in_one_line() -> None:
    """A checkpoint written before the per-row Adam holds rows and vectors only: one clear line,
    never a KeyError at the first attack after resuming."""
    attacker = class_module(AdversarialSettings(steps=1, share=0.5)).adversarial
    old = {"forget": torch.zeros(2, dtype=torch.long), "embedding": torch.zeros(2, 4)}
    with pytest.raises(SFDConfigError, match="has no adam_m, adam_v, adam_t: it was written"):
        attacker.load_state_dict(old, world_size=1)


@pytest.mark.parametrize("path", ["class", "text", "text-override-guidance"])
def test_the_attacked_rows_in_the_forget_terms_calls_give_the_separate_calls_numbers(
    path, text_setup, single_thread
) -> None:
    """The training step computes the adversarial terms (and the remain anchor's) in the plain
    forget term's network calls; oracle: each term in its own calls on the same streams, as
    method §9 writes them (loss terms and the generator's gradients; float tolerance: one
    batched call against several). With an override guidance the unlearning rows (plain and
    attacked) take the teacher at it and the remain anchor at teacher_guidance."""
    if path == "class":
        settings = AdversarialSettings(steps=1, share=0.5, rivals=3, posterior_weight=True)
        module = class_module(settings)
    else:
        settings = AdversarialSettings(steps=1, tokens=2, share=0.5, anchor=0.5)
        guided = {"override_guidance": 2.5} if path == "text-override-guidance" else {}
        module = text_module(
            text_setup, settings, lambda_sg_forget=1.0, lambda_g_forget=1.0, **guided
        )
    path = path.split("-")[0]
    hp, attack = module.hparams, module.adversarial
    override = hp.override_guidance  # None: teacher_guidance's
    module.generator.eval()
    attacked = attack.attack(module)
    assert (attacked.remain is not None) == (path == "text")
    conds = module.conditions.sample(hp.batch_size, module._stream(0))
    rows = attacked.rows

    def separate(name: str) -> tuple[float, float, float]:
        """(remain, forget, total) of step `name` with every term in its own calls."""
        if name == "fake":
            rng, own = module._stream(1), module._stream(5)
            remain = module._fake_dsm(conds.remain, rng).mean()
            forget = module._fake_dsm(conds.forget, rng).mean()
            extra = module._fake_dsm(attacked.condition, own, rows).mean()
            anchor = module._fake_dsm(attacked.remain, own, rows).mean() if path == "text" else 0
            weights = (hp.lambda_sg_remain, hp.lambda_sg_forget)
        else:
            rng, own = module._stream(2), module._stream(6)
            remain = module._generator_term(conds.remain, conds.remain, rng).mean()
            forget = module._generator_term(conds.forget, conds.override, rng, None, override)
            forget = forget.mean()
            per_row = module._generator_term(
                attacked.condition, attacked.override, own, rows, override
            )
            if attacked.weights is not None:
                per_row = per_row * attacked.weights
            extra = per_row.mean()
            anchor = 0
            if path == "text":
                anchor = module._generator_term(
                    attacked.remain, attacked.remain_plain, own, rows
                ).mean()
            weights = (hp.lambda_g_remain, hp.lambda_g_forget)
        remain = remain + settings.anchor * anchor
        forget = forget + settings.weight * extra
        return remain, forget, weights[0] * remain + weights[1] * forget

    for name in ("fake", "generator"):
        results = []
        for merged in (True, False):
            module.zero_grad(set_to_none=True)
            if merged and name == "fake":
                terms = module.fake_score_losses(conds, module._stream(1), attacked)
                terms = (terms.remain, terms.forget, terms.total)
            elif merged:
                terms = module.generator_losses(conds, module._stream(2), attacked)
                terms = (terms.remain, terms.forget, terms.total)
            else:
                terms = separate(name)
            network = module.fake_score if name == "fake" else module.generator
            terms[2].backward()
            grads = torch.cat([p.grad.flatten() for p in network.parameters()])
            results.append((torch.stack([torch.as_tensor(t).float() for t in terms]), grads))
        (merged_terms, merged_grads), (own_terms, own_grads) = results
        torch.testing.assert_close(merged_terms, own_terms, rtol=1e-4, atol=1e-6)
        # Per-parameter sums over the batch in another order: tolerance relative to their scale.
        scale = float(own_grads.abs().max())
        torch.testing.assert_close(merged_grads, own_grads, rtol=1e-4, atol=1e-5 * scale)
        assert bool(own_grads.abs().sum() > 0)
