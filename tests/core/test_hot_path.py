"""The iteration's shortcuts against what they replace: cached train / eval plans against
`nn.Module.train`, the module's optimizer toggle against Lightning's, the cached EMA tensors
against a closed-form EMA after the networks change."""

from __future__ import annotations

import copy
import random

import torch
from conftest import quiet_trainer
from gaussian import gaussian_teacher
from torch import nn

from sfd.core.conditions import ClassConditions
from sfd.core.loop import set_training_mode
from sfd.core.module import SFDModule
from sfd.core.sigma import LogUniformSigma


class KeepsItsHeadInEval(nn.Module):
    """A module with its own `train`: the head stays in eval mode whatever is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
        self.head = nn.Dropout(0.5)

    def train(self, mode: bool = True) -> KeepsItsHeadInEval:
        super().train(mode)
        self.head.eval()
        return self


def network() -> nn.Module:
    """Shared submodules (one reached three times), an own `train`, one replaced on an instance."""
    shared = nn.Sequential(nn.Dropout(0.1), nn.BatchNorm1d(2))
    patched = nn.Sequential(nn.Dropout(0.2), nn.Dropout(0.3))
    patched.train = lambda mode=True: nn.Module.train(patched[0], mode)  # leaves [1] alone
    return nn.ModuleDict(
        {
            "a": nn.Sequential(shared, nn.Linear(2, 2)),
            "b": nn.ModuleList([shared, KeepsItsHeadInEval(), shared[1]]),
            "c": patched,
            "d": nn.Sequential(nn.Sequential(nn.Dropout(0.4)), KeepsItsHeadInEval()),
        }
    )


def flags(net: nn.Module) -> list[bool]:
    return [m.training for _, m in net.named_modules(remove_duplicate=False)]


def scramble(net: nn.Module, seed: int) -> None:
    draw = random.Random(seed)
    for m in net.modules():
        m.training = draw.random() < 0.5


def test_a_cached_plan_leaves_every_flag_as_train_does() -> None:
    """Oracle: `nn.Module.train` on an identical copy, from the same scrambled flags."""
    net, plans = network(), {}
    oracle = copy.deepcopy(net)
    oracle["c"].train = lambda mode=True: nn.Module.train(oracle["c"][0], mode)
    for seed, mode in enumerate([False, True, True, False, True]):
        scramble(net, seed)
        scramble(oracle, seed)
        untouched = net["c"][1].training  # the instance's own train leaves it alone
        assert flags(net) == flags(oracle)
        set_training_mode(net, mode, plans)
        oracle.train(mode)
        assert flags(net) == flags(oracle)
        assert net["c"][1].training == untouched and not net["d"][1].head.training
    assert len(plans) == 1  # one plan, replayed


def test_a_plan_follows_a_network_that_changed() -> None:
    net, plans = network(), {}
    set_training_mode(net, True, plans)
    net["a"].append(nn.Dropout(0.5))  # registered after the plan was made
    net["b"][1].body[0] = nn.Sequential(nn.Dropout(0.5))  # replaced
    set_training_mode(net, False, plans)
    assert not net["a"][-1].training and not net["b"][1].body[0][0].training  # built in train mode
    oracle = copy.deepcopy(net)
    oracle["c"].train = lambda mode=True: nn.Module.train(oracle["c"][0], mode)
    set_training_mode(net, True, plans)
    assert flags(net) == flags(oracle.train(True))


def test_a_plan_outlives_containers_built_outside_the_network() -> None:
    """Slicing a ModuleList builds a new one (diffusers' blocks do on every forward): the
    network did not change, its plan stays."""
    net, plans = network(), {}
    set_training_mode(net, True, plans)
    plan = plans[id(net)]
    _ = net["b"][0:2], nn.Sequential(nn.Linear(2, 2))
    set_training_mode(net, False, plans)
    assert plans[id(net)] is plan


def make(**settings) -> SFDModule:
    return SFDModule(
        gaussian_teacher(),
        ClassConditions(0, 1),
        LogUniformSigma(0.1, 5.0),
        batch_size=4,
        steps_per_epoch=10,
        **settings,
    )


def requires_grad(m: SFDModule) -> list[bool]:
    return [p.requires_grad for p in m.parameters()]


def test_the_toggle_is_lightnings(tmp_path) -> None:
    """Oracle: Lightning's toggle_optimizer / untoggle_optimizer, with a parameter frozen up
    front and one that both optimizers hold."""
    m = make()
    shared = nn.Parameter(torch.zeros(2))
    m.fake_optimizer = lambda p: torch.optim.Adam([*p, shared], lr=1e-5)
    m.generator_optimizer = lambda p: torch.optim.Adam([*p, shared], lr=1e-5)
    quiet_trainer(tmp_path, steps=1).fit(m)
    next(m.generator.parameters()).requires_grad_(False)
    before = requires_grad(m) + [shared.requires_grad]
    for optimizer in m.optimizers():
        m.toggle_optimizer(optimizer)
        expected = requires_grad(m) + [shared.requires_grad]
        m.untoggle_optimizer(optimizer)
        assert requires_grad(m) + [shared.requires_grad] == before
        with m._toggled(optimizer):
            assert requires_grad(m) + [shared.requires_grad] == expected
        assert requires_grad(m) + [shared.requires_grad] == before
        assert False in expected and True in expected  # the other network was frozen


def fill(tensors, value: float) -> None:
    with torch.no_grad():
        for t in tensors:
            t.fill_(value)


def test_the_ema_follows_networks_that_changed() -> None:
    """Closed form: decay 0.5 from an EMA at 0 and a generator at v gives v/2; buffers copied."""
    m = make(ema_decay=0.5)
    for network in (m.generator, m.ema):
        network.register_buffer("probe", torch.zeros(3))
    fill(m.ema.parameters(), 0.0)
    fill(m.generator.parameters(), 2.0)
    m.generator.probe.fill_(5.0)
    m.update_ema(1)
    assert {v for p in m.ema.parameters() for v in p.flatten().tolist()} == {1.0}
    assert m.ema.probe.tolist() == [5.0] * 3

    m.double()  # replaces every buffer
    m.generator.probe.fill_(6.0)
    m.update_ema(2)
    assert m.ema.probe.dtype == torch.float64 and m.ema.probe.tolist() == [6.0] * 3

    for network, value in ((m.generator, 7.0), (m.ema, 0.0)):  # a buffer registered anew
        network.register_buffer("probe", torch.full((2,), value, dtype=torch.float64))
    net = m.generator.denoiser.net  # and a parameter
    net.log_std = nn.Parameter(torch.tensor(4.0, dtype=torch.float64))
    m.ema.denoiser.net.log_std = nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
    m.update_ema(3)
    assert m.ema.probe.tolist() == [7.0, 7.0]
    assert m.ema.denoiser.net.log_std.item() == 2.0


def test_a_copy_of_the_module_does_not_reuse_the_originals_caches() -> None:
    """A deep copy's networks are watched by nobody: what is registered into them after the copy
    reaches its EMA (closed form: decay 0.5 from 0 towards 4 gives 2; a buffer is copied)."""
    m = make(ema_decay=0.5)
    m.update_ema(1)  # the original's cached tensor lists
    c = copy.deepcopy(m)
    for network, value in ((c.generator, 7.0), (c.ema, 0.0)):
        network.register_buffer("probe", torch.full((2,), value))
    c.generator.denoiser.net.log_std = nn.Parameter(torch.tensor(4.0))
    c.ema.denoiser.net.log_std = nn.Parameter(torch.tensor(0.0))
    c.update_ema(2)
    assert c.ema.probe.tolist() == [7.0, 7.0]
    assert c.ema.denoiser.net.log_std.item() == 2.0
