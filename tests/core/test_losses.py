"""The SFD losses and training step against an analytic Gaussian teacher with an exact denoiser."""

from __future__ import annotations

import copy
from functools import partial

import lightning.pytorch as pl
import pytest
import torch
from gaussian import gaussian_teacher

from sfd.core.conditions import ClassConditions, ConditionBatch
from sfd.core.losses import fake_score_loss, generator_loss
from sfd.core.module import SFDModule, default_adam
from sfd.core.sigma import LogUniformSigma


def class_samples(teacher, labels: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Exact samples of the teacher's class Gaussians."""
    net = teacher.net
    noise = torch.randn((len(labels), *teacher.sample_shape), generator=g)
    return net.means[labels].detach() + net.log_std.exp().detach() * noise


def test_fake_score_loss_is_minimised_by_the_true_denoiser() -> None:
    teacher = gaussian_teacher()
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(4, (40_000,), generator=g)
    x_g = class_samples(teacher, labels, g)
    sigma = LogUniformSigma(0.1, 10).sample(len(labels), g, None)
    x = x_g + sigma.view(-1, 1, 1, 1) * torch.randn(x_g.shape, generator=g)

    def loss_and_grad(net):
        loss = fake_score_loss(net(x, sigma, labels), x_g, sigma).mean()
        grads = torch.autograd.grad(loss, list(net.parameters()))
        return loss.item(), torch.cat([gr.flatten() for gr in grads]).norm().item()

    true_loss, true_grad = loss_and_grad(teacher.net)
    for shift, log_std_shift in [(0.3, 0.0), (0.0, 0.3), (-0.2, -0.2)]:
        perturbed = copy.deepcopy(teacher.net)
        with torch.no_grad():
            perturbed.means += shift
            perturbed.log_std += log_std_shift
        loss, grad = loss_and_grad(perturbed)
        assert loss > true_loss
        assert true_grad < 0.2 * grad


def test_generator_loss_formula_and_gradient_paths() -> None:
    g = torch.Generator().manual_seed(1)
    teacher_x0, fake_x0, x_g = (torch.randn(3, 1, 2, 2, generator=g) for _ in range(3))
    alpha = 1.2
    omega = (x_g - teacher_x0).abs().mean((1, 2, 3))
    gap = teacher_x0 - fake_x0
    expected = (
        (1 - alpha) * gap.pow(2).sum((1, 2, 3)) + (gap * (fake_x0 - x_g)).sum((1, 2, 3))
    ) / omega
    torch.testing.assert_close(generator_loss(teacher_x0, fake_x0, x_g, alpha), expected)
    # ω is detached: the gradient w.r.t. x_g is only the explicit −gap/ω term.
    x_g.requires_grad_(True)
    generator_loss(teacher_x0, fake_x0, x_g, alpha).sum().backward()
    torch.testing.assert_close(x_g.grad, -gap / omega.view(-1, 1, 1, 1))


def make_module(teacher, lr: float = 0.03, module_class=SFDModule, **kwargs) -> SFDModule:
    optimizer = partial(default_adam, lr=lr)
    settings = dict(
        batch_size=128,
        alpha=1.2,
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        ema_decay=None,
        fake_optimizer=optimizer,
        generator_optimizer=optimizer,
    )
    settings.update(kwargs)
    return module_class(teacher, ClassConditions(0, 1), LogUniformSigma(0.1, 10), **settings)


def test_remain_gradient_vanishes_when_generator_fake_and_teacher_agree() -> None:
    """With G = fake = teacher the distillation term has zero gradient; the forget term does not."""
    module = make_module(gaussian_teacher())
    conds = module.conditions.sample(128, torch.Generator().manual_seed(0))
    generator_params = list(module.generator.parameters())

    def grad_norm(term_conds: ConditionBatch, use_forget: bool) -> float:
        module.zero_grad()
        rng = torch.Generator().manual_seed(5)
        if use_forget:
            loss = module._generator_term(term_conds.forget, term_conds.override, rng).mean()
        else:
            loss = module._generator_term(term_conds.remain, term_conds.remain, rng).mean()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in generator_params]).abs().max().item()

    assert grad_norm(conds, use_forget=False) < 1e-6
    assert grad_norm(conds, use_forget=True) > 1e-2


class TeacherSeesForgetModule(SFDModule):
    """A deliberately wrong variant: the teacher is given c_f instead of the override c_o."""

    def generator_losses(self, conds, rng, attacked=None):
        wrong = ConditionBatch(conds.remain, conds.forget, conds.forget)
        return super().generator_losses(wrong, rng, attacked)


def generated_means(module: SFDModule, num_classes: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(
            [
                module.generator.sample(
                    torch.full((4000,), k), 4000, torch.Generator().manual_seed(k)
                ).mean(0)
                for k in range(num_classes)
            ]
        )


def fit(module: SFDModule, steps: int) -> None:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    assert trainer.global_step == steps  # one iteration = one fake + one generator update


@pytest.mark.parametrize("module_class", [SFDModule, TeacherSeesForgetModule])
def test_sfd_moves_forget_class_to_override_and_keeps_remain(module_class) -> None:
    teacher = gaussian_teacher()
    true_means = teacher.net.means.detach().clone()
    module = make_module(teacher, module_class=module_class)
    fit(module, 600)
    means = generated_means(module, 4)
    distance = (means - true_means).flatten(1).norm(dim=1)  # (K,) to each class's own mean
    to_override = (means[0] - true_means[1]).norm().item()
    separation = (true_means[0] - true_means[1]).norm().item()
    assert torch.equal(teacher.net.means.detach(), true_means)  # the teacher never moves
    assert (distance[1:] < 0.1 * separation).all(), distance  # remain classes are kept
    if module_class is SFDModule:
        assert to_override < 0.1 * separation
    else:  # the wrong wiring keeps the forget class where it was: the check above would fail
        assert distance[0] < 0.1 * separation
        assert to_override > 0.5 * separation
