"""`SFDModule` plumbing: Lightning's step counting, the injected generator, condition previews."""

from __future__ import annotations

import lightning
import pytest
import torch
from conftest import quiet_trainer
from gaussian import gaussian_teacher
from lightning.pytorch.core.optimizer import LightningOptimizer

from sfd.core.conditions import ClassConditions, ConditionBatch, ConditionSampler
from sfd.core.generator import OneStepGenerator
from sfd.core.loop import LIGHTNING_STEP_HOOKS, step_without_counting
from sfd.core.module import SFDModule
from sfd.core.sigma import LogUniformSigma


def test_lightning_still_has_the_private_step_counting_hooks() -> None:
    """If this fails, a Lightning upgrade removed what `step_without_counting` relies on."""
    optimizer = LightningOptimizer(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1))
    missing = [name for name in LIGHTNING_STEP_HOOKS if not hasattr(optimizer, name)]
    assert not missing, (
        f"Lightning {lightning.__version__}'s LightningOptimizer lost {missing}: update "
        "sfd.core.loop.step_without_counting (it keeps the fake-score step out of global_step)"
    )


class RecordingOptimizer:
    """What `step_without_counting` touches of a LightningOptimizer: the two hooks and step()."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self._on_before_step = lambda: self.calls.append("count before")
        self._on_after_step = lambda: self.calls.append("count after")

    def step(self) -> None:
        self._on_before_step()
        self.calls.append("step")
        if self.fail:
            raise FloatingPointError("step failed")
        self._on_after_step()


def test_step_without_counting_steps_silently_and_restores_the_hooks() -> None:
    optimizer = RecordingOptimizer()
    hooks = (optimizer._on_before_step, optimizer._on_after_step)
    step_without_counting(optimizer)
    assert optimizer.calls == ["step"]
    assert (optimizer._on_before_step, optimizer._on_after_step) == hooks
    failing = RecordingOptimizer(fail=True)
    hooks = (failing._on_before_step, failing._on_after_step)
    with pytest.raises(FloatingPointError):
        step_without_counting(failing)
    assert (failing._on_before_step, failing._on_after_step) == hooks  # restored on failure too


def test_step_without_counting_fails_clearly_without_the_hooks() -> None:
    plain = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)
    with pytest.raises(RuntimeError, match="cannot keep the fake-score step out of global_step"):
        step_without_counting(plain)


def test_global_step_counts_iterations_while_both_networks_step(tmp_path) -> None:
    module = SFDModule(
        gaussian_teacher(),
        ClassConditions(0, 1),
        LogUniformSigma(0.1, 5.0),
        batch_size=4,
        ema_decay=None,
        steps_per_epoch=10,
    )
    trainer = quiet_trainer(tmp_path, steps=3)
    trainer.fit(module)
    assert trainer.global_step == 3
    fake_optimizer, generator_optimizer = (opt.optimizer for opt in module.optimizers())
    for optimizer in (fake_optimizer, generator_optimizer):
        steps = {int(state["step"]) for state in optimizer.state.values()}
        assert steps == {3}


def test_the_module_trains_the_generator_it_is_given() -> None:
    teacher = gaussian_teacher()
    generator = OneStepGenerator(gaussian_teacher(seed=1), sigma_init=1.7)
    module = SFDModule(teacher, ClassConditions(0, 1), LogUniformSigma(), generator=generator)
    assert module.generator is generator and module.generator.sigma_init == 1.7
    assert all(p.requires_grad for p in generator.parameters())
    default = SFDModule(teacher, ClassConditions(0, 1), LogUniformSigma(), sigma_init=2.0)
    assert default.generator.sigma_init == 2.0
    assert default.generator.denoiser is not teacher  # a copy of the teacher


def test_class_preview_shows_every_class_as_a_row() -> None:
    conditions = ClassConditions([0, 3], [1, 2])
    conditions.check(5)
    preview = conditions.preview(per_row=2, rows=7, generator=torch.Generator())
    assert preview.remain.tolist() == [1, 1, 2, 2, 4, 4]
    assert preview.forget.tolist() == [0, 0, 3, 3]
    assert preview.remain_labels == ["1", "2", "4"]
    assert preview.forget_labels == ["0 (forget)", "3 (forget)"]


class CountingSampler(ConditionSampler):
    """Labels 0, 1, 2, ... in draw order: shows what the default preview asks for."""

    def sample(self, batch_size, generator, world_size=1, rank=0) -> ConditionBatch:
        labels = torch.arange(batch_size)
        return ConditionBatch(labels, labels + 100, labels + 200)


def test_default_preview_draws_rows_of_conditions() -> None:
    preview = CountingSampler().preview(per_row=3, rows=2, generator=torch.Generator())
    assert preview.remain.tolist() == [0, 1, 2, 3, 4, 5]
    assert preview.forget.tolist() == [100, 101, 102, 103, 104, 105]
    assert len(preview.remain_labels) == len(preview.forget_labels) == 2
