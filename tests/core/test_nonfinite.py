"""Nothing silent: non-finite inputs, losses, gradients and weights stop a run loudly.

A teacher with a NaN weight and every bad numeric setting are refused when the module is built;
a non-finite loss term stops training with a message naming the term, the iteration and the last
good checkpoint, before any checkpoint is written from it; a few non-finite gradient elements are
counted and replaced (as the reference does), a wholly non-finite update stops; no checkpoint is
written from non-finite weights. The updates themselves never wait on the host: the watch is read
back when the run logs, checkpoints or ends.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from conftest import fit_args, quiet_trainer, save_tiny_teacher
from lightning.pytorch.callbacks import ModelCheckpoint

from sfd.cli import main
from sfd.core.checkpoint_files import load_checkpoint_safely
from sfd.core.conditions import ClassConditions
from sfd.core.generator import generator_from_checkpoint
from sfd.core.guards import NonFiniteWatch, any_nonfinite, check_finite_weights, count_nonfinite
from sfd.core.module import SFDModule
from sfd.core.sigma import LogNormalSigma, LogUniformSigma, UniformTimestepSigma
from sfd.errors import NonFiniteError, SFDConfigError
from sfd.teachers import PretrainedVPTeacher


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    return save_tiny_teacher(tmp_path_factory.mktemp("t") / "teacher")


def make(teacher_dir: Path, module_class: type[SFDModule] = SFDModule, **settings) -> SFDModule:
    settings = {"batch_size": 4, "ema_decay": 0.5, "steps_per_epoch": 100, **settings}
    return module_class(
        PretrainedVPTeacher(str(teacher_dir)),
        ClassConditions(0, 1),
        UniformTimestepSigma(),
        **settings,
    )


def trainer(root: Path, steps: int) -> pl.Trainer:
    checkpoints = ModelCheckpoint(dirpath=root / "ckpt", every_n_train_steps=1, save_last=True)
    return quiet_trainer(root, steps, callbacks=[checkpoints], enable_checkpointing=True)


# The CPU default (a fused check first, count and repair only when something is non-finite) and
# the path of accelerators, where the count and the repair always run and nothing is read back.
WATCHES = pytest.mark.parametrize(
    "sync_free", [None, frozenset()], ids=["check-first", "device-only"]
)


def watch_of(sync_free: frozenset[str] | None) -> NonFiniteWatch:
    return NonFiniteWatch() if sync_free is None else NonFiniteWatch(sync_free)


def test_one_finite_weights_check_for_inputs_and_results() -> None:
    """`check_finite_weights` names the first bad tensor; for a trained network it counts them."""
    network = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    check_finite_weights("teacher", network)
    with torch.no_grad():
        network[1].weight[0, 0] = math.nan
        network[1].weight[1, 1] = math.inf
        network[1].bias.fill_(math.nan)
    with pytest.raises(SFDConfigError, match="the teacher holds non-finite values in '1.weight'"):
        check_finite_weights("teacher", network)
    with pytest.raises(
        SFDConfigError,
        match=r"^generator 'g' has non-finite weights: the first bad tensor is 1.weight \(1 NaN, "
        r"1 infinite of 4\); a diverged run",
    ):
        check_finite_weights("generator 'g'", network, trained=True)


def test_a_teacher_with_one_nan_weight_is_refused(teacher_dir) -> None:
    teacher = PretrainedVPTeacher(str(teacher_dir))
    with torch.no_grad():
        teacher.unet.conv_out.weight[0, 0, 0, 0] = math.nan
    with pytest.raises(
        SFDConfigError, match="teacher holds non-finite values in 'unet.conv_out.weight'"
    ):
        SFDModule(teacher, ClassConditions(0, 1), UniformTimestepSigma())


NAN, INF = math.nan, math.inf
BAD_SETTINGS = [
    ({"alpha": NAN}, "alpha=nan"),
    ({"alpha": -1.0}, "alpha=-1.0"),
    ({"lambda_g_forget": INF}, "lambda_g_forget=inf"),
    ({"lambda_sg_remain": -0.5}, "lambda_sg_remain=-0.5"),
    ({"teacher_guidance": NAN}, "teacher_guidance=nan"),
    ({"override_guidance": -1.0}, "override_guidance=-1.0"),
    ({"cond_dropout": 1.0}, "cond_dropout=1.0"),
    # a guided fake score learns its unconditional branch only from dropped conditions
    ({"fake_train_guidance": 2.0, "cond_dropout": 0.0}, "fake_train_guidance=2.0 guides the fake"),
    ({"fake_eval_guidance": 0.5, "cond_dropout": 0.0}, "fake_eval_guidance=0.5 guides the fake"),
    # the teacher folder has no null class: no classifier-free guidance at all
    ({"override_guidance": 2.0}, "override_guidance=2.0 is classifier-free guidance, which needs"),
    ({"teacher_guidance": 0.0}, "teacher_guidance=0.0 is classifier-free guidance, which needs"),
    ({"ema_decay": NAN}, "ema_decay=nan"),
    ({"generator_grad_clip": 0.0}, "generator_grad_clip=0.0"),
    ({"fake_grad_clip": NAN}, "fake_grad_clip=nan"),
    ({"sigma_init": NAN}, "sigma_init=nan"),
    ({"batch_size": 0}, "batch_size=0"),
    ({"fake_optimizer": lambda p: torch.optim.Adam(p, lr=-1e-4)}, "fake_optimizer.*-0.0001"),
    ({"generator_optimizer": lambda p: torch.optim.Adam(p, lr=NAN)}, "generator_optimizer.*nan"),
    ({"generator_optimizer": lambda p: torch.optim.SGD(p, lr=NAN)}, "generator_optimizer.lr=nan"),
    ({"fake_optimizer": lambda p: torch.optim.SGD(p, lr=INF)}, "fake_optimizer.lr=inf"),
    (
        {"fake_optimizer": lambda p: torch.optim.Adam(p, lr=1e-4, betas=(0.0, 1.5))},
        "fake_optimizer.*1.5",
    ),
    ({"fake_optimizer": lambda p: torch.optim.Adam(p, eps=-1.0)}, "fake_optimizer.*-1.0"),
]


@pytest.mark.parametrize(("settings", "message"), BAD_SETTINGS, ids=lambda v: str(v)[:40])
def test_every_numeric_setting_is_checked_up_front(teacher_dir, settings, message) -> None:
    with pytest.raises(SFDConfigError, match=message):
        make(teacher_dir, **settings)


@pytest.mark.parametrize(
    ("make_sampler", "message"),
    [
        (lambda: LogUniformSigma(NAN, 1.0), "sigma_min=nan"),
        (lambda: LogNormalSigma(p_mean=NAN), "p_mean=nan"),
        (lambda: LogNormalSigma(p_std=INF), "p_std=inf"),
        (lambda: UniformTimestepSigma(1.5, 10), "t_min=1.5"),
    ],
)
def test_sigma_sampler_settings_are_checked(make_sampler, message) -> None:
    with pytest.raises(SFDConfigError, match=message):
        make_sampler()


class NaNAtIteration(SFDModule):
    """The generator's forget loss term turns NaN at one iteration (a fault injected)."""

    nan_at = 2

    def generator_losses(self, conds, rng, attacked=None):
        terms = super().generator_losses(conds, rng, attacked)
        if self.global_step == self.nan_at:
            terms.forget = terms.forget * math.nan
            terms.total = terms.total + terms.forget
        return terms


