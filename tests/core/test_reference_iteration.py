"""One `SFDModule` iteration against a hand-written iteration in the reference's own terms.

The reference (CIFAR-10 runner of the SFD authors' code) works in x_t space with ε-networks:
x_t = sqrt(ā)·x0 + sqrt(1 − ā)·ε, the generator is x0 = x_t/sqrt(ā_init) − σ_init·ε̂ at the integer
timestep t_init, the fake-score loss is Σ(ε − ε̂)², the generator loss is written with
p_x / sg_x = (x_t − sqrt(1 − ā)·ε̂)/sqrt(ā), and both networks are clipped by value and stepped
with the optimizer. Below that iteration is re-implemented directly on the UNets (no sfd code), on the
same random draws, and compared with what `SFDModule` computes in σ-space: losses, gradients,
weights after the step and the EMA.
"""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import torch
from conftest import quiet_trainer, tiny_unet
from diffusers import DDPMScheduler

from sfd.core.conditions import ClassConditions
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.teachers import VPUNetDenoiser

BATCH, T_INIT, T_MIN, T_MAX, ALPHA = 4, 440, 38, 712, 1.2
WEIGHTS = {"sg_remain": 1.0, "sg_forget": 0.5, "g_remain": 1.0, "g_forget": 0.7}
LR, CLIP, EMA = 1e-2, 1.0, 0.9


def make_module() -> SFDModule:
    teacher = VPUNetDenoiser(
        tiny_unet(num_class_embeds=10, seed=3),
        DDPMScheduler(beta_start=1e-4, beta_end=0.02, prediction_type="epsilon"),
    )
    # SGD, not the reference's Adam: Adam with β1 = 0 steps by ±lr·31.6 for any gradient far above
    # ε, so gradients equal to float noise (≈1e-7) would make the weights after the step differ
    # by sign flips; the optimizer is the same torch class either way.
    sgd = lambda params: torch.optim.SGD(params, lr=LR)  # noqa: E731
    return SFDModule(
        teacher,
        ClassConditions(forget=0, override=1),
        UniformTimestepSigma(T_MIN, T_MAX),
        t_init=T_INIT,
        alpha=ALPHA,
        lambda_sg_remain=WEIGHTS["sg_remain"],
        lambda_sg_forget=WEIGHTS["sg_forget"],
        lambda_g_remain=WEIGHTS["g_remain"],
        lambda_g_forget=WEIGHTS["g_forget"],
        batch_size=BATCH,
        fake_optimizer=sgd,
        generator_optimizer=sgd,
        fake_grad_clip=CLIP,
        generator_grad_clip=CLIP,
        ema_decay=EMA,
        seed=7,
        steps_per_epoch=1,
    )


