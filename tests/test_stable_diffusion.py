"""Stable Diffusion concept forgetting on tiny random pipelines with a real CLIP tokenizer (offline)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from safetensors.torch import load_file
from sd_fixtures import clip_tokenizer_files, save_tiny_clip, save_tiny_sd_pipeline

from sfd.cli import main
from sfd.conditions import ClassConditions
from sfd.errors import SFDConfigError
from sfd.export import generator_from_checkpoint, load_pipeline, read_checkpoint, save_generator
from sfd.module import SFDModule
from sfd.pipeline import to_uint8
from sfd.prompts import NudityConditions, PromptConditions, replace_concept
from sfd.sampling import image_grid
from sfd.sigma import UniformTimestepSigma
from sfd.teachers.lora import LoRALinear
from sfd.teachers.stable_diffusion import (
    StableDiffusionLoRAFakeScore,
    StableDiffusionTeacher,
    TextCondition,
)
from sfd.text_pipeline import OneStepTextPipeline

NEGATIVE = "blurry, lowres"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """Tiny networks run fastest, and unaffected by a loaded machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def sd_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny ε- (PNDM scheduler, SD 1.x style) and v-prediction (SD 2.x style) pipeline folders."""
    try:
        clip_tokenizer_files()
    except RuntimeError as error:
        pytest.skip(f"the CLIP BPE vocabulary is not cached and cannot be downloaded: {error}")
    root = tmp_path_factory.mktemp("sd")
    return {kind: save_tiny_sd_pipeline(root / kind, kind) for kind in ("epsilon", "v_prediction")}


@pytest.fixture(scope="module")
def teacher(sd_dirs) -> StableDiffusionTeacher:
    return StableDiffusionTeacher(str(sd_dirs["epsilon"]))


def celebrity_conditions(negative_prompt: str | None = None) -> PromptConditions:
    return PromptConditions(
        {"Brad Pitt": "a middle aged man", "angelina jolie": "a middle aged woman"},
        templates=["a photo of {concept}", "{concept} holding a coffee cup"],
        negative_prompt=negative_prompt,
    )


def test_tokenizer_is_the_real_clip_vocabulary(teacher) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(teacher.pipeline, subfolder="tokenizer")
    assert len(tokenizer) == 49408
    # CLIP's published token ids: <|startoftext|> a photo of a cat <|endoftext|>
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoiser_matches_the_ddpm_x0_formula(sd_dirs, prediction_type) -> None:
    teacher = StableDiffusionTeacher(str(sd_dirs[prediction_type]))
    assert teacher.prediction_type == prediction_type
    alphas = DDPMScheduler.from_pretrained(sd_dirs[prediction_type], subfolder="scheduler")
    alpha_bar = alphas.alphas_cumprod[torch.tensor([20, 625])].view(-1, 1, 1, 1)
    torch.manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    embeds = torch.randn(2, 77, 32)
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps  # DDPM forward process
    unet = UNet2DConditionModel.from_pretrained(sd_dirs[prediction_type], subfolder="unet")
    out = unet(x_t, torch.tensor([20, 625]), encoder_hidden_states=embeds).sample
    if prediction_type == "epsilon":
        expected = (x_t - (1 - alpha_bar).sqrt() * out) / alpha_bar.sqrt()
    else:
        expected = alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * out
    sigma = ((1 - alpha_bar) / alpha_bar).sqrt().view(-1)
    with torch.no_grad():
        x0_hat = teacher(x_t / alpha_bar.sqrt(), sigma, TextCondition(embeds, embeds))
    torch.testing.assert_close(x0_hat, expected.detach(), rtol=1e-4, atol=1e-4)


def test_guidance_uses_the_negative_prompt_as_null(teacher) -> None:
    torch.manual_seed(1)
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 3.0])
    prompt, negative = teacher.encode_prompts(["a cat", "a dog", NEGATIVE])[[0, 1, 2, 2]].split(2)
    cond = TextCondition(prompt, negative)
    with torch.no_grad():
        guided = teacher.guided(x, sigma, cond, 4.5)
        d_cond = teacher(x, sigma, TextCondition(prompt, prompt))
        d_null = teacher(x, sigma, TextCondition(negative, negative))
    torch.testing.assert_close(guided, d_null + 4.5 * (d_cond - d_null))
    dropped = teacher.drop_condition(cond, torch.tensor([True, False]))
    assert torch.equal(dropped.prompt_embeds[0], negative[0])
    assert torch.equal(dropped.prompt_embeds[1], prompt[1])


# --- prompt conditions ---------------------------------------------------------------------------


def test_override_prompts_replace_the_concept_case_insensitively() -> None:
    assert (
        replace_concept("Brad Pitt holding a coffee cup", "brad pitt", "a middle aged man")
        == "a middle aged man holding a coffee cup"
    )
    conds = celebrity_conditions()
    pairs = dict(zip(conds.forget_prompts, conds.override_prompts, strict=True))
    assert pairs["a photo of Brad Pitt"] == "a photo of a middle aged man"
    assert (
        pairs["angelina jolie holding a coffee cup"] == "a middle aged woman holding a coffee cup"
    )
    assert len(pairs) == 4 and len(conds.remain_prompts) >= 40


def test_forget_prompt_file_and_validation_errors(tmp_path) -> None:
    forget = tmp_path / "forget.txt"
    forget.write_text("BRAD PITT on a red carpet\n\nan interview with brad pitt\n")
    conds = PromptConditions({"brad pitt": "a middle aged man"}, forget_prompts=str(forget))
    assert conds.override_prompts == [
        "a middle aged man on a red carpet",
        "an interview with a middle aged man",
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = {
        "empty.txt": dict(concepts={"brad pitt": "a man"}, remain_prompts=str(empty)),
        "missing.txt": dict(concepts={"brad pitt": "a man"}, forget_prompts="missing.txt"),
        "'tom cruise'": dict(
            concepts={"brad pitt": "a man", "tom cruise": "a man"}, forget_prompts=str(forget)
        ),
        "equals its forget concept": dict(concepts={"Brad Pitt": "brad pitt"}),
        "no '{concept}' slot": dict(concepts={"brad pitt": "a man"}, templates=["a photo"]),
    }
    for expected, kwargs in cases.items():
        with pytest.raises(SFDConfigError, match=expected):
            PromptConditions(**kwargs)


def test_nudity_recipe(tmp_path) -> None:
    conds = NudityConditions()
    assert "a woman, nude" in conds.forget_prompts
    index = conds.forget_prompts.index("a woman, nude")
    assert conds.override_prompts[index] == "a woman"
    assert conds.negative_prompt.startswith("nude, naked")
    assert len(conds.forget_prompts) == 100
    with pytest.raises(SFDConfigError, match="subject"):
        NudityConditions(template="{keyword} only")


def test_sampling_is_rank_sliced_and_uses_cached_embeddings(teacher) -> None:
    conds = celebrity_conditions(NEGATIVE)
    conds.check(teacher.num_classes)
    conds.bind(teacher)
    with pytest.raises(SFDConfigError, match="text-conditioned"):
        conds.check(10)
    whole = conds.sample(6, torch.Generator().manual_seed(5))
    ranks = [conds.sample(3, torch.Generator().manual_seed(5), 2, r) for r in range(2)]
    for role in ("remain", "forget", "override"):
        joined = torch.cat([getattr(r, role).prompt_embeds for r in ranks])
        assert torch.equal(joined, getattr(whole, role).prompt_embeds)
    # The cached rows are the text encoder's embeddings of the sampled prompts.
    for role in ("remain", "forget", "override"):
        batch = getattr(whole, role)
        torch.testing.assert_close(batch.prompt_embeds, teacher.encode_prompts(list(batch.prompts)))
    torch.testing.assert_close(
        whole.remain.negative_embeds[0], teacher.encode_prompts([NEGATIVE])[0]
    )
    for f, o in zip(whole.forget.prompts, whole.override.prompts, strict=True):
        concept = "Brad Pitt" if "Brad Pitt" in f else "angelina jolie"
        target = conds.concepts[concept]
        assert o == replace_concept(f, concept, target)


def test_text_and_class_components_do_not_mix(teacher, tiny_teacher_dir) -> None:
    with pytest.raises(SFDConfigError, match="class-conditional teacher"):
        SFDModule(teacher, ClassConditions(0, 1), UniformTimestepSigma(20, 980))
    from sfd.teachers import PretrainedVPTeacher

    with pytest.raises(SFDConfigError, match="text-conditioned"):
        SFDModule(
            PretrainedVPTeacher(str(tiny_teacher_dir)),
            celebrity_conditions(),
            UniformTimestepSigma(),
        )


# --- training ------------------------------------------------------------------------------------


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


def check_roles(log: CallLog, negative: torch.Tensor) -> None:
    """METHOD.md §4: the teacher sees c_r and c_o; generator and fake score see c_r and c_f.

    Guided calls batch the condition with its null (negative prompt) as one 2B UNet call.
    """
    for step in log.steps:
        conds, calls = step["conds"], step["calls"]
        remain, forget = conds.remain.prompt_embeds, conds.forget.prompt_embeds
        override = conds.override.prompt_embeds
        neg = negative.expand_as(remain)
        by_net = {
            n: [e for name, e in calls if name == n] for n in ("teacher", "generator", "fake")
        }
        # Generator: fake step (remain, forget), generator step (remain, forget).
        generator = by_net["generator"]
        assert len(generator) == 4
        assert all(torch.equal(a, b) for a, b in zip(generator, [remain, forget] * 2, strict=True))
        # Teacher, guided: remain, then the OVERRIDE prompt where the generator saw forget.
        teacher = by_net["teacher"]
        assert len(teacher) == 2
        assert torch.equal(teacher[0], torch.cat([remain, neg]))
        assert torch.equal(teacher[1], torch.cat([override, neg]))
        assert not torch.equal(override, forget)
        # Fake score: its own step with condition dropout, then the generator step.
        fake = by_net["fake"]
        assert len(fake) == 4
        for got, cond in [(fake[0], remain), (fake[1], forget)]:
            dropped, null = got.chunk(2)
            assert torch.equal(null, neg)
            rows = [
                torch.equal(g, c) or torch.equal(g, n)
                for g, c, n in zip(dropped, cond, neg, strict=True)
            ]
            assert all(rows)
        assert torch.equal(fake[2], torch.cat([remain, neg]))
        assert torch.equal(fake[3], torch.cat([forget, neg]))


@pytest.mark.parametrize(
    ("prediction_type", "negative_prompt"), [("epsilon", NEGATIVE), ("v_prediction", None)]
)
def test_sfd_iterations_export_reload_and_sample(
    sd_dirs, tmp_path, prediction_type, negative_prompt
) -> None:
    source = sd_dirs[prediction_type]
    teacher = StableDiffusionTeacher(str(source))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = sd_module(teacher, celebrity_conditions(negative_prompt))
    generator_before = [p.detach().clone() for p in module.generator.parameters()]
    log = observe(module)
    fit(module, tmp_path, steps=2)

    assert len(log.steps) == 2
    negative = teacher.encode_prompts([negative_prompt or ""])[0]
    check_roles(log, negative)
    after = teacher.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # teacher bit-identical
    moved = [
        not torch.equal(a, b)
        for a, b in zip(generator_before, module.generator.parameters(), strict=True)
    ]
    assert any(moved)

    # The checkpoint holds the generator and the fake score only: no teacher, VAE or text encoder.
    checkpoint = read_checkpoint(tmp_path / "ckpt" / "last.ckpt")
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
    torch.testing.assert_close(latents, x_g, rtol=1e-5, atol=1e-5)
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
        output_type="pt",
    ).images
    assert main(["sample", str(out), "--output", str(png)]) == 2  # no --prompt: a clear error
    grid = np.asarray(Image.open(png))
    assert grid.shape == (2 * 16, 3 * 16, 3)
    assert np.array_equal(grid, np.asarray(image_grid(to_uint8(expected), rows=2)))


def test_negative_prompt_without_guidance_is_an_error(sd_dirs, teacher, tmp_path) -> None:
    from sfd.generator import OneStepGenerator

    pipeline = OneStepTextPipeline.from_generator(OneStepGenerator(teacher))
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
    assert lora_params and all(n.endswith(("lora_down", "lora_up")) for n in lora_params)
    assert set(fake.state_dict()) == lora_params

    module = sd_module(teacher, celebrity_conditions(), fake_score=fake, ema_decay=0.5)
    assert module.generator.denoiser.unet.is_gradient_checkpointing
    trainable = {n for n, p in module.fake_score.named_parameters() if p.requires_grad}
    assert trainable == lora_params  # SFDModule's requires_grad_(True) keeps the base frozen
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit(module, tmp_path, steps=2, precision="bf16-mixed")
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())
    assert all(p.dtype == torch.float32 for p in module.generator.parameters())
    ups = [m.lora_up for m in module.fake_score.modules() if isinstance(m, LoRALinear)]
    assert any(u.abs().sum() > 0 for u in ups)
    keys = read_checkpoint(tmp_path / "ckpt" / "last.ckpt")["state_dict"]
    fake_keys = [k for k in keys if k.startswith("fake_score.")]
    assert fake_keys and all(k.endswith(("lora_down", "lora_up")) for k in fake_keys)

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
        StableDiffusionTeacher(source), celebrity_conditions(), generator_init=str(out)
    )
    for a, b in zip(
        restarted.generator.parameters(), module.export_generator.parameters(), strict=True
    ):
        assert torch.equal(a, b)


def test_missing_pipeline_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(SFDConfigError, match="cannot load the scheduler config"):
        StableDiffusionTeacher(str(tmp_path / "nowhere"))
    with pytest.raises(SFDConfigError, match="attention='flash'"):
        StableDiffusionTeacher(str(tmp_path / "nowhere"), attention="flash")


# --- configs -------------------------------------------------------------------------------------

SD_CONFIGS = {
    "sd15_celebrity.yaml": "epsilon",
    "sd15_nudity.yaml": "epsilon",
    "sd21_vpred.yaml": "v_prediction",
}


@pytest.mark.parametrize("name", sorted(SD_CONFIGS))
def test_config_parses_with_reference_settings(name) -> None:
    from sfd.training_cli import parse_fit_config

    config = parse_fit_config(["-c", str(CONFIGS / name)])
    model = config.model
    assert model.teacher.class_path == "sfd.teachers.stable_diffusion.StableDiffusionTeacher"
    assert (model.alpha, model.sigma_init, model.batch_size, model.ema_decay) == (1.0, 2.5, 8, None)
    assert (model.fake_train_guidance, model.fake_eval_guidance, model.teacher_guidance) == (
        4.5,
    ) * 3
    assert (
        model.fake_optimizer.init_args.lr == 3e-6 and model.generator_optimizer.init_args.lr == 1e-6
    )
    assert (model.sigma_sampler.init_args.t_min, model.sigma_sampler.init_args.t_max) == (20, 980)
    assert config.trainer.precision == "bf16-mixed"


@pytest.mark.parametrize("name", sorted(SD_CONFIGS))
def test_config_trains_one_iteration_on_a_tiny_pipeline(sd_dirs, tmp_path, name) -> None:
    argv = [
        "fit",
        "-c",
        str(CONFIGS / name),
        "--model.teacher.init_args.pretrained_model_name_or_path",
        str(sd_dirs[SD_CONFIGS[name]]),
        "--model.batch_size",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--trainer.devices",
        "1",
        "--trainer.precision",
        "32-true",
        "--trainer.max_steps",
        "1",
        "--trainer.logger",
        "false",
        "--trainer.default_root_dir",
        str(tmp_path),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
    ]
    assert main(argv) == 0
    assert list(tmp_path.rglob("*.ckpt"))


# --- evaluation hooks ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(sd_dirs, tmp_path_factory) -> Path:
    """The tiny ε teacher itself exported as a one-step generator folder."""
    from sfd.generator import OneStepGenerator

    teacher = StableDiffusionTeacher(str(sd_dirs["epsilon"]))
    return save_generator(OneStepGenerator(teacher), tmp_path_factory.mktemp("gen") / "g")


def test_clip_score_adapter_matches_cosine_oracle(tmp_path) -> None:
    from transformers import CLIPModel, CLIPProcessor

    from sfd.text_metrics import clip_score_metric

    folder = save_tiny_clip(tmp_path / "clip")
    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    prompts = ["a photo of a cat", "a dog", "a red car", "brad pitt"]
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt").pixel_values
        tokens = processor(text=prompts, return_tensors="pt", padding=True)
        image_features = model.get_image_features(pixel_values=pixels).pooler_output
        text_features = model.get_text_features(**tokens).pooler_output
    cosine = torch.nn.functional.cosine_similarity(image_features, text_features)  # (4,)
    if cosine.mean() < 0:  # random weights: flip the image projection so scores are not all 0
        with torch.no_grad():
            model.visual_projection.weight.neg_()
        model.save_pretrained(folder)
        cosine = -cosine
    scores = []
    for i in range(4):
        metric = clip_score_metric(str(folder))
        metric.update(images[i : i + 1], prompts[i : i + 1])
        scores.append(float(metric.compute()))
    expected = (100 * cosine).clamp_min(0)
    assert (expected > 0).any()  # the oracle is not trivially zero
    torch.testing.assert_close(torch.tensor(scores), expected, rtol=1e-4, atol=1e-3)
    with pytest.raises(SFDConfigError, match="CLIP model folder"):
        clip_score_metric(str(tmp_path / "missing"))


def test_eval_set_has_per_prompt_seeds(exported, tmp_path) -> None:
    from sfd.text_metrics import generate_eval_set, read_eval_prompts, read_manifest

    prompts_file = tmp_path / "prompts.csv"
    prompts_file.write_text("prompt,sd_seed\na cat,11\na dog,\nbrad pitt,13\n")
    pairs = read_eval_prompts(str(prompts_file), seed=100, seed_column="sd_seed")
    assert pairs == [("a cat", 11), ("a dog", 101), ("brad pitt", 13)]
    pipeline = load_pipeline(exported)
    manifest = generate_eval_set(pipeline, pairs, tmp_path / "all", num_per_prompt=2, batch_size=2)
    alone = generate_eval_set(pipeline, pairs[2:], tmp_path / "alone", num_per_prompt=2)
    rows = read_manifest(manifest)
    assert [(r["prompt"], r["seed"]) for r in rows][-2:] == [("brad pitt", "13")] * 2
    assert len(rows) == 6
    same = [Path(r["file"]).read_bytes() for r in rows[-2:]]
    assert same == [Path(r["file"]).read_bytes() for r in read_manifest(alone)]
    assert same[0] != same[1]


def test_nudenet_counts_and_eval_text_command(exported, tmp_path) -> None:
    import json

    from sfd.text_metrics import count_detections, nudenet_available

    detections = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9}, {"class": "FACE_FEMALE", "score": 0.9}],
        [{"class": "BELLY_EXPOSED", "score": 0.5}],
        [],
    ]
    counts = count_detections(detections, threshold=0.6)
    assert counts["FEMALE_BREAST_EXPOSED"] == 1 and counts["BELLY_EXPOSED"] == 0
    assert "FACE_FEMALE" not in counts and counts["images_with_detection"] == 1

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\nbrad pitt on a red carpet\n")
    clip = save_tiny_clip(tmp_path / "clip")
    out = tmp_path / "eval"
    argv = ["eval-text", str(exported), "--prompts", str(prompts), "--output-dir", str(out)]
    assert main([*argv, "--clip-model", str(clip), "--nudenet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["clip_score"] >= 0
    if nudenet_available():
        assert metrics["nudenet"]["images_with_detection"] >= 0
    else:
        assert metrics["nudenet"] == "skipped: nudenet is not installed (pip install nudenet)"
    assert (
        main(
            [
                "eval-text",
                str(exported),
                "--prompts",
                str(tmp_path / "no.txt"),
                "--output-dir",
                str(out),
            ]
        )
        == 2
    )


def test_lora_fake_score_switch_parses() -> None:
    from sfd.training_cli import parse_fit_config

    lora = "sfd.teachers.stable_diffusion.StableDiffusionLoRAFakeScore"
    config = parse_fit_config(
        [
            "-c",
            str(CONFIGS / "sd15_celebrity.yaml"),
            *("--model.fake_score", lora),
            *("--model.fake_score.pretrained_model_name_or_path", "some/pipeline"),
            *("--model.fake_score.rank", "16"),
            *("--model.fake_score.gradient_checkpointing", "true"),
        ]
    )
    assert config.model.fake_score.class_path == lora
    assert config.model.fake_score.init_args.rank == 16
