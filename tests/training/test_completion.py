"""The completion rule `UntilForgotten` on fixed tiny models: an analytic Gaussian teacher, and
generators that have or have not forgotten (learning rate so small they do not move)."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, fit_args, quiet_trainer, save_tiny_teacher
from gaussian import EmbeddedGaussian, GaussianClassNet
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from sfd.core.adversarial_settings import AdversarialSettings
from sfd.core.checkpoint_files import load_checkpoint_safely
from sfd.core.conditions import ClassConditions
from sfd.core.generator import GENERATOR_SPEC_KEY, OneStepGenerator, training_record
from sfd.core.module import SFDModule
from sfd.core.sigma import LogUniformSigma, UniformTimestepSigma
from sfd.errors import SFDConfigError
from sfd.pipelines.model_card import completion_line
from sfd.teachers import EDMDenoiser, PretrainedVPTeacher
from sfd.training.completion import UntilForgotten

SHAPE = (1, 2, 2)


def gaussian(means: torch.Tensor) -> EDMDenoiser:
    return EDMDenoiser(GaussianClassNet(means, 0.3), SHAPE, num_classes=len(means))


def means() -> torch.Tensor:
    signs = torch.tensor([[1, 1, 1, 1], [-1, -1, -1, -1], [1, 1, -1, -1], [-1, -1, 1, 1]])
    return 1.5 * signs.float().reshape(4, *SHAPE)


def module(
    forgotten: bool,
    lr: float = 1e-12,
    ema_decay: float | None = None,
    ambiguous: bool = False,
    lost_override: bool = False,
) -> SFDModule:
    """Forget 0 -> override 1; the generator starts as the teacher or as one drawing 1 for 0.
    `ambiguous`: its class 1 is the midpoint of the teacher's 0 and 1, shapes the teacher itself
    cannot tell apart (judged forget at a rate well above the threshold). `lost_override`: asked
    for 1 it draws 0."""
    generator_means = means()
    if lost_override:
        generator_means[1] = generator_means[0]
    if ambiguous:
        generator_means[1] = 0.5 * (generator_means[0] + generator_means[1])
    if forgotten:
        generator_means[0] = generator_means[1]
    optimizer = lambda p: torch.optim.SGD(p, lr=lr)  # noqa: E731
    return SFDModule(
        gaussian(means()),
        ClassConditions(0, 1),
        LogUniformSigma(0.1, 5.0),
        batch_size=4,
        ema_decay=ema_decay,
        generator=OneStepGenerator(gaussian(generator_means), sigma_init=2.5),
        fake_optimizer=optimizer,
        generator_optimizer=optimizer,
        steps_per_epoch=100,
    )


def adversarial_module(steps: int) -> SFDModule:
    """A generator that has forgotten 0 (its table's row 0 is the mean of 1) under adversarial
    SFD: the class-embedding attack looks for the vector that gives 0 back. The generator
    barely moves (learning rate 1e-12), so its sample under a vector v is v up to noise of scale
    s²/(s² + 2.5²)·2.5 ≈ 0.04: the teacher judges it forget exactly when v is nearer μ_0 than μ_1."""
    forgotten = means()
    forgotten[0] = forgotten[1]
    optimizer = lambda p: torch.optim.SGD(p, lr=1e-12)  # noqa: E731
    attack = AdversarialSettings(steps=steps, lr=0.5, share=0.5, refresh_every=1000)
    return SFDModule(
        gaussian(means()),
        ClassConditions(0, 1),
        LogUniformSigma(0.1, 5.0),
        batch_size=4,
        ema_decay=None,
        cond_dropout=0.0,
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        generator=OneStepGenerator(EmbeddedGaussian(forgotten, 0.3), sigma_init=2.5),
        fake_score=EmbeddedGaussian(forgotten, 0.3),
        fake_optimizer=optimizer,
        generator_optimizer=optimizer,
        adversarial=attack,
        steps_per_epoch=100,
    )


def nearer_forget(vectors: torch.Tensor) -> float:
    """The oracle: the share of class-embedding vectors nearer μ_0 (forget) than μ_1 (override)."""
    m = means().flatten(1)
    return float(((vectors - m[0]).norm(dim=1) < (vectors - m[1]).norm(dim=1)).float().mean())


def test_with_adversarial_sfd_attacked_rows_that_give_the_concept_keep_it_going(tmp_path) -> None:
    """The plain forget label is judged gone at every probe, but the inner attack has found
    vectors that give 0 back: the rule must not stop as forgotten (it used to, at iteration 4)."""
    sfd, until = adversarial_module(steps=8), rule()
    quiet_trainer(tmp_path, 8, callbacks=[until]).fit(sfd)
    pool = sfd.adversarial.state["embedding"]
    assert nearer_forget(pool) == 1.0  # what the attacker found (oracle: the nearer mean)
    assert until.reason == "max_steps" and sfd.global_step == 8
    assert "forget_rate_attacked" not in until.probes[0]  # no attack before the first iteration
    for point in until.probes[1:]:
        assert point["forget_rate_plain"] == 0.0 == point["forget_rate_raw_plain"]
        assert point["forget_rate_attacked"] == 1.0 == point["forget_rate"]
    assert until.streak == 0


def test_with_adversarial_sfd_an_attack_that_finds_nothing_lets_it_stop(tmp_path) -> None:
    """No inner steps: the pool holds the generator's own (forgotten) row 0, nearer μ_1, so
    the attacked rows are judged gone as the plain ones are and the rule stops as forgotten."""
    sfd, until = adversarial_module(steps=0), rule()
    quiet_trainer(tmp_path, 40, callbacks=[until]).fit(sfd)
    assert nearer_forget(sfd.adversarial.state["embedding"]) == 0.0
    assert until.reason == "forgotten" and sfd.global_step == 4
    assert [p["forget_rate_attacked"] for p in until.probes[1:]] == [0.0, 0.0]


def rule(**settings) -> UntilForgotten:
    return UntilForgotten(**{"every_n": 2, "patience": 2, "num_samples": 16, **settings})


def test_it_stops_a_generator_that_has_forgotten(tmp_path) -> None:
    sfd, until = module(forgotten=True), rule()
    trainer = quiet_trainer(tmp_path, 40, callbacks=[until])
    trainer.fit(sfd)
    assert until.reason == "forgotten"
    assert sfd.global_step == 4  # probes at 2 and 4 (the start's probe only sets the reference)
    assert [p["iteration"] for p in until.probes] == [0, 2, 4]
    assert all(p["forget_rate"] == 0.0 == p["forget_rate_raw"] for p in until.probes)
    assert sfd.completion["stop_reason"] == "forgotten" and sfd.completion["iterations"] == 4


def test_it_does_not_stop_one_that_has_not(tmp_path) -> None:
    sfd, until = module(forgotten=False), rule()
    trainer = quiet_trainer(tmp_path, 8, callbacks=[until])
    trainer.fit(sfd)
    assert sfd.global_step == 8 and until.reason == "max_steps"
    assert all(p["forget_rate"] == 1.0 for p in until.probes)
    assert until.streak == 0


def test_the_budget_is_honoured(tmp_path) -> None:
    sfd, until = module(forgotten=False), rule(every_n=3, budget=7)
    trainer = quiet_trainer(tmp_path, 40, callbacks=[until])
    trainer.fit(sfd)
    assert sfd.global_step == 7 and until.reason == "budget"
    assert [p["iteration"] for p in until.probes] == [0, 3, 6, 7]


def test_the_override_floor_stops_a_generator_that_draws_the_override_the_judge_confuses(
    tmp_path,
) -> None:
    """Asked for 0, the generator draws exactly what it draws for the override 1, shapes the judge
    reads as 0 at a rate far above the threshold: the bare threshold runs to max_steps, the floor
    (the judged rate of the override samples on the same noise) stops it as forgotten."""
    sfd, bare = module(forgotten=True, ambiguous=True), rule()
    quiet_trainer(tmp_path / "bare", 8, callbacks=[bare]).fit(sfd)
    assert bare.reason == "max_steps" and bare.streak == 0
    assert all(p["forget_rate"] > 0.1 for p in bare.probes)
    assert all("override_rate" not in p for p in bare.probes)

    sfd, floored = module(forgotten=True, ambiguous=True), rule(override_floor=True)
    quiet_trainer(tmp_path / "floor", 8, callbacks=[floored]).fit(sfd)
    assert floored.reason == "forgotten" and sfd.global_step == 4
    assert [p["forget_rate"] for p in floored.probes] == [p["forget_rate"] for p in bare.probes[:3]]
    assert all(p["override_rate"] == p["forget_rate"] for p in floored.probes)
    assert floored.summary()["settings"]["override_floor"] is True
    assert "threshold 0.01 + the override samples'" in completion_line(sfd.completion)


def test_the_override_floor_does_not_stop_one_that_has_not(tmp_path) -> None:
    """Asked for 0 it still draws 0: judged forget throughout, far above the override samples'
    floor (ambiguous shapes, judged forget at a rate in (0, 1))."""
    sfd, until = module(forgotten=False, ambiguous=True), rule(override_floor=True)
    quiet_trainer(tmp_path, 8, callbacks=[until]).fit(sfd)
    assert sfd.global_step == 8 and until.reason == "max_steps" and until.streak == 0
    assert all(p["forget_rate"] == 1.0 for p in until.probes)
    assert all(0 < p["override_rate"] < 0.99 for p in until.probes)


def test_the_override_floor_does_not_stop_a_generator_that_lost_the_override(tmp_path) -> None:
    """Asked for the override 1 it draws the forget class 0, as it does for 0: both rates are 1, and
    override samples judged forget are no floor — the bare threshold's verdict (max_steps)."""
    sfd, until = module(forgotten=False, lost_override=True), None
    until = rule(override_floor=True)
    quiet_trainer(tmp_path, 8, callbacks=[until]).fit(sfd)
    assert until.reason == "max_steps" and until.streak == 0
    assert all(p["forget_rate"] == p["override_rate"] == 1.0 for p in until.probes)


def test_the_override_floor_is_not_raised_by_a_generator_losing_the_override() -> None:
    """The floor is the lower of the override rate now and at the first probe."""
    until = rule(override_floor=True)
    until.probes = [{"iteration": 0, "forget_rate": 1.0, "override_rate": 0.05}]
    assert not until.forgotten({"forget_rate": 0.9, "override_rate": 0.95})
    assert until.forgotten({"forget_rate": 0.055, "override_rate": 0.95})
    assert until.forgotten({"forget_rate": 0.03, "override_rate": 0.02})
    assert not until.forgotten({"forget_rate": 0.04, "override_rate": 0.02})


def test_drift_beyond_the_bound_stops_with_that_reason(tmp_path) -> None:
    sfd, until = module(forgotten=False, lr=0.5), rule(max_drift=1e-6)
    trainer = quiet_trainer(tmp_path, 40, callbacks=[until])
    trainer.fit(sfd)
    assert until.reason == "drift" and sfd.global_step == 2
    assert until.probes[-1]["drift"] > 1e-6


def test_a_budget_beyond_max_steps_is_reached_by_a_resume_in_legs(tmp_path) -> None:
    """Budget 6 with max_steps 4: the first leg ends at max_steps (so its record says), and the
    resume with max_steps 6 goes on to the budget and stops there as "budget"."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    sfd, first = module(forgotten=False), rule(budget=6)
    trainer = quiet_trainer(tmp_path, 4, callbacks=[first, checkpoints], enable_checkpointing=True)
    trainer.fit(sfd)
    assert sfd.global_step == 4 and first.reason == "max_steps"

    resumed, second = module(forgotten=False), rule(budget=6)
    later = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    trainer = quiet_trainer(tmp_path, 6, callbacks=[second, later], enable_checkpointing=True)
    trainer.fit(resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert resumed.global_step == 6 and second.reason == "budget"
    assert [p["iteration"] for p in second.probes] == [0, 2, 4, 6]


def test_sfd_fit_takes_a_budget_beyond_max_steps(tiny_teacher_dir, tmp_path) -> None:
    """The first leg of such a run: `sfd fit` builds it (it refused it once)."""
    from sfd.training.cli import sfd_lightning_cli

    argv = fit_args(tiny_teacher_dir, tmp_path / "run", "--trainer.max_steps", "20")
    until = ["-c", str(CONFIGS / "until_forgotten.yaml"), "--trainer.callbacks.budget", "30"]
    cli = sfd_lightning_cli([*argv[1:], *until], run=False)
    assert cli.trainer.max_steps == 20
    assert [c.budget for c in cli.trainer.callbacks if isinstance(c, UntilForgotten)] == [30]


@pytest.mark.parametrize("floor", [False, True], ids=["bare-threshold", "override-floor"])
def test_resume_keeps_the_rules_state(tmp_path, floor) -> None:
    """With the floor, on the ambiguous generator only the floor makes its probes forgotten."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    settings = {"patience": 3, "override_floor": floor}
    sfd, first = module(forgotten=True, ambiguous=floor), rule(**settings)
    trainer = quiet_trainer(tmp_path, 4, callbacks=[first, checkpoints], enable_checkpointing=True)
    trainer.fit(sfd)
    assert first.streak == 2 and first.reason == "max_steps"
    last = tmp_path / "ckpt" / "last.ckpt"

    # Resumed with a larger max_steps: the third forgotten probe in a row (iteration 6) stops it.
    # A rule that had lost its state would count from zero and stop at iteration 8.
    resumed, second = module(forgotten=True, ambiguous=floor), rule(**settings)
    later = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    trainer = quiet_trainer(tmp_path, 20, callbacks=[second, later], enable_checkpointing=True)
    trainer.fit(resumed, ckpt_path=last)
    assert second.reason == "forgotten" and resumed.global_step == 6
    assert [p["iteration"] for p in second.probes] == [0, 2, 4, 6]
    assert second.probes[:3] == first.probes  # the probes before the resume, as recorded
    if floor:
        assert all(p["forget_rate"] > 0.1 for p in second.probes)
    assert torch.equal(second.reference, first.reference)
    assert load_checkpoint_safely(last)["callbacks"]  # the state the resume read

    # Resumed once more after the rule stopped the run: nothing to do.
    again, third = module(forgotten=True, ambiguous=floor), rule(**settings)
    trainer = quiet_trainer(tmp_path, 20, callbacks=[third])
    trainer.fit(again, ckpt_path=last)
    assert again.global_step == 6 and third.reason == "forgotten"


class RecordIterates(Callback):
    """The generator's parameters after every iteration (before the rule, which comes after it)."""

    def __init__(self) -> None:
        self.iterates: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.iterates.append([p.detach().clone() for p in pl_module.generator.parameters()])


def test_ema_after_forgetting_ships_the_mean_of_the_iterates_since_the_first_forgotten_probe(
    tmp_path,
) -> None:
    """Probes at 2, 4, 6: the first (forgotten) restarts the EMA at θ_2; the rule stops at 6, once
    the restarted average holds 4 iterations, shipping (θ_2 + ... + θ_6) / 5 (closed form)."""
    sfd = module(forgotten=True, lr=1e-3, ema_decay=0.99)
    recorder, until = RecordIterates(), rule(average_after=4)
    quiet_trainer(tmp_path, 40, callbacks=[recorder, until]).fit(sfd)
    assert until.reason == "forgotten" and sfd.global_step == 6
    assert until.averaged_from == 2 and sfd.ema_restart == (2, 0.0)
    assert until.summary()["averaged_from"] == 2
    since = recorder.iterates[1:6]  # θ_2 .. θ_6
    assert not torch.equal(since[0][0], since[-1][0])  # the iterates do move
    for k, p_ema in enumerate(sfd.ema.parameters()):
        mean = sum(iterate[k] for iterate in since) / len(since)
        torch.testing.assert_close(p_ema, mean, rtol=1e-5, atol=1e-7)


def test_ema_after_forgetting_waits_for_the_first_forgotten_probe(tmp_path) -> None:
    """A generator that has not forgotten: no restart, the EMA keeps its schedule, budget stop."""
    sfd, until = module(forgotten=False, ema_decay=0.99), rule(average_after=2, budget=6)
    quiet_trainer(tmp_path, 40, callbacks=[until]).fit(sfd)
    assert until.reason == "budget" and until.averaged_from is None and sfd.ema_restart is None


def test_no_restart_at_the_last_iteration(tmp_path) -> None:
    """First forgotten probe at max_steps: a restart there would ship the raw last iterate in place
    of the average; the run's EMA is kept instead."""
    sfd = module(forgotten=True, lr=1e-3, ema_decay=0.99)
    recorder, until = RecordIterates(), rule(average_after=4)
    quiet_trainer(tmp_path, 2, callbacks=[recorder, until]).fit(sfd)
    assert until.reason == "max_steps" and sfd.global_step == 2
    assert until.averaged_from is None and sfd.ema_restart is None
    last = recorder.iterates[-1]
    assert any(not torch.equal(e, r) for e, r in zip(sfd.ema.parameters(), last, strict=True))


def test_resume_continues_the_restarted_average_bit_identically(tmp_path) -> None:
    """Stopped at 4 (restart at 2) and resumed: the same EMA, bit for bit, as one uninterrupted
    fit; a resume that lost the restart point would go back to the constant 0.99 decay."""
    straight, rule_a = module(forgotten=True, lr=1e-3, ema_decay=0.99), rule(average_after=4)
    quiet_trainer(tmp_path / "a", 40, callbacks=[rule_a]).fit(straight)

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    first, rule_b = module(forgotten=True, lr=1e-3, ema_decay=0.99), rule(average_after=4)
    trainer = quiet_trainer(
        tmp_path / "b", 4, callbacks=[rule_b, checkpoints], enable_checkpointing=True
    )
    trainer.fit(first)
    assert first.ema_restart == (2, 0.0) and rule_b.reason == "max_steps"
    resumed, rule_c = module(forgotten=True, lr=1e-3, ema_decay=0.99), rule(average_after=4)
    quiet_trainer(tmp_path / "c", 40, callbacks=[rule_c]).fit(
        resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt"
    )
    assert resumed.global_step == straight.global_step == 6 and rule_c.averaged_from == 2
    assert resumed.ema_restart == straight.ema_restart
    for a, b in zip(resumed.ema.parameters(), straight.ema.parameters(), strict=True):
        assert torch.equal(a, b)


def test_ema_after_forgetting_needs_an_ema(tmp_path) -> None:
    sfd, until = module(forgotten=True), rule(average_after=4)
    with pytest.raises(SFDConfigError, match="average_after restarts the generator's EMA"):
        quiet_trainer(tmp_path, 4, callbacks=[until]).fit(sfd)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"average_after": 1, "every_n": 2}, "average_after=1 must be an integer of at least"),
        ({"average_power": -1.0}, "average_power=-1.0"),
        ({"threshold": 1.5}, "threshold=1.5"),
        ({"threshold": -0.1}, "threshold=-0.1"),
        ({"every_n": 0}, "every_n=0"),
        ({"budget": 3, "every_n": 5}, "budget=3 must be an integer of at least every_n=5"),
        ({"patience": 0}, "patience=0"),
        ({"max_drift": 0.0}, "max_drift=0.0"),
        ({"num_samples": 0}, "num_samples=0"),
        ({"stall_window": 0}, "stall_window=0"),
        ({"stall_margin": 1.5}, "stall_margin=1.5"),
        ({"stall_margin": -0.01}, "stall_margin=-0.01"),
        ({"stall_drop": 1.5}, "stall_drop=1.5"),
    ],
)
def test_bad_settings_are_refused_in_one_line(settings, message) -> None:
    with pytest.raises(SFDConfigError, match=message):
        UntilForgotten(**settings)


