"""One `SFDModule` iteration on a flow-matching teacher against a hand-written flow-time iteration.

The flow form, written directly on the SD3 transformers (no sfd code but the condition draw):
x_t = (1 − t)·x0 + t·ε with t = sigmoid(m + s·n) (logit-normal, clamped); the generator is one
Euler step from pure noise at t_init, x0 = z − t_init·v(z, t_init); denoised estimates are
x̂0 = x_t − t·v; the fake-score loss is the velocity MSE weighted by (1 − t)²,
(1 − t)²·Σ(v̂ − (ε − x0))², which is σ-space's ε-weighted DSM Σ(x̂0 − x0)²/σ² with σ = t/(1 − t);
the generator loss is SiD's on x̂0. Losses, gradients, the weights after an SGD step and the EMA
must match what `SFDModule` computes in σ-space.
"""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from conftest import quiet_trainer
from sd_fixtures import celebrity_conditions

from sfd.core.module import SFDModule
from sfd.core.sigma import LogitNormalTime
from sfd.teachers import SD3Teacher

pytestmark = pytest.mark.usefixtures("single_thread")
BATCH, T_INIT, ALPHA, LR, CLIP, EMA = 2, 0.9, 1.2, 1e-2, 1.0, 0.9
MEAN, STD, T_MIN, T_MAX = 0.2, 1.1, 0.05, 0.95
WEIGHTS = {"sg_remain": 1.0, "sg_forget": 0.5, "g_remain": 1.0, "g_forget": 0.7}


def make_module(folder: str) -> SFDModule:
    sgd = lambda params: torch.optim.SGD(params, lr=LR)  # noqa: E731
    return SFDModule(
        SD3Teacher(folder, max_sequence_length=8),
        celebrity_conditions(),
        LogitNormalTime(MEAN, STD, T_MIN, T_MAX),
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
        seed=5,
        steps_per_epoch=1,
    )


def reference_iteration(module: SFDModule) -> dict[str, object]:
    teacher = module.teacher.transformer
    fake = copy.deepcopy(module.fake_score.transformer)
    generator = copy.deepcopy(module.generator.denoiser.transformer)
    ema = copy.deepcopy(generator)
    pooled_dim = teacher.config.pooled_projection_dim
    shape = (BATCH, *module.teacher.sample_shape)

    def velocity(net, x_t, t, cond):
        embeds = cond.prompt_embeds
        return net(
            hidden_states=x_t,
            encoder_hidden_states=embeds[:, 1:],
            pooled_projections=embeds[:, 0, :pooled_dim],
            timestep=1000 * t,
        ).sample

    def run_generator(net, z, cond):
        return z - T_INIT * velocity(net, z, torch.full((BATCH,), T_INIT), cond)

    def draws(rng):
        z = torch.randn(shape, generator=rng)
        t = torch.sigmoid(MEAN + STD * torch.randn(BATCH, generator=rng)).clamp(T_MIN, T_MAX)
        return z, t, torch.randn(shape, generator=rng)

    def sg_loss(x0, t, cond, eps):
        tb = t.view(-1, 1, 1, 1)
        v_hat = velocity(fake, (1 - tb) * x0 + tb * eps, t, cond)
        return ((1 - tb) ** 2 * (v_hat - (eps - x0)) ** 2).sum(dim=(1, 2, 3)).mean()

    def g_loss(x0, t, teacher_cond, cond, eps):
        tb = t.view(-1, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * eps
        p_x = x_t - tb * velocity(teacher, x_t, t, teacher_cond)
        sg_x = x_t - tb * velocity(fake, x_t, t, cond)
        with torch.no_grad():
            omega = (p_x - x0).abs().mean(dim=[1, 2, 3], keepdim=True).clamp(min=1e-5)
        loss = (p_x - sg_x) * ((p_x - x0) - ALPHA * (p_x - sg_x)) / omega
        return loss.sum(dim=(1, 2, 3)).mean()

    conds = module.conditions.sample(BATCH, module._stream(0), 1, 0)
    losses = {}
    fake_rng = module._stream(1)
    for key, cond in (("sg_remain", conds.remain), ("sg_forget", conds.forget)):
        z, t, eps = draws(fake_rng)
        with torch.no_grad():
            x0 = run_generator(generator, z, cond)
        losses[key] = sg_loss(x0, t, cond, eps)
    (
        WEIGHTS["sg_remain"] * losses["sg_remain"] + WEIGHTS["sg_forget"] * losses["sg_forget"]
    ).backward()
    torch.nn.utils.clip_grad_value_(fake.parameters(), CLIP)
    fake_grads = [p.grad.clone() for p in fake.parameters()]
    torch.optim.SGD(fake.parameters(), lr=LR).step()

    generator_rng = module._stream(2)
    fake.requires_grad_(False)
    teacher.requires_grad_(False)
    pairs = (("g_remain", conds.remain, conds.remain), ("g_forget", conds.forget, conds.override))
    for key, cond, teacher_cond in pairs:
        z, t, eps = draws(generator_rng)
        losses[key] = g_loss(run_generator(generator, z, cond), t, teacher_cond, cond, eps)
    (WEIGHTS["g_remain"] * losses["g_remain"] + WEIGHTS["g_forget"] * losses["g_forget"]).backward()
    torch.nn.utils.clip_grad_value_(generator.parameters(), CLIP)
    generator_grads = [p.grad.clone() for p in generator.parameters()]
    torch.optim.SGD(generator.parameters(), lr=LR).step()
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
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.logged = {k: v.clone() for k, v in trainer.callback_metrics.items()}


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    # σ-space and flow time differ only by float rounding of the same arithmetic
    torch.testing.assert_close(a, b, rtol=1e-3, atol=2e-5)


def test_one_flow_iteration_equals_the_hand_written_flow_iteration(flow_dirs, tmp_path) -> None:
    module = make_module(str(flow_dirs["sd3"]))
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    reference = reference_iteration(module)
    recorder = Recorder()
    quiet_trainer(tmp_path, callbacks=[recorder]).fit(module)

    names = {"sg_remain": "fake/remain", "sg_forget": "fake/forget"}
    names |= {"g_remain": "generator/remain", "g_forget": "generator/forget"}
    for key, name in names.items():
        close(recorder.logged[name], reference["losses"][key])
    fake_net = module.fake_score.transformer
    generator_net = module.generator.denoiser.transformer
    for ours, theirs in zip(fake_net.parameters(), reference["fake_grads"], strict=True):
        close(ours.grad, theirs)
    for ours, theirs in zip(generator_net.parameters(), reference["generator_grads"], strict=True):
        close(ours.grad, theirs)
    for ours, theirs in (
        (fake_net, reference["fake"]),
        (generator_net, reference["generator"]),
        (module.ema.denoiser.transformer, reference["ema"]),
    ):
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            close(a, b)
    assert all(torch.equal(teacher_before[k], v) for k, v in module.teacher.state_dict().items())
    assert reference["losses"]["g_forget"] != 0