def test_a_nan_loss_stops_before_the_update_naming_term_iteration_and_checkpoint(
    teacher_dir, tmp_path
) -> None:
    module = make(teacher_dir, NaNAtIteration)
    with pytest.raises(NonFiniteError) as caught:
        trainer(tmp_path, steps=5).fit(module)
    message = str(caught.value)
    assert "generator/forget" in message and "iteration 2" in message
    assert "last.ckpt" in message  # where to resume from
    # The weights were never touched by the NaN: finite, and the checkpoint loads.
    assert all(torch.isfinite(p).all() for p in module.generator.parameters())
    last = tmp_path / "ckpt" / "last.ckpt"
    assert load_checkpoint_safely(last)["global_step"] == 2
    generator = generator_from_checkpoint(last)
    assert all(torch.isfinite(p).all() for p in generator.parameters())


class NonFiniteGradients(SFDModule):
    """Corrupts the generator's gradients after the backward pass: a few elements, or all."""

    corrupt_all = False

    def manual_backward(self, loss, *args, **kwargs) -> None:
        super().manual_backward(loss, *args, **kwargs)
        grads = [p.grad for p in self.generator.parameters() if p.grad is not None]
        if not grads or not self.generator.training:
            return
        if self.corrupt_all:
            for grad in grads:
                grad.fill_(math.nan)
        else:
            grads[0].view(-1)[:3] = torch.tensor([math.nan, math.inf, -math.inf])