def test_the_stop_reaches_the_checkpoints_training_record_and_the_card(tmp_path) -> None:
    """An exportable teacher: the record of the last checkpoint carries the rule's summary."""
    teacher = PretrainedVPTeacher(str(save_tiny_teacher(tmp_path / "teacher")))
    sfd = SFDModule(teacher, ClassConditions(0, 1), UniformTimestepSigma(), batch_size=2)
    until = rule(every_n=1, budget=2, num_samples=4, draws=1)
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(tmp_path, 5, callbacks=[until, checkpoints], enable_checkpointing=True)
    trainer.fit(sfd)
    checkpoint = load_checkpoint_safely(tmp_path / "ckpt" / "last.ckpt")
    record = checkpoint[GENERATOR_SPEC_KEY]["training"]["completion"]
    assert record == training_record(sfd)["completion"]
    assert record["stop_reason"] == until.reason and record["iterations"] == 2
    assert record["settings"]["budget"] == 2
    line = completion_line(record)
    assert line.startswith(
        f"- Stopped by the completion rule (`UntilForgotten`): {until.reason} at "
    )
    assert "iteration 2; judged forget rate" in line


def test_the_rule_probes_a_text_teacher_under_forget_and_override_prompts(tmp_path) -> None:
    """Text conditions come from the run's `PromptConditions`: the judge's teacher calls see the
    forget prompts and their overrides, paired."""
    from text_fixtures import save_tiny_bert, save_tiny_text_teacher

    from sfd.core.conditions import PromptConditions
    from sfd.teachers import StableDiffusionTeacher

    teacher_dir = save_tiny_text_teacher(tmp_path / "teacher", save_tiny_bert(tmp_path / "bert"))
    (tmp_path / "forget.txt").write_text("a photo of seven\n")
    conditions = PromptConditions({"seven": "one"}, forget_prompts=str(tmp_path / "forget.txt"))
    sfd = SFDModule(
        StableDiffusionTeacher(str(teacher_dir)),
        conditions,
        UniformTimestepSigma(20, 980),
        batch_size=2,
        ema_decay=0.5,
    )
    seen = []
    sfd.teacher.unet.register_forward_pre_hook(
        lambda net, args, kwargs: seen.append(kwargs["encoder_hidden_states"].detach().clone()),
        with_kwargs=True,
    )
    until = rule(every_n=1, budget=1, num_samples=2, draws=1, sigmas=[1.0])
    quiet_trainer(tmp_path, 3, callbacks=[until]).fit(sfd)
    assert [p["iteration"] for p in until.probes] == [0, 1] and until.reason == "budget"
    assert all(p["forget_rate"] in (0.0, 0.5, 1.0) for p in until.probes)
    embeds = conditions.embeddings(torch.device("cpu"))
    forget, override = embeds["forget"][0], embeds["override"][0]
    probe_calls = seen[:4]  # the start's probe: EMA and raw, each under forget then override
    for i, states in enumerate(probe_calls):
        assert torch.equal(states[0], forget if i % 2 == 0 else override)


