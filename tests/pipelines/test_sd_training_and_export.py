"""Stable Diffusion SFD iterations on tiny pipelines: roles of every network, export, reload, sampling."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from grids import assert_tiles
from lightning.pytorch.callbacks import ModelCheckpoint
from peft.tuners.lora import LoraLayer
from PIL import Image
from safetensors.torch import load_file
from sd_fixtures import NEGATIVE, celebrity_conditions

from sfd.cli import main
from sfd.core.checkpoint_files import load_checkpoint_safely
from sfd.core.conditions import TextCondition
from sfd.core.generator import generator_from_checkpoint
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.errors import SFDConfigError
from sfd.pipelines.io import PretrainedOneStepGenerator, load_pipeline, save_generator
from sfd.pipelines.one_step_text import OneStepTextPipeline
from sfd.teachers.stable_diffusion import StableDiffusionLoRAFakeScore, StableDiffusionTeacher

pytestmark = pytest.mark.usefixtures("single_thread")


@dataclass
class CallLog:
    """The `encoder_hidden_states` every UNet received, in order, split at each condition draw."""

    steps: list[dict] = field(default_factory=list)

    def record(self, name: str):
        def hook(module, args, kwargs) -> None:
            self.steps[-1]["calls"].append((name, kwargs["encoder_hidden_states"].detach().clone()))

        return hook


def observe(module: SFDModule) -> CallLog:
    """Record (not replace) every UNet call and every condition draw of a module."""
    log = CallLog()
    sample = module.conditions.sample

    def recording_sample(*args, **kwargs):
        batch = sample(*args, **kwargs)
        log.steps.append({"conds": batch, "calls": []})
        return batch

    module.conditions.sample = recording_sample
    for name, net in [
        ("teacher", module.teacher.unet),
        ("generator", module.generator.denoiser.unet),
        ("fake", module.fake_score.unet),
    ]:
        net.register_forward_pre_hook(log.record(name), with_kwargs=True)
    return log


def sd_module(teacher, conditions, **kwargs) -> SFDModule:
    settings = dict(
        alpha=1.0,
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        batch_size=2,
        fake_train_guidance=4.5,
        fake_eval_guidance=4.5,
        teacher_guidance=4.5,
        cond_dropout=0.5,
        ema_decay=None,
        steps_per_epoch=100,
    )
    settings.update(kwargs)
    return SFDModule(teacher, conditions, UniformTimestepSigma(20, 980), **settings)


def fit(module: SFDModule, root: Path, steps: int, **trainer_kwargs) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
        **trainer_kwargs,
    )
    trainer.fit(module)
    return trainer


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal embeddings, up to float noise of batched vs separate text-encoder calls."""
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5)


def check_roles(
    log: CallLog, empty: torch.Tensor, negative: torch.Tensor, negative_for: list[str]
) -> None:
    """docs/method.md §4: who sees which prompt, and which negative, in one SFD iteration.

    The teacher sees c_r and c_o; generator and fake score see c_r and c_f. The fake-score step
    drops prompts to "" (negative included) *before* the generator samples, so generator and
    fake score see the same dropped rows. Remain batches use the empty prompt as guidance null;
    forget batches use the negative prompt for the networks in `negative_for` only. Guided calls
    batch the condition with its null as one 2B UNet call.
    """
    for step in log.steps:
        conds, calls = step["conds"], step["calls"]
        remain, forget = conds.remain.prompt_embeds, conds.forget.prompt_embeds
        override = conds.override.prompt_embeds
        empty_b, neg_b = empty.expand_as(remain), negative.expand_as(remain)
        by_net = {
            n: [e for name, e in calls if name == n] for n in ("teacher", "generator", "fake")
        }
        generator, teacher, fake = by_net["generator"], by_net["teacher"], by_net["fake"]
        assert (len(generator), len(teacher), len(fake)) == (4, 2, 4)
        # Fake-score step: the generator samples for the dropped conditions, the fake score
        # learns on exactly those rows.
        for index, cond, role_neg in ((0, remain, empty_b), (1, forget, neg_b)):
            dropped, null = fake[index].chunk(2)
            assert torch.equal(dropped, generator[index])  # same rows, dropped before sampling
            seen = role_neg if "fake_train" in negative_for else empty_b
            for g, c, n, e in zip(dropped, cond, null, seen, strict=True):
                if close(g, empty):
                    assert close(n, empty)  # a dropped prompt has the empty negative too
                else:
                    assert torch.equal(g, c) and close(n, e)
        # Generator step: no dropout; the teacher sees the OVERRIDE prompt on forget samples.
        assert torch.equal(generator[2], remain) and torch.equal(generator[3], forget)
        assert torch.equal(teacher[0][: len(remain)], remain)
        assert close(teacher[0][len(remain) :], empty_b)  # remain: always the empty prompt
        assert torch.equal(teacher[1][: len(remain)], override)
        teacher_neg = neg_b if "teacher" in negative_for else empty_b
        assert close(teacher[1][len(remain) :], teacher_neg)
        assert not torch.equal(override, forget)
        assert torch.equal(fake[2][: len(remain)], remain) and close(
            fake[2][len(remain) :], empty_b
        )
        fake_neg = neg_b if "fake_eval" in negative_for else empty_b
        assert torch.equal(fake[3][: len(remain)], forget) and close(
            fake[3][len(remain) :], fake_neg
        )


