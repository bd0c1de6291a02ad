"""One `SFDModule` iteration on a flow-matching teacher against a hand-written flow-time iteration.

The flow form, written directly on the SD3 and Flux transformers (no sfd code but the condition
draw; Flux's packed 2×2 latents, image / text ids and guidance embedding input come from the stock
`FluxPipeline`'s own helpers, and the whole Flux iteration runs on packed tokens):
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
from diffusers import FluxPipeline
from sd_fixtures import celebrity_conditions

from sfd.core.module import SFDModule
from sfd.core.sigma import LogitNormalTime
from sfd.teachers import FluxTeacher, SD3Teacher

pytestmark = pytest.mark.usefixtures("single_thread")
BATCH, T_INIT, ALPHA, LR, CLIP, EMA = 2, 0.9, 1.2, 1e-2, 1.0, 0.9
MEAN, STD, T_MIN, T_MAX = 0.2, 1.1, 0.05, 0.95
WEIGHTS = {"sg_remain": 1.0, "sg_forget": 0.5, "g_remain": 1.0, "g_forget": 0.7}
GUIDANCE = (
    2.5  # Flux's embedded guidance input, not its default 3.5: the setting must reach the net
)


def make_teacher(family: str, folder: str):
    if family == "sd3":
        return SD3Teacher(folder, max_sequence_length=8)
    return FluxTeacher(folder, max_sequence_length=8, guidance=GUIDANCE, sample_size=8)


def make_module(family: str, folder: str, **settings: float) -> SFDModule:
    sgd = lambda params: torch.optim.SGD(params, lr=LR)  # noqa: E731
    return SFDModule(
        make_teacher(family, folder),
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
        **settings,
    )


def sd3_velocity(pooled_dim: int):
    """v(x_t, t, c) of an SD3 transformer on (B, C, H, W) latents: the timestep scaled to 0..1000."""

    def velocity(net, x_t, t, cond):
        embeds = cond.prompt_embeds  # row 0: the pooled projection; rows 1..: the sequence
        return net(
            hidden_states=x_t,
            encoder_hidden_states=embeds[:, 1:],
            pooled_projections=embeds[:, 0, :pooled_dim],
            timestep=1000 * t,
        ).sample

    return velocity


def flux_velocity(pooled_dim: int, height: int, width: int):
    """v(x_t, t, c) of a Flux transformer on packed tokens (B, H/2·W/2, 4C): the flow time itself
    (the transformer scales it), image ids of the 2×2 patches, zero text ids, the guidance input."""
    img_ids = FluxPipeline._prepare_latent_image_ids(
        1, height // 2, width // 2, "cpu", torch.float32
    )

    def velocity(net, x_t, t, cond):
        embeds = cond.prompt_embeds
        return net(
            hidden_states=x_t,
            timestep=t,
            guidance=torch.full((x_t.shape[0],), GUIDANCE),
            pooled_projections=embeds[:, 0, :pooled_dim],
            encoder_hidden_states=embeds[:, 1:],
            txt_ids=torch.zeros(embeds.shape[1] - 1, 3),
            img_ids=img_ids,
        ).sample

    return velocity


def reference_iteration(
    family: str, module: SFDModule, override_guidance: float = 1.0
) -> dict[str, object]:
    """The iteration in flow time; the teacher unguided on the remain term and guided at
    `override_guidance` on the override condition of the unlearning term, on the velocity:
    v = v(∅) + g·(v(c) − v(∅)), ∅ the empty prompt."""
    teacher = module.teacher.transformer
    fake = copy.deepcopy(module.fake_score.transformer)
    generator = copy.deepcopy(module.generator.denoiser.transformer)
    ema = copy.deepcopy(generator)
    pooled_dim = teacher.config.pooled_projection_dim
    shape = (BATCH, *module.teacher.sample_shape)  # the latents sfd draws noise in, (B, C, H, W)
    if family == "sd3":
        velocity, to_net = sd3_velocity(pooled_dim), lambda x: x
    else:  # the whole iteration on the packed tokens the Flux transformer sees
        velocity = flux_velocity(pooled_dim, *shape[2:])
        to_net = lambda x: FluxPipeline._pack_latents(x, *x.shape)  # noqa: E731

    def per_sample(t, x):  # flow times (B,) against samples of any layout
        return t.view(-1, *[1] * (x.dim() - 1))

    def total(x):  # per-sample sums, averaged over the batch
        return x.flatten(1).sum(dim=1).mean()

    def run_generator(net, z, cond):
        return z - T_INIT * velocity(net, z, torch.full((BATCH,), T_INIT), cond)

    def draws(rng):
        z = torch.randn(shape, generator=rng)
        t = torch.sigmoid(MEAN + STD * torch.randn(BATCH, generator=rng)).clamp(T_MIN, T_MAX)
        return to_net(z), t, to_net(torch.randn(shape, generator=rng))

    def sg_loss(x0, t, cond, eps):
        tb = per_sample(t, x0)
        v_hat = velocity(fake, (1 - tb) * x0 + tb * eps, t, cond)
        return total((1 - tb) ** 2 * (v_hat - (eps - x0)) ** 2)

    def g_loss(x0, t, teacher_cond, cond, eps, guidance=1.0):
        tb = per_sample(t, x0)
        x_t = (1 - tb) * x0 + tb * eps
        v_teacher = velocity(teacher, x_t, t, teacher_cond)
        if guidance != 1.0:
            v_null = velocity(teacher, x_t, t, teacher_cond.null())
            v_teacher = v_null + guidance * (v_teacher - v_null)
        p_x = x_t - tb * v_teacher
        sg_x = x_t - tb * velocity(fake, x_t, t, cond)
        with torch.no_grad():
            omega = per_sample((p_x - x0).abs().flatten(1).mean(dim=1).clamp(min=1e-5), x0)
        return total((p_x - sg_x) * ((p_x - x0) - ALPHA * (p_x - sg_x)) / omega)

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
    pairs = (
        ("g_remain", conds.remain, conds.remain, 1.0),
        ("g_forget", conds.forget, conds.override, override_guidance),
    )
    for key, cond, teacher_cond, guidance in pairs:
        z, t, eps = draws(generator_rng)
        x0 = run_generator(generator, z, cond)
        losses[key] = g_loss(x0, t, teacher_cond, cond, eps, guidance)
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


@pytest.mark.parametrize(
    ("family", "override_guidance"), [("sd3", None), ("flux", None), ("sd3", 3.0)]
)
def test_one_flow_iteration_equals_the_hand_written_flow_iteration(
    family, override_guidance, flow_dirs, tmp_path
) -> None:
    """Also with the teacher guided on the unlearning term's override alone (override_guidance;
    teacher_guidance 1 leaves the remain term unguided)."""
    settings = {} if override_guidance is None else {"override_guidance": override_guidance}
    module = make_module(family, str(flow_dirs[family]), **settings)
    teacher_before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    reference = reference_iteration(family, module, override_guidance or 1.0)
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
