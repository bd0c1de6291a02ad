"""SDXL end to end on tiny random pipelines: SFD iterations (pooled embeddings and time ids reach
every UNet call, guidance pairs each null prompt with its own pooled embedding), resume, export,
and the export loaded where users load SDXL: the stock `StableDiffusionXLPipeline`, the folder's
own pipeline file, the single-file checkpoint and the delta LoRA on the teacher."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from conftest import SCRIPTS
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from sd_fixtures import NEGATIVE, celebrity_conditions
from test_export_loading import STOCK_ATOL, front_matter, load_in_subprocess

from sfd.cli import main
from sfd.core.checkpoint_files import load_checkpoint_safely
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.pipelines import OneStepSDXLPipeline, load_pipeline
from sfd.teachers import StableDiffusionXLTeacher

pytestmark = pytest.mark.usefixtures("single_thread")
sys.path.insert(0, str(SCRIPTS))
from load_export import samples  # noqa: E402

PROMPTS, SEED = ["a photo of Brad Pitt", "a cat"], 7  # as in tests/scripts/load_export.py
# The ε run keeps a plain generation's time ids (the resolution, 16 × 16, crop (0, 0)) and exports a
# bf16 variant too; the v run sets its own, which the stock pipeline must then be given.
TIME_IDS = {"epsilon": (16, 16, 0, 0, 16, 16), "v_prediction": (32, 24, 4, 2, 16, 16)}


@dataclass
class UNetCalls:
    """Every UNet call of a run: (network, prompt embeddings, pooled embeddings, time ids)."""

    calls: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def watch(self, name: str, unet: torch.nn.Module) -> None:
        def hook(module, args, kwargs) -> None:
            added = kwargs["added_cond_kwargs"]
            self.calls.append(
                (
                    name,
                    kwargs["encoder_hidden_states"].detach().clone(),
                    added["text_embeds"].detach().clone(),
                    added["time_ids"].detach().clone(),
                )
            )

        unet.register_forward_pre_hook(hook, with_kwargs=True)


def sdxl_module(teacher, **kwargs) -> SFDModule:
    settings = dict(
        alpha=1.0,
        batch_size=2,
        ema_decay=None,
        t_init=625,  # as the SD presets: σ_init ≈ 2.5017
        fake_train_guidance=4.5,
        fake_eval_guidance=4.5,
        teacher_guidance=4.5,
        cond_dropout=0.5,
        steps_per_epoch=100,
        fake_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    settings.update(kwargs)
    conditions = celebrity_conditions(NEGATIVE, ["fake_eval", "teacher"])
    return SFDModule(teacher, conditions, UniformTimestepSigma(20, 980), **settings)


def trainer(root: Path, steps: int) -> pl.Trainer:
    return pl.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        logger=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )


@dataclass
class Run:
    source: Path
    teacher: StableDiffusionXLTeacher
    calls: UNetCalls
    checkpoint: Path
    export: Path
    time_ids: tuple[int, ...]


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def sdxl_run(request, sdxl_dirs, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Two SFD iterations on a tiny SDXL pipeline, watched, then `sfd export` with every extra."""
    root = tmp_path_factory.mktemp(f"sdxl-{request.param}")
    source = sdxl_dirs[request.param]
    ids = TIME_IDS[request.param]
    teacher = StableDiffusionXLTeacher(
        str(source), original_size=list(ids[:2]), crops_coords_top_left=list(ids[2:4])
    )
    module = sdxl_module(teacher)
    calls = UNetCalls()
    calls.watch("teacher", module.teacher.unet)
    calls.watch("generator", module.generator.denoiser.unet)
    calls.watch("fake", module.fake_score.unet)
    trainer(root, 2).fit(module)
    last = root / "ckpt" / "last.ckpt"
    argv = ["export", str(last), str(root / "export"), "--single-file", "--lora", "4"]
    variant = ["--dtype", "bf16"] if request.param == "epsilon" else []
    assert main([*argv, *variant]) == 0
    return Run(source, teacher, calls, last, root / "export", ids)