@pytest.mark.parametrize(
    ("prediction_type", "negative_prompt", "negative_for"),
    [
        ("epsilon", NEGATIVE, ["teacher"]),
        ("epsilon", NEGATIVE, ["fake_train", "fake_eval", "teacher"]),
        ("v_prediction", None, ["teacher"]),
    ],
)
def test_sfd_iterations_export_reload_and_sample(
    sd_dirs, tmp_path, prediction_type, negative_prompt, negative_for
) -> None:
    source = sd_dirs[prediction_type]
    teacher = StableDiffusionTeacher(str(source))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = sd_module(teacher, celebrity_conditions(negative_prompt, negative_for))
    generator_before = [p.detach().clone() for p in module.generator.parameters()]
    log = observe(module)
    fit(module, tmp_path, steps=2)

    assert len(log.steps) == 2
    empty, negative = teacher.encode_prompts(["", negative_prompt or ""])
    check_roles(log, empty, negative, negative_for)
    dropped_rows = sum(
        close(row, empty) for step in log.steps for name, e in step["calls"][:2] for row in e
    )
    assert dropped_rows > 0  # cond_dropout 0.5: the dropout path was exercised
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # teacher bit-identical
    moved = [
        not torch.equal(a, b)
        for a, b in zip(generator_before, module.generator.parameters(), strict=True)
    ]
    assert any(moved)

    # The checkpoint holds the generator and the fake score only: no teacher, VAE or text encoder.
    checkpoint = load_checkpoint_safely(tmp_path / "ckpt" / "last.ckpt")
    keys = list(checkpoint["state_dict"])
    unet_keys = len(teacher.unet.state_dict())
    assert len(keys) == 2 * unet_keys
    assert all(k.startswith(("generator.denoiser.unet.", "fake_score.unet.")) for k in keys)

    # Export: a complete diffusers folder whose reload gives bit-identical images.
    generator = generator_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    direct = OneStepTextPipeline.from_generator(generator)
    out = save_generator(generator, tmp_path / "export")
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "model_index.json"):
        assert (out / part).exists(), part
    for weights in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        exported_tensors, source_tensors = load_file(out / weights), load_file(source / weights)
        assert all(torch.equal(v, source_tensors[k]) for k, v in exported_tensors.items())
        assert exported_tensors.keys() == source_tensors.keys()
    reloaded = load_pipeline(out)
    assert isinstance(reloaded, OneStepTextPipeline)
    assert reloaded.config.prediction_type == prediction_type
    prompts = ["a photo of Brad Pitt", "a cat"]
    images = [
        p(
            prompts,
            num_images_per_prompt=2,
            generator=torch.Generator().manual_seed(7),
            output_type="pt",
        ).images
        for p in (direct, reloaded)
    ]
    assert images[0].shape == (4, 3, 16, 16)
    assert torch.equal(images[0], images[1])
    # The exported latents are the trained generator's x_g for the same noise.
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    latents = reloaded(prompts, latents=z, output_type="latent").images
    with torch.no_grad():
        x_g = module.generator(z, TextCondition(*[teacher.encode_prompts(prompts)] * 2))
    # The pipeline encodes the prompts itself (another batch than the teacher's): reassociation.
    torch.testing.assert_close(latents, x_g, rtol=1e-4, atol=1e-4)
    guided = reloaded(
        prompts, negative_prompt="ugly", guidance_scale=3.0, latents=z, output_type="latent"
    )
    assert not torch.equal(guided.images, latents)

    # `sfd sample` writes the grid of the reloaded pipeline's images for that seed.
    png = tmp_path / "grid.png"
    argv = ["sample", str(out), "--prompt", "a cat", "--prompt", "a dog", "--num-per-prompt", "3"]
    assert main([*argv, "--seed", "1", "--output", str(png)]) == 0
    expected = reloaded(
        ["a cat", "a dog"],
        num_images_per_prompt=3,
        generator=torch.Generator().manual_seed(1),
        output_type="np",
    ).images  # (6, 16, 16, 3) in [0, 1]
    assert main(["sample", str(out), "--output", str(png)]) == 2  # no --prompt: a clear error
    tiles = np.rint(np.clip(expected, 0, 1) * 255).astype(np.uint8)
    assert_tiles(np.asarray(Image.open(png)), tiles, rows=2, scale=4)  # 16 px tiles shown at 64


