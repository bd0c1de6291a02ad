"""The generator's EMA: constant and power-function (EDM2) decay against closed-form weighted
averages of the generator iterates, on hand-computed sequences and through a real fit."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from gaussian import gaussian_teacher

from sfd.core.conditions import ClassConditions
from sfd.core.module import SFDModule, ema_decay_at
from sfd.core.sigma import LogUniformSigma
from sfd.errors import SFDConfigError


def module(**settings) -> SFDModule:
    defaults = {"batch_size": 4, "steps_per_epoch": 10}
    return SFDModule(
        gaussian_teacher(), ClassConditions(0, 1), LogUniformSigma(0.1, 5.0), **defaults, **settings
    )


def set_all(network: torch.nn.Module, value: float) -> None:
    with torch.no_grad():
        for p in network.parameters():
            p.fill_(value)


def ema_values(m: SFDModule) -> set[float]:
    return {round(v, 6) for p in m.ema.parameters() for v in p.flatten().tolist()}


def run_sequence(m: SFDModule, iterates: list[float]) -> float:
    """Feed the generator the constant iterates θ_1, θ_2, ... (EMA starting at 0); the EMA's value."""
    set_all(m.ema, 0.0)
    for step, value in enumerate(iterates, start=1):
        set_all(m.generator, value)
        m.update_ema(step)
    [value] = ema_values(m)
    return value


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        # constant 0.5 from 0: 0.5·(0.25·1 + 0.5·2 + 1·3)
        ({"ema_decay": 0.5}, 2.125),
        # power γ = 1, uncapped: weights (2i − 1)/t² = 1/9, 3/9, 5/9
        ({"ema_decay": 0.9999, "ema_power": 1.0}, 22 / 9),
        # power γ = 0: the plain mean of the iterates, the start forgotten
        ({"ema_decay": 0.9999, "ema_power": 0.0}, 2.0),
    ],
)
def test_ema_is_the_closed_form_average_of_three_iterates(settings, expected) -> None:
    assert run_sequence(module(**settings), [1.0, 2.0, 3.0]) == pytest.approx(expected, abs=1e-6)


def test_the_power_ema_stops_at_its_cap() -> None:
    """γ = 1, cap 0.5: decays 0, 1/4, 4/9, then min(0.5, 9/16) = 0.5; by hand 22/9 then
    0.5·22/9 + 0.5·4 = 29/9 (uncapped it would be (1 + 6 + 15 + 28)/16 = 3.125)."""
    m = module(ema_decay=0.5, ema_power=1.0)
    assert [ema_decay_at(t, 0.5, 1.0) for t in (1, 2, 3, 4)] == pytest.approx([0, 0.25, 4 / 9, 0.5])
    assert run_sequence(m, [1.0, 2.0, 3.0]) == pytest.approx(22 / 9, abs=1e-6)
    set_all(m.generator, 4.0)
    m.update_ema(4)
    [value] = ema_values(m)
    assert value == pytest.approx(29 / 9, abs=1e-6)


def test_power_ema_matches_edm2_weights_on_random_iterates() -> None:
    """After t updates the EMA is Σ_i (i^(γ+1) − (i−1)^(γ+1)) / t^(γ+1) · θ_i (the telescoped
    product of the decays), whatever the start."""
    gamma, t = 6.94, 7
    m = module(ema_decay=0.9999, ema_power=gamma)
    g = torch.Generator().manual_seed(3)
    params = list(m.generator.parameters())
    iterates = [[torch.randn(p.shape, generator=g) for p in params] for _ in range(t)]
    with torch.no_grad():
        for p in m.ema.parameters():
            p.copy_(torch.randn(p.shape, generator=g))  # a start the average must forget
        for step, values in enumerate(iterates, start=1):
            for p, v in zip(params, values, strict=True):
                p.copy_(v)
            m.update_ema(step)
    e = gamma + 1
    weights = [(i**e - (i - 1) ** e) / t**e for i in range(1, t + 1)]
    for k, p_ema in enumerate(m.ema.parameters()):
        expected = sum(w * values[k] for w, values in zip(weights, iterates, strict=True))
        torch.testing.assert_close(p_ema, expected, rtol=1e-5, atol=1e-6)


class RecordIterates(pl.Callback):
    """The generator's parameters after every iteration of a fit."""

    def __init__(self) -> None:
        super().__init__()
        self.iterates: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.iterates.append([p.detach().clone() for p in pl_module.generator.parameters()])


def test_a_fit_counts_ema_steps_from_its_first_iteration(tmp_path) -> None:
    """γ = 0 through `Trainer.fit`: the EMA is the plain mean of the fit's generator iterates,
    so the step the module passes is 1 at the first iteration and counts every iteration."""
    m = module(ema_decay=0.9999, ema_power=0.0)
    recorder = RecordIterates()
    quiet_trainer(tmp_path, steps=3, callbacks=[recorder]).fit(m)
    assert len(recorder.iterates) == 3
    for k, p_ema in enumerate(m.ema.parameters()):
        mean = sum(iterate[k] for iterate in recorder.iterates) / 3
        torch.testing.assert_close(p_ema, mean, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("power", "expected"),
    [
        # γ = 0 from the restart at θ_2 = 2: the mean of 2, 3, 4, whatever came before
        (0.0, 3.0),
        # γ = 1: weights (2i − 1)/9 on 2, 3, 4
        (1.0, 31 / 9),
    ],
)
def test_a_restarted_ema_is_the_closed_form_average_of_the_iterates_since(power, expected) -> None:
    m = module(ema_decay=0.9999, ema_power=7.0)
    run_sequence(m, [1.0, 2.0])
    m.restart_ema(power)  # global_step 0 outside a trainer: the restart counts from step 0
    assert m.ema_restart == (0, power)
    assert ema_values(m) == {2.0}  # the EMA jumped to the generator now
    for step, value in ((1, 3.0), (2, 4.0)):
        set_all(m.generator, value)
        m.update_ema(step)
    [value] = ema_values(m)
    assert value == pytest.approx(expected, abs=1e-6)


def test_a_restarted_ema_keeps_its_cap() -> None:
    """Cap 0.5 after the restart: decays 0 (restart), min(0.5, 1/2), min(0.5, 2/3) = 0.5."""
    m = module(ema_decay=0.5)
    set_all(m.generator, 2.0)
    m.restart_ema(0.0)
    for step, value in ((1, 4.0), (2, 8.0)):
        set_all(m.generator, value)
        m.update_ema(step)
    [value] = ema_values(m)
    assert value == pytest.approx(0.5 * 3.0 + 0.5 * 8.0, abs=1e-6)


def test_restarting_without_an_ema_is_one_clear_error() -> None:
    with pytest.raises(SFDConfigError, match="restarting the EMA needs one"):
        module(ema_decay=None).restart_ema()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"ema_power": -1.0}, "ema_power=-1.0 must be"),
        ({"ema_power": float("nan")}, "ema_power=nan"),
        ({"ema_power": 7.0, "ema_decay": None}, "ema_decay=null turns off"),
    ],
)
def test_bad_ema_power_is_one_clear_error(settings, message) -> None:
    with pytest.raises(SFDConfigError, match=message):
        module(**settings)