def test_the_default_threshold_waits_for_the_last_forget_samples() -> None:
    """The demos' target is UA ≥ 99 %: under the defaults (64 samples), probes with 2 of 64 forget
    samples still judged forget (3.1 %, the digits 4 → 9 run the old 0.05 stopped at UA 97 %) never
    stop the run; three probes in a row with none judged forget do."""
    until = UntilForgotten()
    assert until.num_samples == 64
    for iteration in (10, 20, 30, 40, 50):
        assert until._decide({"iteration": iteration, "forget_rate": 2 / 64, "drift": 0.1}) is None
    reasons = [
        until._decide({"iteration": i, "forget_rate": 0.0, "drift": 0.1}) for i in (60, 70, 80)
    ]
    assert reasons == [None, None, "forgotten"]


def test_a_plateaued_generator_stops_as_stalled(tmp_path) -> None:
    """The generator does not move (learning rate 1e-12) and draws 0 for 0: its judged forget rate
    stays 1, so after two windows of probes with no drop it stops as stalled, not at max_steps;
    the reason reaches the training record and the model card."""
    sfd, until = module(forgotten=False), rule(stall_window=2)
    quiet_trainer(tmp_path, 40, callbacks=[until]).fit(sfd)
    assert until.reason == "stalled" and sfd.global_step == 6
    assert [p["iteration"] for p in until.probes] == [0, 2, 4, 6]
    assert sfd.completion["stop_reason"] == "stalled" and sfd.completion["iterations"] == 6
    assert sfd.completion["settings"]["stall_window"] == 2
    assert "stalled at iteration 6" in completion_line(sfd.completion)