def test_every_unet_call_gets_matching_pooled_embeddings_and_the_time_ids(sdxl_run) -> None:
    """Each row's pooled vector is the one its prompt embedding was encoded with (the null
    rows of guided calls included: the empty prompt's zeros, or the negative prompt's)."""
    teacher, calls = sdxl_run.teacher, sdxl_run.calls.calls
    conditions = celebrity_conditions(NEGATIVE)
    known = list(
        dict.fromkeys(
            [*conditions.remain_prompts, *conditions.forget_prompts, *conditions.override_prompts]
        )
    )
    known += [NEGATIVE, ""]
    embeds, pooled = teacher.encode_prompts(known)
    ids = torch.tensor([teacher.time_ids], dtype=torch.float32)
    assert teacher.time_ids == sdxl_run.time_ids
    seen = {"": 0, NEGATIVE: 0, "prompt": 0}
    for name, embed_rows, pooled_rows, time_ids in calls:
        assert torch.equal(time_ids, ids.expand(len(embed_rows), -1)), name
        for row, vector in zip(embed_rows, pooled_rows, strict=True):
            match = (row - embeds).abs().flatten(1).amax(dim=1) < 1e-5
            assert match.sum() >= 1, name  # a prompt the sampler encoded
            index = int(match.nonzero()[0])
            torch.testing.assert_close(vector, pooled[index], rtol=0, atol=1e-5)
            prompt = known[index]
            seen[prompt if prompt in seen else "prompt"] += 1
    assert all(count > 0 for count in seen.values()), seen  # dropout, negative and prompts ran
    # The teacher evaluates every condition with guidance, as one 2B call: its null half holds
    # the empty prompt (remain) or the negative prompt (override rows), pooled alike.
    teacher_calls = [c for c in calls if c[0] == "teacher"]
    assert len(teacher_calls) == 4 and all(len(c[1]) == 4 for c in teacher_calls)
    negative_pooled = pooled[known.index(NEGATIVE)]
    for step in range(2):
        remain_null = teacher_calls[2 * step][2][2:]
        override_null = teacher_calls[2 * step + 1][2][2:]
        assert not remain_null.any()  # force_zeros_for_empty_prompt
        torch.testing.assert_close(override_null, negative_pooled.expand(2, -1), rtol=0, atol=1e-5)


def test_checkpoint_holds_generator_and_fake_score_and_resume_is_bit_exact(
    sdxl_dirs, tmp_path
) -> None:
    source = str(sdxl_dirs["epsilon"])
    straight = tmp_path / "straight"
    trainer(straight, 3).fit(sdxl_module(StableDiffusionXLTeacher(source)))
    first = tmp_path / "first"
    trainer(first, 2).fit(sdxl_module(StableDiffusionXLTeacher(source)))
    resumed = trainer(first, 3)
    resumed.fit(
        sdxl_module(StableDiffusionXLTeacher(source)), ckpt_path=first / "ckpt" / "last.ckpt"
    )
    assert resumed.global_step == 3
    a = load_checkpoint_safely(straight / "ckpt" / "last.ckpt")
    b = load_checkpoint_safely(first / "ckpt" / "last.ckpt")
    keys = list(a["state_dict"])
    assert keys == list(b["state_dict"])
    assert all(k.startswith(("generator.denoiser.unet.", "fake_score.unet.")) for k in keys)
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    for opt_a, opt_b in zip(a["optimizer_states"], b["optimizer_states"], strict=True):
        for index, state in opt_a["state"].items():
            for name, value in state.items():
                assert torch.equal(value, opt_b["state"][index][name]), (index, name)


def sfd_samples(folder: Path) -> dict[str, np.ndarray]:
    pipe = load_pipeline(folder)
    assert isinstance(pipe, OneStepSDXLPipeline)
    return {
        key: np.asarray(
            pipe(
                PROMPTS,
                num_images_per_prompt=2,
                generator=torch.Generator().manual_seed(SEED),
                output_type=output,
            ).images
        )
        for output, key in (("np", "images"), ("latent", "latents"))
    }


def test_stock_sdxl_pipeline_reproduces_the_generator(sdxl_run, capfd) -> None:
    """The stock class computes on its own (in this process: sfd's import changes no stock
    code path; the folder's own file is run without sfd below)."""
    folder = sdxl_run.export
    expected = sfd_samples(folder)
    capfd.readouterr()
    got, pipe = samples("stock", folder, None)
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    assert type(pipe).__module__.startswith("diffusers.pipelines.")
    np.testing.assert_allclose(got["latents"], expected["latents"], rtol=0, atol=STOCK_ATOL)
    np.testing.assert_allclose(got["images"], expected["images"], rtol=0, atol=STOCK_ATOL)
    assert np.abs(expected["latents"]).max() > 0.1
    assert "not expected" not in capfd.readouterr().err  # no "unexpected config attributes"
    record = json.loads((folder / "sfd_export.json").read_text())
    assert record["pipeline_class"] == "OneStepSDXLPipeline"
    assert record["time_ids"] == list(sdxl_run.time_ids)
    if sdxl_run.time_ids != TIME_IDS["epsilon"]:  # the stock defaults would be another model
        plain = pipe(
            PROMPTS,
            num_images_per_prompt=2,
            guidance_scale=1.0,
            sigmas=[record["sigma_init"], 0.0],
            generator=torch.Generator().manual_seed(SEED),
            output_type="latent",
        ).images
        assert np.abs(plain.numpy() - expected["latents"]).max() > 1e-3
    for part in ("text_encoder_2", "tokenizer_2", "vae", "unet", "scheduler"):
        assert (folder / part).is_dir(), part


