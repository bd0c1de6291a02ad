"""ESD: the target against a hand computation on an exact Gaussian denoiser, and the prompt form."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import quiet_trainer
from gaussian import GaussianClassNet

from sfd.baselines import ESDModule, esd_loss, esd_target
from sfd.core.conditions import ClassConditions
from sfd.errors import SFDConfigError
from sfd.teachers import EDMDenoiser, PretrainedVPTeacher

STD = 0.5


def gaussian_teacher_with_null(num_classes: int = 4, shape=(1, 2, 2), seed: int = 0):
    """Class Gaussians N(μ_k, s²I) plus a null class K with its own mean, all exact denoisers."""
    g = torch.Generator().manual_seed(seed)
    means = 2.0 * torch.randn(num_classes + 1, *shape, generator=g)  # row K: the null class
    net = GaussianClassNet(means, STD)
    return EDMDenoiser(net, shape, num_classes=num_classes, null_class=num_classes), means


def exact_x0(mean: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """E[x0 | x] for x0 ~ N(mean, s²I), x = x0 + σε: mean + s²/(s²+σ²)·(x − mean)."""
    return mean + STD**2 / (STD**2 + sigma**2) * (x - mean)


@pytest.mark.parametrize("eta", [1.0, 2.5])
def test_esd_target_matches_hand_computation(eta: float) -> None:
    teacher, means = gaussian_teacher_with_null()
    forget, null = 2, 4
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 1, 2, 2, generator=g) * 3.0
    sigma = torch.tensor([0.3, 1.0, 4.0])
    labels = torch.full((3,), forget)
    target = esd_target(teacher, x, sigma, labels, eta)
    for i, s in enumerate(sigma.tolist()):
        # ε-space, as ESD writes it: ε_target = ε(∅) − η·(ε(c_f) − ε(∅)), ε = (x − x0)/σ.
        eps_null = (x[i] - exact_x0(means[null], x[i], s)) / s
        eps_forget = (x[i] - exact_x0(means[forget], x[i], s)) / s
        eps_target = eps_null - eta * (eps_forget - eps_null)
        torch.testing.assert_close(target[i], x[i] - s * eps_target, rtol=1e-5, atol=1e-5)


def test_esd_loss_is_the_epsilon_mse() -> None:
    teacher, means = gaussian_teacher_with_null()
    x = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.5, 2.0])
    labels = torch.tensor([1, 1])
    eta = 1.0
    loss = esd_loss(teacher(x, sigma, labels), esd_target(teacher, x, sigma, labels, eta), sigma)
    for i, s in enumerate(sigma.tolist()):
        eps_null = (x[i] - exact_x0(means[4], x[i], s)) / s
        eps_forget = (x[i] - exact_x0(means[1], x[i], s)) / s
        # the unchanged copy predicts ε(c_f); the target is ε(∅) − η(ε(c_f) − ε(∅))
        expected = ((eps_forget - (eps_null - eta * (eps_forget - eps_null))) ** 2).mean()
        assert math.isclose(loss[i].item(), expected.item(), rel_tol=1e-4)


def test_esd_refuses_a_teacher_without_null_class(tiny_teacher_dir) -> None:
    with pytest.raises(SFDConfigError, match="null condition"):
        ESDModule(PretrainedVPTeacher(str(tiny_teacher_dir)), ClassConditions(0, 1))
    with pytest.raises(SFDConfigError, match="train_parameters"):
        ESDModule.check_settings(train_parameters="attention")
    with pytest.raises(SFDConfigError, match="lr"):
        ESDModule.check_settings(lr=0.0)


def test_esd_prompt_form_on_stable_diffusion_trains_cross_attention_only(
    sd_dirs, single_thread, tmp_path
) -> None:
    from sd_fixtures import celebrity_conditions

    from sfd.core.ddim import ddim_sigmas, sample_ddim
    from sfd.teachers import StableDiffusionTeacher

    teacher = StableDiffusionTeacher(str(sd_dirs["epsilon"]))
    original = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = ESDModule(
        teacher,
        celebrity_conditions(),
        lr=1e-2,
        batch_size=2,
        ddim_steps=3,
        sample_guidance=3.0,
        train_parameters="xattn",
        steps_per_epoch=2,
    )
    quiet_trainer(tmp_path, steps=2).fit(module)
    student = module.unlearned().network
    changed = {
        name
        for name, value in student.state_dict().items()
        if not torch.equal(value, original[name])
    }
    assert changed and all("attn2." in name for name in changed)
    for name, value in module.teacher.state_dict().items():  # the teacher is untouched
        assert torch.equal(value, original[name]), name
    cond = module.conditions.sample(2, torch.Generator().manual_seed(0)).forget
    z = torch.randn(2, *teacher.sample_shape, generator=torch.Generator().manual_seed(0))
    images = sample_ddim(student, z, cond, ddim_sigmas(student.sigma_table, 2))
    assert torch.isfinite(images).all()