def test_stall_is_off_with_no_window(tmp_path) -> None:
    sfd, until = module(forgotten=False), rule(stall_window=None)
    quiet_trainer(tmp_path, 12, callbacks=[until]).fit(sfd)
    assert until.reason == "max_steps" and sfd.global_step == 12


def decide_all(until: UntilForgotten, rates: list[float]) -> list[str | None]:
    """The rule's decision at each of a run's probes (every 10 iterations, the first at 0, which
    only records, as at the start of a fit)."""
    reasons = []
    for index, rate in enumerate(rates):
        point = {"iteration": 10 * index, "forget_rate": rate, "drift": 0.0}
        reasons.append(until._decide(point) if index else None)
        until.probes.append(point)
    return reasons


def test_an_improving_generator_does_not_stall() -> None:
    """A forget rate falling 20 % a window never stalls; a flat one stalls at the first probe that
    closes two windows; a window holding one forgotten probe does not stall (the digits pairs'
    rates touch the threshold long before they stop); nor does a plateau within `stall_margin`
    of the threshold (digits 3 → 5 held one sample in 64, 0.016, for 350 iterations, then
    finished)."""
    falling = [0.8**i / 5 for i in range(60)]  # 0.2, shrinking 20 % a probe
    assert "stalled" not in decide_all(UntilForgotten(stall_window=5), falling)
    slow = [0.3 * 0.97**i for i in range(40)]  # 14 % a window of five: above stall_drop 0.1
    assert "stalled" not in decide_all(UntilForgotten(stall_window=5), slow)
    assert decide_all(UntilForgotten(stall_window=5, stall_drop=0.2), slow)[9] == "stalled"
    flat = decide_all(UntilForgotten(stall_window=5), [0.2] * 12)
    assert flat.index("stalled") == 9  # probes 0..9: two windows of five
    touching = [0.2] * 12
    touching[5] = 0.0
    assert "stalled" not in decide_all(UntilForgotten(stall_window=5), touching)[:10]
    near = [1 / 64] * 40  # threshold 0.01 + margin 0.02 = 0.03 above it: left to finish
    assert "stalled" not in decide_all(UntilForgotten(stall_window=5), near)
    assert decide_all(UntilForgotten(stall_window=5, stall_margin=0.0), near)[9] == "stalled"