def reference_iteration(module: SFDModule) -> dict[str, object]:
    """The reference's iteration on copies of the module's (untrained) UNets."""
    teacher = module.teacher.unet
    fake = copy.deepcopy(module.fake_score.unet)
    generator = copy.deepcopy(module.generator.denoiser.unet)
    ema = copy.deepcopy(generator)
    alphas_cumprod = DDPMScheduler(beta_start=1e-4, beta_end=0.02).alphas_cumprod  # float32
    a_init, b_init = alphas_cumprod[T_INIT].sqrt(), (1 - alphas_cumprod[T_INIT]).sqrt()
    sigma_init = (1 / alphas_cumprod[T_INIT] - 1).sqrt()
    shape = (BATCH, 1, 8, 8)

    def run_generator(net, z, c):  # the reference's run_generator + x0_from_noise
        x_t = b_init * z
        eps = net(x_t, torch.full((BATCH,), float(T_INIT)), class_labels=c).sample
        return x_t / a_init - sigma_init * eps

    def sg_loss(x0, t, c, e):  # sid_sg_loss_conditional
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        x = x0 * a.sqrt() + e * (1 - a).sqrt()
        return (e - fake(x, t.float(), class_labels=c).sample).square().sum(dim=(1, 2, 3)).mean()

    def g_loss(x0, t, p_c, sg_c, e):  # sid_g_loss_conditional, alpha != 1
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        aa, bb = a.sqrt(), (1 - a).sqrt()
        x = x0 * aa + e * bb
        sg_x = (x - bb * fake(x, t.float(), class_labels=sg_c).sample) / aa
        p_x = (x - bb * teacher(x, t.float(), class_labels=p_c).sample) / aa
        with torch.no_grad():
            omega = (p_x - x0).abs().mean(dim=[1, 2, 3], keepdim=True).clamp(min=1e-5)
        loss = (p_x - sg_x) * ((p_x - x0) - ALPHA * (p_x - sg_x)) / omega
        return loss.sum(dim=(1, 2, 3)).mean()

    # The same draws as the module: conditions, then per term z, t, ε (fixed streams).
    conditions = module._stream(0)
    remain = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9])[
        torch.randint(9, (BATCH,), generator=conditions)
    ]
    torch.randint(1, (BATCH,), generator=conditions)  # which forget class (one here)
    forget, override = torch.zeros(BATCH, dtype=torch.long), torch.ones(BATCH, dtype=torch.long)

    def draws(rng):
        z = torch.randn(shape, generator=rng)
        t = torch.randint(T_MIN, T_MAX, (BATCH,), generator=rng)
        return z, t, torch.randn(shape, generator=rng)

    # sg step (generator in eval mode, no grad), then clip by value and Adam.
    fake_rng = module._stream(1)
    fake_optimizer = torch.optim.SGD(fake.parameters(), lr=LR)
    losses = {}
    for key, c in (("sg_remain", remain), ("sg_forget", forget)):
        z, t, e = draws(fake_rng)
        with torch.no_grad():
            x0 = run_generator(generator, z, c)
        losses[key] = sg_loss(x0, t, c, e)
    (
        WEIGHTS["sg_remain"] * losses["sg_remain"] + WEIGHTS["sg_forget"] * losses["sg_forget"]
    ).backward()
    torch.nn.utils.clip_grad_value_(fake.parameters(), CLIP)
    fake_grads = [p.grad.clone() for p in fake.parameters()]
    fake_optimizer.step()

    # g step: teacher sees c_r on remain and the OVERRIDE c_o where the generator saw c_f.
    generator_rng = module._stream(2)
    generator_optimizer = torch.optim.SGD(generator.parameters(), lr=LR)
    fake.requires_grad_(False)
    for key, c, p_c in (("g_remain", remain, remain), ("g_forget", forget, override)):
        z, t, e = draws(generator_rng)
        losses[key] = g_loss(run_generator(generator, z, c), t, p_c, c, e)
    (WEIGHTS["g_remain"] * losses["g_remain"] + WEIGHTS["g_forget"] * losses["g_forget"]).backward()
    torch.nn.utils.clip_grad_value_(generator.parameters(), CLIP)
    generator_grads = [p.grad.clone() for p in generator.parameters()]
    generator_optimizer.step()
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), generator.parameters(), strict=True):
            p_ema.lerp_(p, 1 - EMA)
    return {
        "losses": {k: v.detach() for k, v in losses.items()},
        "fake_grads": fake_grads,
        "generator_grads": generator_grads,
        "fake": fake,
        "generator": generator,
        "ema": ema,
    }


class Recorder(pl.Callback):
    """The logged loss terms of the iteration."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged = {k: v.clone() for k, v in trainer.callback_metrics.items()}


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    # σ-space and x_t-space differ only by float rounding of the same arithmetic
    torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-5)


def test_one_iteration_equals_the_reference_iteration(tmp_path) -> None:
    module = make_module()
    assert module.generator.sigma_init == float(module.teacher.sigma_table[T_INIT])
    reference = reference_iteration(module)
    recorder = Recorder()
    trainer = quiet_trainer(tmp_path, callbacks=[recorder])
    trainer.fit(module)

    names = {"sg_remain": "fake/remain", "sg_forget": "fake/forget"}
    names |= {"g_remain": "generator/remain", "g_forget": "generator/forget"}
    for key, name in names.items():
        close(recorder.logged[name], reference["losses"][key])
    for ours, theirs in zip(
        module.fake_score.unet.parameters(), reference["fake_grads"], strict=True
    ):
        close(ours.grad, theirs)
    generator_unet = module.generator.denoiser.unet
    for ours, theirs in zip(generator_unet.parameters(), reference["generator_grads"], strict=True):
        close(ours.grad, theirs)
    for ours, theirs in (
        (module.fake_score.unet, reference["fake"]),
        (generator_unet, reference["generator"]),
        (module.ema.denoiser.unet, reference["ema"]),
    ):
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            close(a, b)
    assert any(g.abs().max() == CLIP for g in reference["fake_grads"])  # clipping was exercised