def test_negative_prompt_without_guidance_is_an_error(sd_dirs, sd_teacher, tmp_path) -> None:
    from sfd.core.generator import OneStepGenerator

    pipeline = OneStepTextPipeline.from_generator(OneStepGenerator(sd_teacher))
    with pytest.raises(SFDConfigError, match="no effect"):
        pipeline("a cat", negative_prompt="a dog")


def test_memory_levers_lora_checkpointing_bf16_and_generator_init(sd_dirs, tmp_path) -> None:
    source = str(sd_dirs["epsilon"])
    teacher = StableDiffusionTeacher(source, gradient_checkpointing=True, attention="eager")
    fake = StableDiffusionLoRAFakeScore(source, rank=4, attention="eager")
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 4.0])
    cond = TextCondition(*[teacher.encode_prompts(["a cat", "a dog"])] * 2)
    with torch.no_grad():  # B = 0 at init: the LoRA fake score starts as the teacher
        assert torch.equal(fake(x, sigma, cond), teacher(x, sigma, cond))
    lora_params = {n for n, p in fake.named_parameters() if p.requires_grad}
    assert lora_params and all(".lora_A." in n or ".lora_B." in n for n in lora_params)
    assert set(fake.state_dict()) == lora_params
    # PEFT's layer is the LoRA formula: base(x) + (α/r)·B·A·x (checked with B made nonzero).
    layer = fake.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    assert isinstance(layer, LoraLayer) and layer.scaling["default"] == 1.0  # α = r = 4
    probe = torch.randn(3, layer.in_features)
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()
        down, up = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        expected = probe @ layer.base_layer.weight.T + probe @ down.T @ up.T
        torch.testing.assert_close(layer(probe), expected, rtol=1e-5, atol=1e-5)
        layer.lora_B["default"].weight.zero_()

    module = sd_module(teacher, celebrity_conditions(), fake_score=fake, ema_decay=0.5)
    assert module.generator.denoiser.unet.is_gradient_checkpointing
    trainable = {n for n, p in module.fake_score.named_parameters() if p.requires_grad}
    assert trainable == lora_params  # SFDModule's requires_grad_(True) keeps the base frozen
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit(module, tmp_path, steps=2, precision="bf16-mixed")
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.dtype == torch.float32 for p in module.generator.parameters())
    ups = [
        m.lora_B["default"].weight for m in module.fake_score.modules() if isinstance(m, LoraLayer)
    ]
    assert any(u.abs().sum() > 0 for u in ups)
    keys = load_checkpoint_safely(tmp_path / "ckpt" / "last.ckpt")["state_dict"]
    fake_keys = [k for k in keys if k.startswith("fake_score.")]
    assert fake_keys and all(".lora_A." in k or ".lora_B." in k for k in fake_keys)
    assert len(fake_keys) == len(lora_params)

    # Resume: the frozen teacher and LoRA base are reloaded from their source, the rest restored.
    resumed = sd_module(
        StableDiffusionTeacher(source),
        celebrity_conditions(),
        fake_score=StableDiffusionLoRAFakeScore(source, rank=4, attention="eager"),
        ema_decay=0.5,
    )
    trainer = pl.Trainer(
        max_steps=2,  # = the checkpoint's step: restore only
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(resumed, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert trainer.global_step == 2
    state = resumed.state_dict()
    assert all(torch.equal(state[k], v) for k, v in keys.items())
    assert all(torch.equal(state["teacher." + k], v) for k, v in before.items())

    # A run can start from an exported one-step generator.
    out = save_generator(module.export_generator, tmp_path / "export")
    restarted = sd_module(
        StableDiffusionTeacher(source),
        celebrity_conditions(),
        generator=PretrainedOneStepGenerator(str(out)),
    )
    for a, b in zip(
        restarted.generator.parameters(), module.export_generator.parameters(), strict=True
    ):
        assert torch.equal(a, b)