@WATCHES
def test_a_few_nonfinite_gradients_are_counted_and_replaced(
    teacher_dir, tmp_path, sync_free
) -> None:
    module = make(teacher_dir, NonFiniteGradients)
    module._watch = watch_of(sync_free)
    fitted = trainer(tmp_path, steps=2)
    fitted.fit(module)
    # the count so far in this fit, read back at the last iteration: 3 elements in each of 2
    assert fitted.callback_metrics["nonfinite_grads/generator"] == 6
    assert fitted.callback_metrics["nonfinite_grads/fake_score"] == 0
    assert all(torch.isfinite(p).all() for p in module.generator.parameters())


@WATCHES
def test_a_wholly_nonfinite_update_stops(teacher_dir, tmp_path, sync_free) -> None:
    module = make(teacher_dir, NonFiniteGradients)
    module._watch = watch_of(sync_free)
    module.corrupt_all = True
    with pytest.raises(
        NonFiniteError, match="every generator gradient element is non-finite at iteration 0"
    ) as caught:
        trainer(tmp_path, steps=2).fit(module)
    assert "No checkpoint was written" in str(caught.value)  # the save after it was refused
    assert not (tmp_path / "ckpt" / "last.ckpt").exists()
    assert all(torch.isfinite(p).all() for p in module.generator.parameters())


def test_a_broken_update_is_caught_at_the_next_log_step_without_a_checkpoint(
    teacher_dir, tmp_path
) -> None:
    """No checkpoint callback: the read-back at the logger's interval stops the run."""
    module = make(teacher_dir, NonFiniteGradients)
    module.corrupt_all = True
    fitted = quiet_trainer(tmp_path, 20, log_every_n_steps=3)
    with pytest.raises(NonFiniteError, match="non-finite at iteration 0; training stopped at it"):
        fitted.fit(module)
    assert module.global_step == 3


def test_no_checkpoint_is_written_from_nonfinite_weights(teacher_dir, tmp_path) -> None:
    module = make(teacher_dir)
    with torch.no_grad():
        next(module.fake_score.parameters()).fill_(math.nan)
    checkpoint = {"state_dict": {}}
    with pytest.raises(NonFiniteError, match="fake_score holds non-finite values"):
        module.on_save_checkpoint(checkpoint)


def test_cli_exit_statuses(teacher_dir, tmp_path, capsys) -> None:
    """A bad value: one line, exit 2, no run folder. A diverging run: one line, exit 1."""
    bad = fit_args(teacher_dir, tmp_path / "bad", "--model.alpha", ".nan")  # YAML NaN
    assert main(bad) == 2
    assert (
        capsys.readouterr().err.strip().splitlines()[-1].startswith("sfd: error: model.alpha=nan")
    )
    lr = "--model.generator_optimizer.init_args.lr"
    diverging = fit_args(teacher_dir, tmp_path / "run", lr, "1e10", "--trainer.max_steps", "6")
    assert main(diverging) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("sfd: error: non-finite loss") and "iteration" in error


