"""The details of one SFD iteration that change results (docs/method.md §4): where condition
dropout applies, when it happens, the networks' train/eval modes, clipping per network, t_init."""

from __future__ import annotations

import pytest
import torch
from conftest import quiet_trainer, tiny_unet
from diffusers import DDPMScheduler
from torch import nn

from sfd.core.conditions import ClassConditions
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.errors import SFDConfigError
from sfd.teachers import VPUNetDenoiser

NULL = 10


def class_teacher(dropout: float = 0.0) -> VPUNetDenoiser:
    """A tiny 10-class VP teacher with a null class (label 10) for guidance."""
    scheduler = DDPMScheduler(beta_start=1e-4, beta_end=0.02, prediction_type="epsilon")
    return VPUNetDenoiser(
        tiny_unet(num_class_embeds=11, dropout=dropout), scheduler, null_class=NULL
    )


def module_for(teacher: VPUNetDenoiser, **settings) -> SFDModule:
    settings = {"batch_size": 8, "ema_decay": None, "steps_per_epoch": 10, **settings}
    return SFDModule(teacher, ClassConditions(0, 1), UniformTimestepSigma(), **settings)


class CallLog:
    """For every call of the generator's and the fake score's network: labels and mode."""

    def __init__(self, module: SFDModule) -> None:
        self.calls: list[tuple[str, torch.Tensor, bool]] = []
        for name, net in (
            ("generator", module.generator.denoiser.unet),
            ("fake", module.fake_score.unet),
        ):
            net.register_forward_pre_hook(self.hook(name, net), with_kwargs=True)

    def hook(self, name: str, net: nn.Module):
        def record(module, args, kwargs) -> None:
            self.calls.append((name, kwargs["class_labels"].clone(), net.training))

        return record


def one_iteration(module: SFDModule) -> None:
    quiet_trainer().fit(module)


@pytest.mark.parametrize(
    ("fake_train", "fake_eval", "drops"),
    [(4.5, 1.0, True), (1.0, 4.5, True), (1.0, 1.0, False)],
)
def test_dropout_reaches_the_generator_whenever_the_fake_score_is_guided(
    fake_train: float, fake_eval: float, drops: bool
) -> None:
    """The dropped (null) labels are what the generator samples for and the fake score learns."""
    module = module_for(
        class_teacher(),
        fake_train_guidance=fake_train,
        fake_eval_guidance=fake_eval,
        cond_dropout=0.5,
    )
    assert module.drops_conditions is drops
    log = CallLog(module)
    one_iteration(module)
    # The fake-score step is everything before the generator's third call; each of its two
    # terms is generator(c) followed by fake(c) (and fake(null) when guided in its own loss).
    starts = [i for i, (name, _, _) in enumerate(log.calls) if name == "generator"]
    assert len(starts) == 4
    for begin, end in ((starts[0], starts[1]), (starts[1], starts[2])):
        (_, sampled, _), *fake_calls = log.calls[begin:end]
        assert torch.equal(fake_calls[0][1], sampled)  # the fake score learns the same labels
        assert ((sampled == NULL).sum().item() > 0) is drops  # cond_dropout 0.5 of 8 labels
        if fake_train != 1.0:
            assert torch.equal(fake_calls[1][1], torch.full_like(sampled, NULL))
    # Generator step: no dropout (the reference drops only in the fake score's step).
    generator_step = [labels for name, labels, _ in log.calls[starts[2] :] if name == "generator"]
    assert all(not (labels == NULL).any() for labels in generator_step)


def test_networks_are_in_the_reference_modes_inside_each_step() -> None:
    """Fake-score step: generator eval, fake score train; generator step: the other way round."""
    module = module_for(class_teacher(dropout=0.1))
    log = CallLog(module)
    one_iteration(module)
    fake_step, generator_step = log.calls[:4], log.calls[4:]
    assert [(n, m) for n, _, m in fake_step] == [
        ("generator", False),
        ("fake", True),
        ("generator", False),
        ("fake", True),
    ]
    assert [(n, m) for n, _, m in generator_step] == [
        ("generator", True),
        ("fake", False),
        ("generator", True),
        ("fake", False),
    ]
    assert not module.teacher.training


