"""SFD on tiny SD3 and Flux pipelines: one iteration, the checkpoint, the export, and the stock
`StableDiffusion3Pipeline` / `FluxPipeline` loaded from the export giving sfd's own images."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import quiet_trainer
from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline
from flow_fixtures import LATENT_SIZE
from lightning.pytorch.callbacks import ModelCheckpoint
from sd_fixtures import celebrity_conditions

from sfd.core.checkpoint_files import load_checkpoint_safely
from sfd.core.generator import OneStepGenerator, generator_from_checkpoint
from sfd.core.module import SFDModule
from sfd.core.sigma import LogitNormalTime
from sfd.errors import SFDConfigError
from sfd.pipelines.io import load_pipeline, save_generator
from sfd.pipelines.model_card import shown
from sfd.pipelines.one_step_flow import OneStepFluxPipeline, OneStepSD3Pipeline
from sfd.teachers import FluxTeacher, SD3Teacher

pytestmark = pytest.mark.usefixtures("single_thread")
T_INIT = 0.97
PROMPTS = ["a photo of brad pitt", "a landscape painting"]


def teachers(flow_dirs) -> dict[str, object]:
    return {
        "sd3": lambda: SD3Teacher(str(flow_dirs["sd3"]), max_sequence_length=16),
        "flux": lambda: FluxTeacher(
            str(flow_dirs["flux"]), sample_size=LATENT_SIZE, max_sequence_length=16
        ),
    }


def flow_module(teacher, guidance: float, **settings: float) -> SFDModule:
    return SFDModule(
        teacher,
        celebrity_conditions(),
        LogitNormalTime(),
        t_init=T_INIT,
        alpha=1.0,
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        batch_size=2,
        fake_train_guidance=guidance,
        fake_eval_guidance=guidance,
        teacher_guidance=guidance,
        cond_dropout=0.5,
        ema_decay=0.9,
        fake_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        steps_per_epoch=100,
        **settings,
    )


def stock_latents(
    family: str, folder: Path, z: torch.Tensor, record: dict, output_type: str = "latent"
) -> torch.Tensor:
    """The export sampled by the stock diffusers class, no sfd code: latents of one Euler step
    (or, with `output_type`, the stock pipeline's own output of that kind)."""
    call = record["stock_call"]
    if family == "sd3":
        pipe = StableDiffusion3Pipeline.from_pretrained(folder)
        return pipe(PROMPTS, latents=z, output_type=output_type, **call).images
    pipe = FluxPipeline.from_pretrained(folder)
    packed = pipe(
        PROMPTS, latents=FluxPipeline._pack_latents(z, *z.shape), output_type=output_type, **call
    )
    if output_type != "latent":
        return packed.images
    return FluxPipeline._unpack_latents(packed.images, call["height"], call["width"], 1)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_sfd_trains_exports_and_the_stock_pipeline_samples_it(
    family, flow_dirs, tmp_path
) -> None:
    teacher = teachers(flow_dirs)[family]()
    guidance = 4.5 if family == "sd3" else 1.0  # Flux-dev: guidance is the embedded input
    module = flow_module(teacher, guidance)
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = quiet_trainer(tmp_path, steps=2, enable_checkpointing=True, callbacks=[checkpoints])
    trainer.fit(module)
    assert all(torch.equal(before[k], v) for k, v in module.teacher.state_dict().items())
    generator_weights = module.generator.denoiser.transformer.state_dict()
    teacher_weights = module.teacher.transformer.state_dict()
    assert any(not torch.equal(generator_weights[k], teacher_weights[k]) for k in teacher_weights)

    checkpoint = load_checkpoint_safely(checkpoints.last_model_path)
    assert not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    generator = generator_from_checkpoint(checkpoint)
    assert generator.sigma_init == pytest.approx(T_INIT / (1 - T_INIT), rel=1e-12)
    folder = save_generator(generator, tmp_path / "export")
    record = json.loads((folder / "sfd_export.json").read_text())
    index = json.loads((folder / "model_index.json").read_text())
    stock = {"sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}[family]
    assert index["_class_name"] == stock and index["_one_step"]["t_init"] == pytest.approx(T_INIT)
    assert record["stock_call"]["sigmas"] == [pytest.approx(T_INIT)]
    card = (folder / "README.md").read_text()
    assert "num_inference_steps=1" in card
    # the card states the flow generator's own formula (not the VP one's σ_init·z input)
    assert f"x0 = z − t_init·v(z, t_init, c) with t_init = {shown(T_INIT)}" in card
    assert "D((1 + σ_init)·z, σ_init, c)" in card and "D(σ_init·z" not in card
    tags = set(yaml.safe_load(card.split("---\n")[1])["tags"])
    family_tag = {"sd3": "stable-diffusion-3", "flux": "flux"}[family]
    assert family_tag in tags and ("stable-diffusion" in tags) == (family == "sd3")

    z = torch.randn(
        len(PROMPTS), *generator.sample_shape, generator=torch.Generator().manual_seed(3)
    )
    with torch.no_grad():
        ours = load_pipeline(folder)
        assert isinstance(ours, {"sd3": OneStepSD3Pipeline, "flux": OneStepFluxPipeline}[family])
        cond = ours.encode(PROMPTS, [""] * len(PROMPTS))
        trained = generator(z, cond)  # the training code path, from the checkpoint
        pipeline_latents = ours(PROMPTS, latents=z, output_type="latent").images
        stock = stock_latents(family, folder, z, record)
    torch.testing.assert_close(pipeline_latents, trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(stock.float(), trained, rtol=0, atol=1e-5)
    with torch.no_grad():
        images = ours(PROMPTS, latents=z, output_type="pt").images
        stock_images = stock_latents(family, folder, z, record, "pt")
    assert images.shape[:2] == (2, 3) and bool(torch.isfinite(images).all())
    # output_type="pt" means what it means in the stock pipeline: the image processor's [0, 1]
    assert images.min() >= 0 and images.max() <= 1
    torch.testing.assert_close(images, stock_images.float(), rtol=0, atol=1e-4)


def test_a_stock_flow_folder_is_not_an_export(flow_dirs) -> None:
    with pytest.raises(SFDConfigError, match="stock StableDiffusion3Pipeline folder, not an sfd"):
        load_pipeline(flow_dirs["sd3"])


def test_guidance_distilled_flux_refuses_cfg_before_training(flow_dirs) -> None:
    teacher = teachers(flow_dirs)["flux"]()
    with pytest.raises(SFDConfigError, match="teacher_guidance=4.5 is classifier-free guidance"):
        flow_module(teacher, 4.5)
    with pytest.raises(SFDConfigError, match="override_guidance=3.0 is classifier-free guidance"):
        flow_module(teacher, 1.0, override_guidance=3.0)


# the tiny Flux folder records no sample size (Flux transformers do not): give its latent size
RESUME_SETTINGS = {"sd3": (), "flux": ("--model.teacher.init_args.sample_size", str(LATENT_SIZE))}


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_resume_is_bit_identical(family, flow_dirs, tmp_path) -> None:
    from conftest import CONFIGS

    from sfd.training.cli import sfd_lightning_cli

    def fit(root: Path, steps: int, *extra: str):
        return sfd_lightning_cli([
            "fit", "-c", str(CONFIGS / f"{family}_base.yaml"),
            "-c", str(CONFIGS / "sd15_celebrity.yaml"),
            "--model.teacher.init_args.pretrained_model_name_or_path", str(flow_dirs[family]),
            *RESUME_SETTINGS[family],
            "--model.teacher.init_args.max_sequence_length", "8", "--model.ema_decay", "0.9",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32",
            "--trainer.max_steps", str(steps), "--model.batch_size", "1", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
            "--trainer.callbacks.every_n_train_steps", "2", "--trainer.default_root_dir", str(root),
            *extra,
        ])  # fmt: skip

    straight = fit(tmp_path / "a", 4)
    fit(tmp_path / "b", 2)
    resumed = fit(tmp_path / "b", 4, "--ckpt_path", "last")
    assert resumed.trainer.global_step == 4
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_delta_lora_applies_to_the_teacher_with_load_lora_weights(
    family, flow_dirs, tmp_path
) -> None:
    teacher = teachers(flow_dirs)[family]()
    generator = OneStepGenerator(copy.deepcopy(teacher), t_init=T_INIT)
    torch.manual_seed(0)
    with torch.no_grad():  # a generator that differs from its teacher by a rank-2 update
        for module in generator.denoiser.transformer.modules():
            if isinstance(module, torch.nn.Linear) and min(module.weight.shape) >= 2:
                out_features, in_features = module.weight.shape
                module.weight += 0.05 * torch.randn(out_features, 2) @ torch.randn(2, in_features)
    folder = save_generator(generator, tmp_path / "export", lora_rank=4)
    record = json.loads((folder / "sfd_export.json").read_text())
    assert record["lora"]["output_max_abs_error"] < 1e-3, record["lora"]
    # a user's path: the teacher's stock pipeline, the LoRA, the export's shift-free scheduler
    stock = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}[family]
    pipe = stock.from_pretrained(flow_dirs[family])
    pipe.load_lora_weights(folder / "lora")
    pipe.scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    z = torch.randn(2, *generator.sample_shape, generator=torch.Generator().manual_seed(1))
    call = record["stock_call"]
    latents = FluxPipeline._pack_latents(z, *z.shape) if family == "flux" else z
    with torch.no_grad():
        out = pipe(PROMPTS, latents=latents, output_type="latent", **call).images
        if family == "flux":
            out = FluxPipeline._unpack_latents(out, call["height"], call["width"], 1)
        ours = load_pipeline(folder)
        expected = ours(PROMPTS, latents=z, output_type="latent").images
    torch.testing.assert_close(out.float(), expected, rtol=0, atol=1e-3)


def test_every_flow_family_has_the_registrations_the_docs_list() -> None:
    """docs/families/flow.md "A new flow family": the family file, its `DENOISER_KINDS` entry and
    its pipeline class in `FLOW_PIPELINES`; the export's kind table, private settings and the
    folder-family refusal follow from them."""
    from sfd.pipelines.export_parts import PRIVATE_SETTINGS
    from sfd.pipelines.io import PIPELINE_FOR_KIND
    from sfd.pipelines.one_step_flow import FLOW_PIPELINES
    from sfd.teachers import DENOISER_KINDS, FluxDenoiser, SD3Denoiser
    from sfd.teachers.flow import flow_families

    families = flow_families()
    assert sorted(families, key=lambda c: c.kind) == [FluxDenoiser, SD3Denoiser]
    for family in families:
        assert DENOISER_KINDS[family.kind] is family
        exported = FLOW_PIPELINES[family.pipeline_class.__name__]
        assert exported.denoiser_class is family and exported.stock_class is family.pipeline_class
        assert PIPELINE_FOR_KIND[family.kind] is exported
        assert set(PRIVATE_SETTINGS[exported]) >= {"t_init", "max_sequence_length", "timestep"}