@WATCHES
def test_the_watch_repairs_counts_and_remembers_the_first_bad_iteration(sync_free) -> None:
    """Elements repaired as the reference does, counted, the first failure kept."""
    watch = watch_of(sync_free)
    a, b = torch.tensor([1.0, math.nan, math.inf]), torch.tensor([-math.inf])
    watch.gradients("generator", [a, b], 3)
    assert a.tolist() == [1.0, 0.0, 1e5] and b.tolist() == [-1e5]  # NaN -> 0, ±inf -> ±1e5
    for iteration in (5, 7):  # two wholly non-finite updates: the first one is remembered
        watch.gradients("generator", [torch.full((2,), math.nan)], iteration)
    finite = {"remain": torch.tensor(1.0), "forget": torch.tensor(2.0)}
    watch.loss_terms("fake_score", finite, 6)
    watch.loss_terms("fake_score", {"remain": torch.tensor(1.0), "forget": torch.tensor(INF)}, 6)
    report = watch.report()
    assert report == {
        "replaced:generator": 7,
        "whole:generator": 5,
        "loss:fake_score/remain": -1,
        "loss:fake_score/forget": 6,
    }
    assert NonFiniteWatch.first_failure(report) == (
        5,
        "every generator gradient element is non-finite",
    )
    # at the same iteration the loss, which comes first in an update, is named
    tie = {"whole:generator": 4, "loss:generator/forget": 4, "replaced:generator": 9}
    assert NonFiniteWatch.first_failure(tie) == (4, "non-finite loss generator/forget")
    assert NonFiniteWatch.first_failure({"replaced:generator": 9}) is None


@WATCHES
def test_finite_gradients_pass_the_watch_unchanged(sync_free) -> None:
    """Finite updates: values bit-identical (-0.0 and subnormals too), nothing counted or marked."""
    grads = [torch.tensor([-0.0, 1e-45, 3.0e38]), torch.randn(4, 3), torch.randn(5).bfloat16()]
    before = [g.clone() for g in grads]
    watch = watch_of(sync_free)
    for iteration in range(3):
        watch.gradients("fake_score", grads, iteration)
    for g, b in zip(grads, before, strict=True):
        assert torch.equal(g, b) and torch.equal(torch.signbit(g), torch.signbit(b))
    report = watch.report()
    assert report.get("replaced:fake_score", 0) == 0
    assert NonFiniteWatch.first_failure(report) is None


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_the_fused_check_and_the_count_against_isfinite(bad) -> None:
    """Oracle: torch.isfinite element by element, one bad element in any tensor of any dtype."""
    dtypes = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
    for where in range(len(dtypes)):
        grads = [torch.randn(3, 2, dtype=d) for d in dtypes]
        grads[where][1, 0] = bad
        expected = sum(int((~torch.isfinite(g)).sum()) for g in grads)
        assert expected == 1
        assert any_nonfinite(grads) and int(count_nonfinite(grads)) == expected
        assert torch.isnan(grads[where][1, 0]) or grads[where][1, 0] == bad  # left as it was
    assert not any_nonfinite([torch.randn(4), torch.empty(0)]) and not any_nonfinite([])


def test_the_fused_check_under_a_float64_default_dtype() -> None:
    """Lightning's 64-bit precision sets the default dtype to float64 inside the step."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        grads = [torch.randn(3), torch.randn(2, dtype=torch.float32)]
        assert not any_nonfinite(grads)
        grads[0][1] = float("nan")
        assert any_nonfinite(grads)
    finally:
        torch.set_default_dtype(previous)