def test_dropout_network_modes_change_the_result() -> None:
    """With dropout in the network, eval-mode sampling is deterministic, train mode is not."""
    generator = module_for(class_teacher(dropout=0.5)).generator
    z, labels = torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        assert torch.equal(generator.eval()(z, labels), generator(z, labels))
        assert not torch.equal(generator.train()(z, labels), generator(z, labels))


class GradientRecorder(SFDModule):
    """Keeps each network's gradients after clipping (at the optimizer step)."""

    def on_before_optimizer_step(self, optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        self.seen = getattr(self, "seen", [])
        self.seen.append(
            max(p.grad.abs().max().item() for g in optimizer.param_groups for p in g["params"])
        )


def test_each_network_has_its_own_clipping() -> None:
    teacher = VPUNetDenoiser(tiny_unet(), DDPMScheduler(beta_start=1e-4, beta_end=0.02))
    module = GradientRecorder(
        teacher,
        ClassConditions(0, 1),
        UniformTimestepSigma(),
        batch_size=8,
        ema_decay=None,
        fake_grad_clip=None,
        generator_grad_clip=1e-3,
    )
    one_iteration(module)
    fake_max, generator_max = module.seen
    assert fake_max > 1e-3  # unclipped (the SD presets: the reference clips no fake score)
    assert generator_max == pytest.approx(1e-3)


def test_t_init_is_the_exact_reference_timestep() -> None:
    teacher = VPUNetDenoiser(tiny_unet(), DDPMScheduler(beta_start=1e-4, beta_end=0.02))
    module = SFDModule(teacher, ClassConditions(0, 1), UniformTimestepSigma(), t_init=440)
    alphas_cumprod = DDPMScheduler(beta_start=1e-4, beta_end=0.02).alphas_cumprod.double()
    expected = ((1 - alphas_cumprod[440]) / alphas_cumprod[440]).sqrt().item()
    assert module.generator.sigma_init == pytest.approx(expected, rel=1e-6)
    assert module.generator.sigma_init == pytest.approx(2.50233, abs=1e-5)  # not 2.5
    assert module.generator.t_init == 440
    # the network sees exactly the integer timestep
    from sfd.teachers import sigma_to_t

    t = sigma_to_t(torch.tensor([module.generator.sigma_init]), teacher.sigma_table)
    assert t.item() == 440.0
    with pytest.raises(SFDConfigError, match="not both"):
        SFDModule(
            teacher, ClassConditions(0, 1), UniformTimestepSigma(), sigma_init=2.5, t_init=440
        )
    with pytest.raises(SFDConfigError, match="t_init=1000"):
        SFDModule(teacher, ClassConditions(0, 1), UniformTimestepSigma(), t_init=1000)


def test_the_sigma_table_stays_float32_under_half_precision() -> None:
    teacher = class_teacher()
    table = teacher.sigma_table.clone()
    half = teacher.to(torch.bfloat16)
    assert half.sigma_table.dtype == torch.float32 and torch.equal(half.sigma_table, table)
    assert half.unet.dtype == torch.bfloat16
    # the input dtype the denoiser caches follows every .to(): bf16 inputs now, float32 after
    x = torch.randn(2, *teacher.sample_shape)
    labels = torch.tensor([0, 1])
    assert half.network_dtype(half.unet) == torch.bfloat16
    assert half(x, 1.0, labels).dtype == torch.float32  # ran in bf16, returned as float32
    back = half.to(torch.float32)
    assert back.network_dtype(back.unet) == torch.float32
    assert back(x, 1.0, labels).dtype == torch.float32
    # in bf16 the table itself would collide: the guard is not cosmetic
    assert len(torch.unique(table[38:712].to(torch.bfloat16))) < 712 - 38


@pytest.mark.parametrize("precision", ["bf16-true", "16-true"])
def test_true_half_precision_is_refused_with_the_mixed_alternative(precision, tmp_path) -> None:
    module = module_for(class_teacher())
    trainer = quiet_trainer(tmp_path, precision=precision)
    mixed = "16-mixed" if precision.startswith("16") else "bf16-mixed"
    with pytest.raises(SFDConfigError, match=mixed):
        trainer.fit(module)