def test_own_pipeline_file_computes_sfds_images_bit_for_bit(sdxl_run) -> None:
    """The folder's `one_step_sdxl_pipeline.py` (imported from the folder, torch + diffusers
    only) against sfd's class."""
    import ast
    import importlib.util

    folder = sdxl_run.export
    record = json.loads((folder / "sfd_export.json").read_text())
    path = folder / record["pipeline_file"]
    imported = {
        (node.module if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= {"__future__", "typing", "torch", "diffusers"}, imported
    spec = importlib.util.spec_from_file_location("one_step_sdxl_pipeline_under_test", path)
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    pipe = standalone.OneStepSDXLPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    expected = sfd_samples(folder)
    for output, key in (("np", "images"), ("latent", "latents")):
        got = pipe(
            PROMPTS,
            num_images_per_prompt=2,
            generator=torch.Generator().manual_seed(SEED),
            output_type=output,
        ).images
        assert np.array_equal(np.asarray(got), expected[key]), key
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    guided = [
        p(
            PROMPTS,
            negative_prompt=[NEGATIVE, ""],
            guidance_scale=3.0,
            latents=z,
            output_type="latent",
        ).images
        for p in (pipe, load_pipeline(folder))
    ]
    assert torch.equal(guided[0], guided[1])


@pytest.mark.slow
def test_own_pipeline_file_loads_without_sfd(sdxl_run, tmp_path) -> None:
    folder = sdxl_run.export
    expected = sfd_samples(folder)
    got = load_in_subprocess("custom", folder, tmp_path)
    assert not got["sfd_imported"] and str(got["pipeline_class"]) == "OneStepSDXLPipeline"
    for key in ("images", "latents"):
        assert np.array_equal(got[key], expected[key]), key


def test_single_file_checkpoint_round_trips(sdxl_run) -> None:
    from diffusers import StableDiffusionXLPipeline

    folder = sdxl_run.export
    reloaded = StableDiffusionXLPipeline.from_single_file(
        str(folder / "sfd_generator.safetensors"),
        config=str(folder),
        local_files_only=True,
        add_watermarker=False,
    )
    exported = load_pipeline(folder)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        ours, theirs = getattr(exported, name).state_dict(), getattr(reloaded, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    tensors = load_file(folder / "sfd_generator.safetensors")
    assert any(k.startswith("model.diffusion_model.label_emb.0.0.") for k in tensors)
    assert any(k.startswith("conditioner.embedders.0.transformer.text_model.") for k in tensors)
    assert "conditioner.embedders.1.model.text_projection" in tensors
    got = samples("single-file", folder, None)[0]["latents"]
    np.testing.assert_allclose(got, sfd_samples(folder)["latents"], rtol=0, atol=STOCK_ATOL)


def test_delta_lora_on_the_teacher_matches_its_reported_error(sdxl_run) -> None:
    folder = sdxl_run.export
    fit = json.loads((folder / "sfd_export.json").read_text())["lora"]
    assert fit["rank"] == 4 and fit["adapted_layers"] > 0
    assert any(
        "add_embedding" in key
        for key in load_file(folder / "lora" / "pytorch_lora_weights.safetensors")
    )
    got = samples("stock-lora", folder, str(sdxl_run.source))[0]
    error = np.abs(got["latents"] - sfd_samples(folder)["latents"]).max()
    assert 0 < error and fit["output_max_abs_error"] > 0
    assert 0.1 < error / fit["output_max_abs_error"] < 10


def test_full_rank_delta_lora_is_exact_without_norm_changes(sdxl_dirs, tmp_path) -> None:
    import copy

    from sfd.core.generator import OneStepGenerator
    from sfd.pipelines.io import save_generator

    teacher = StableDiffusionXLTeacher(str(sdxl_dirs["epsilon"]))
    generator = OneStepGenerator(copy.deepcopy(teacher), 2.5)
    torch.manual_seed(0)
    with torch.no_grad():
        for module in generator.denoiser.unet.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                module.weight.add_(0.02 * torch.randn_like(module.weight))
                if module.bias is not None:
                    module.bias.add_(0.02 * torch.randn_like(module.bias))
    folder = save_generator(generator, tmp_path / "export", lora_rank=10_000)
    fit = json.loads((folder / "sfd_export.json").read_text())["lora"]
    assert fit["uncovered_parameters"] == [] and fit["output_max_abs_error"] < 1e-4
    got = samples("stock-lora", folder, str(sdxl_dirs["epsilon"]))[0]
    full = sfd_samples(folder)["latents"]
    np.testing.assert_allclose(got["latents"], full, rtol=0, atol=1e-4)
    assert np.abs(full).max() > 0.1


def test_model_card_names_the_sdxl_pipeline_and_its_time_ids(sdxl_run) -> None:
    card = (sdxl_run.export / "README.md").read_text()
    meta = front_matter(card)
    assert {"stable-diffusion-xl", "text-to-image", "sfd"} <= set(meta["tags"])
    assert "StableDiffusionXLPipeline.from_pretrained(" in card
    ids = sdxl_run.time_ids
    assert (
        f"original_size=({ids[0]}, {ids[1]}), crops_coords_top_left=({ids[2]}, {ids[3]})," in card
    )
    assert f"target_size=({ids[4]}, {ids[5]})," in card
    assert 'custom_pipeline="one_step_sdxl_pipeline"' in card
    assert "StableDiffusionXLPipeline.from_single_file(" in card
    assert "| Brad Pitt | a middle aged man |" in card


def test_guided_sampling_uses_the_zero_null_without_a_negative_prompt(sdxl_run) -> None:
    """The stock pipeline's convention: no negative prompt -> zero embeddings, pooled too."""
    pipe = load_pipeline(sdxl_run.export)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    generator = pipe.generator
    cond = pipe.encode(["a cat"], [""])
    assert not cond.negative_embeds.any() and not cond.negative_pooled.any()
    with torch.no_grad():
        expected = generator.denoiser.guided(
            generator.sigma_init * z, generator.sigma_init, cond, 3.0
        )
    got = pipe("a cat", guidance_scale=3.0, latents=z, output_type="latent").images
    assert torch.equal(got, expected)


def test_the_docs_stock_snippet_runs_and_matches_sfd(sdxl_run, tmp_path, monkeypatch) -> None:
    """docs/families/sdxl.md's stock / single-file / LoRA block, as written, on this run's
    folders: stock and single-file images are sfd's to within `STOCK_ATOL` before 8-bit rounding;
    `sfd sample` samples the export."""
    from conftest import docs_block
    from PIL import Image

    code = docs_block("docs/families/sdxl.md", "sdxl-stock")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "sdxl-tiny-generator").symlink_to(sdxl_run.export)
    (tmp_path / "runs" / "tiny-sdxl").symlink_to(sdxl_run.source)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/families/sdxl.md", "exec"), namespace)
    expected = load_pipeline(sdxl_run.export)(
        "a photo of brad pitt", generator=torch.Generator().manual_seed(0), output_type="np"
    ).images[0]  # (H, W, 3) in [0, 1]
    for key in ("image", "image_single"):
        error = np.abs(np.asarray(namespace[key]).astype(np.float64) / 255 - expected)
        assert error.max() <= 0.5 / 255 + STOCK_ATOL, key
    assert np.asarray(namespace["image_lora"]).shape == expected.shape
    png = tmp_path / "grid.png"
    argv = ["sample", str(sdxl_run.export), "--prompt", "a cat", "--num-per-prompt", "2"]
    assert main([*argv, "--seed", "1", "--output", str(png)]) == 0
    assert Image.open(png).size[0] > 0


def test_weights_variant_and_its_single_file(sdxl_run) -> None:
    folder = sdxl_run.export
    record = json.loads((folder / "sfd_export.json").read_text())
    if sdxl_run.time_ids != TIME_IDS["epsilon"]:  # only the ε export asked for bf16
        assert "variant" not in record and not list(folder.rglob("*.bf16.safetensors"))
        return
    for part, name in [
        ("unet", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
        ("text_encoder_2", "model"),
    ]:
        full = load_file(folder / part / f"{name}.safetensors")
        reduced = load_file(folder / part / f"{name}.bf16.safetensors")
        assert full.keys() == reduced.keys(), part
        assert all(torch.equal(reduced[k], v.to(torch.bfloat16)) for k, v in full.items()), part
    single = load_file(folder / "sfd_generator.safetensors")
    single_reduced = load_file(folder / record["single_file_variant"])
    assert single.keys() == single_reduced.keys()
    assert all(torch.equal(single_reduced[k], v.to(torch.bfloat16)) for k, v in single.items())