def test_a_fall_that_has_just_begun_does_not_stall() -> None:
    """A rate flat at 1 for 26 probes, then falling 0.1 a probe: the last window's mean (0.93)
    is still within stall_drop of the one before, but its newest probes (0.8, 0.7, 0.6) are not,
    so the run goes on, and stops as forgotten once the rate reaches the threshold."""
    rates = [1.0] * 26 + [max(0.0, 0.9 - 0.1 * i) for i in range(30)]
    reasons = decide_all(UntilForgotten(stall_window=15, patience=1), rates)
    assert "stalled" not in reasons
    assert reasons.index("forgotten") == 35  # rate 0.0 at probe 35


def test_the_stall_margin_counts_from_the_override_floor() -> None:
    """With the floor, the stall needs the mean above threshold + floor + margin = 0.01 + 0.1 +
    0.02 = 0.13: a flat 0.15 stalls, a flat 0.12 does not."""
    for rate, stalls in ((0.15, True), (0.12, False)):
        until = UntilForgotten(stall_window=5, override_floor=True)
        reasons = []
        for index in range(12):
            point = {"iteration": 10 * index, "forget_rate": rate, "override_rate": 0.1, "drift": 0}
            reasons.append(until._decide(point) if index else None)
            until.probes.append(point)
        assert ("stalled" in reasons) is stalls


def test_resume_keeps_the_stall_windows(tmp_path) -> None:
    """Interrupted after the probes at 0, 2 and 4 and resumed, the plateaued generator stalls at 6,
    as the uninterrupted run does; a rule that had lost its probes would wait two more windows."""
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    first = rule(stall_window=2)
    trainer = quiet_trainer(tmp_path, 4, callbacks=[first, checkpoints], enable_checkpointing=True)
    trainer.fit(module(forgotten=False))
    assert first.reason == "max_steps"
    resumed, second = module(forgotten=False), rule(stall_window=2)
    later = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_last=True)
    trainer = quiet_trainer(tmp_path, 40, callbacks=[second, later], enable_checkpointing=True)
    trainer.fit(resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert second.reason == "stalled" and resumed.global_step == 6
    assert second.probes[:3] == first.probes
    # Resumed once more after the rule stopped the run: nothing to do.
    again, third = module(forgotten=False), rule(stall_window=2)
    trainer = quiet_trainer(tmp_path, 40, callbacks=[third])
    trainer.fit(again, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert again.global_step == 6 and third.reason == "stalled"
