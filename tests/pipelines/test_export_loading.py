"""Exported folders load where users load models, each path in a fresh process, against sfd's own
sampling: diffusers with sfd, the folder's own pipeline file without sfd, a stock
StableDiffusionPipeline, the single-file checkpoint and the delta LoRA on the teacher."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import yaml
from conftest import SCRIPTS, fit_args
from lightning.pytorch.callbacks import ModelCheckpoint
from safetensors.torch import load_file
from sd_fixtures import celebrity_conditions

from sfd.cli import main
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.pipelines.io import load_pipeline
from sfd.teachers import StableDiffusionTeacher

pytestmark = pytest.mark.usefixtures("single_thread")
LOADER = SCRIPTS / "load_export.py"
PROMPTS, LABELS, SEED = ["a photo of Brad Pitt", "a cat"], [0, 1, 2], 7  # as in load_export.py
# The stock scheduler computes t(σ_init) in float64 NumPy on a float32 σ table (sfd: float32
# torch on a float64-derived table) and returns x0 through an Euler step x + (x0 − x)/σ·σ, so
# its images differ from sfd's in the last bits only.
STOCK_ATOL = 1e-5


def load_in_subprocess(mode: str, folder: Path, tmp: Path, teacher: Path | None = None) -> dict:
    """Run tests/scripts/load_export.py in a fresh interpreter and return its arrays."""
    out = tmp / f"{mode}-{folder.name}.npz"
    isolated = [] if mode == "with-sfd" else ["-I"]  # -I: no PYTHONPATH, no user site
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_MODULES_CACHE": str(tmp / "hf_modules"),
        "OMP_NUM_THREADS": "1",
    }
    args = [sys.executable, *isolated, str(LOADER), mode, str(folder), str(out)]
    result = subprocess.run(
        [*args, *([str(teacher)] if teacher else [])], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {**np.load(out), "stderr": result.stderr}


def sfd_text_samples(folder: Path) -> dict[str, np.ndarray]:
    pipe = load_pipeline(folder)
    outputs = {}
    for output, key in (("np", "images"), ("latent", "latents")):
        images = pipe(
            PROMPTS,
            num_images_per_prompt=2,
            generator=torch.Generator().manual_seed(SEED),
            output_type=output,
        ).images
        outputs[key] = np.asarray(images)
    return outputs


@pytest.fixture(scope="module")
def class_export(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-iteration tiny run with a metrics.json beside its checkpoints, exported by `sfd export`."""
    root = tmp_path_factory.mktemp("class")
    assert main(fit_args(tiny_teacher_dir, root / "run", "--trainer.max_steps", "2")) == 0
    [last] = (root / "run").rglob("last.ckpt")
    (last.parent / "metrics.json").write_text(json.dumps({"ua": 0.75, "fid_remain": 12.5}))
    assert main(["export", str(last), str(root / "export")]) == 0
    return root / "export"


def train_sd(source: Path, root: Path) -> Path:
    """Two SFD iterations on a tiny pipeline; returns the last checkpoint."""
    module = SFDModule(
        StableDiffusionTeacher(str(source)),
        celebrity_conditions(),
        UniformTimestepSigma(20, 980),
        alpha=1.0,
        batch_size=2,
        ema_decay=None,
        t_init=625,  # as the SD presets: σ_init ≈ 2.5017, not 2.5
        steps_per_epoch=100,
        fake_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
    )
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        default_root_dir=root,
        callbacks=[ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    return root / "ckpt" / "last.ckpt"


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def text_export(request, sd_dirs, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A trained tiny SD generator exported with the extras: (folder, teacher folder).

    The ε export also has bf16 weights (and a bf16 single file beside the float32 one); the v
    export is float32 only.
    """
    root = tmp_path_factory.mktemp(f"text-{request.param}")
    last = train_sd(sd_dirs[request.param], root)
    argv = ["export", str(last), str(root / "export"), "--single-file", "--lora", "4"]
    variant = ["--dtype", "bf16"] if request.param == "epsilon" else []
    assert main([*argv, *variant]) == 0
    return root / "export", sd_dirs[request.param]


def test_class_export_loads_with_and_without_sfd(class_export: Path, tmp_path: Path) -> None:
    expected = load_pipeline(class_export)(
        LABELS, generator=torch.Generator().manual_seed(SEED), output_type="np"
    ).images
    with_sfd = load_in_subprocess("with-sfd", class_export, tmp_path)
    assert str(with_sfd["pipeline_module"]) == "sfd.pipelines.one_step"
    assert np.array_equal(with_sfd["images"], expected)
    without = load_in_subprocess("custom", class_export, tmp_path)
    assert not without["sfd_imported"]
    assert str(without["pipeline_module"]).startswith("diffusers_modules.")
    assert np.array_equal(without["images"], expected)  # the standalone file, bit for bit


def test_text_export_loads_with_and_without_sfd(text_export, tmp_path: Path) -> None:
    folder, _ = text_export
    expected = sfd_text_samples(folder)
    for mode in ("with-sfd", "custom"):
        got = load_in_subprocess(mode, folder, tmp_path)
        assert bool(got["sfd_imported"]) == (mode == "with-sfd")
        assert str(got["pipeline_class"]) == "OneStepTextPipeline"
        for key in ("images", "latents"):
            assert np.array_equal(got[key], expected[key]), (mode, key)


def test_stock_stable_diffusion_pipeline_reproduces_the_generator(text_export, tmp_path) -> None:
    folder, _ = text_export
    expected = sfd_text_samples(folder)
    got = load_in_subprocess("stock", folder, tmp_path)
    assert str(got["pipeline_class"]) == "StableDiffusionPipeline" and not got["sfd_imported"]
    np.testing.assert_allclose(got["latents"], expected["latents"], rtol=0, atol=STOCK_ATOL)
    np.testing.assert_allclose(got["images"], expected["images"], rtol=0, atol=STOCK_ATOL)
    assert np.abs(expected["latents"]).max() > 0.1  # not a trivially small output
    assert "not expected" not in got["stderr"]  # no "unexpected config attributes" warning
    # The exact timestep is recorded, and is the one the stock scheduler derives from σ_init.
    record = json.loads((folder / "sfd_export.json").read_text())
    assert record["sigma_init"] == pytest.approx(2.5017, abs=1e-4)  # t_init 625
    from diffusers import EulerDiscreteScheduler

    scheduler = EulerDiscreteScheduler.from_pretrained(folder, subfolder="scheduler")
    scheduler.set_timesteps(sigmas=[record["sigma_init"], 0.0])
    assert scheduler.init_noise_sigma == pytest.approx(record["sigma_init"])
    assert float(scheduler.timesteps[0]) == pytest.approx(record["timestep"], abs=1e-3)


LIST_FORM_PROBE = """
import json, sys
from diffusers import DiffusionPipeline, StableDiffusionPipeline

listed, named = sys.argv[1], sys.argv[2]
stock = {"safety_checker": None, "requires_safety_checker": False}
found = {}
try:  # the list form: a stock class's load runs the folder's file...
    StableDiffusionPipeline.from_pretrained(listed, **stock)
except ValueError as error:
    found["stock_refused"] = "trust_remote_code=True" in str(error)
pipe = StableDiffusionPipeline.from_pretrained(listed, trust_remote_code=True, **stock)
found["stock_class_with_trust"] = type(pipe).__name__  # ...and returns the custom class
try:  # the class-name form: DiffusionPipeline alone looks for the class in diffusers
    DiffusionPipeline.from_pretrained(named, trust_remote_code=True)
except AttributeError as error:
    found["plain_diffusion_pipeline"] = str(error)
print(json.dumps(found))
"""


def test_why_a_text_export_names_only_its_class(text_export, tmp_path: Path) -> None:
    """docs/exports.md: in diffusers (0.42) `from_pretrained` runs the folder's pipeline file
    whenever model_index.json's `_class_name` is the list form naming it, whatever class it is
    called on. A text export in that form would refuse the stock `StableDiffusionPipeline` load
    without trust_remote_code and, with it, return the custom class. So a text export names its
    class only: the stock load works (test above), and `custom_pipeline=` names the file."""
    folder, _ = text_export
    index = json.loads((folder / "model_index.json").read_text())
    record = json.loads((folder / "sfd_export.json").read_text())
    assert index["_class_name"] == "OneStepTextPipeline"
    listed = tmp_path / "listed"
    listed.mkdir()
    for item in folder.iterdir():
        if item.name != "model_index.json":
            (listed / item.name).symlink_to(item)
    index["_class_name"] = [record["pipeline_file"][: -len(".py")], "OneStepTextPipeline"]
    (listed / "model_index.json").write_text(json.dumps(index))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run(
        [sys.executable, "-I", "-c", LIST_FORM_PROBE, str(listed), str(folder)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["stock_refused"] and found["stock_class_with_trust"] == "OneStepTextPipeline"
    assert "OneStepTextPipeline" in found["plain_diffusion_pipeline"]


def test_single_file_checkpoint_round_trips(text_export, tmp_path: Path) -> None:
    folder, _ = text_export
    from diffusers import StableDiffusionPipeline

    reloaded = StableDiffusionPipeline.from_single_file(
        str(folder / "sfd_generator.safetensors"),
        config=str(folder),
        local_files_only=True,
        safety_checker=None,
        requires_safety_checker=False,
    )
    exported = load_pipeline(folder)
    record = json.loads((folder / "sfd_export.json").read_text())
    for name in ("unet", "vae", "text_encoder"):
        ours, theirs = getattr(exported, name).state_dict(), getattr(reloaded, name).state_dict()
        assert ours.keys() == theirs.keys(), name
        assert all(torch.equal(ours[k], theirs[k]) for k in ours), name
    tensors = load_file(folder / "sfd_generator.safetensors")
    assert {v.dtype for v in tensors.values()} == {torch.float32}  # --dtype keeps the float32 file
    assert any(k.startswith("model.diffusion_model.input_blocks.") for k in tensors)
    assert any(k.startswith("first_stage_model.encoder.down.") for k in tensors)
    assert any(k.startswith("cond_stage_model.transformer.text_model.") for k in tensors)
    if record.get("variant"):  # and adds the variant's dtype beside it
        reduced = load_file(folder / record["single_file_variant"])
        assert record["single_file_variant"] == f"sfd_generator.{record['variant']}.safetensors"
        assert reduced.keys() == tensors.keys()
        assert all(torch.equal(reduced[k], v.to(torch.bfloat16)) for k, v in tensors.items())
    else:
        assert "single_file_variant" not in record
    got = load_in_subprocess("single-file", folder, tmp_path)["latents"]
    expected = sfd_text_samples(folder)["latents"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=STOCK_ATOL)


def test_delta_lora_on_the_teacher_matches_its_reported_error(text_export, tmp_path) -> None:
    folder, teacher = text_export
    record = json.loads((folder / "sfd_export.json").read_text())
    fit = record["lora"]
    assert fit["rank"] == 4 and fit["adapted_layers"] > 0
    # A trained generator moves its normalisation layers too, which no LoRA can carry.
    assert any("norm" in name for name in fit["uncovered_parameters"])
    got = load_in_subprocess("stock-lora", folder, tmp_path, teacher)
    full = sfd_text_samples(folder)["latents"]
    error = np.abs(got["latents"] - full).max()
    assert 0 < error
    # The reported error was measured on other prompts: same order of magnitude, not equal.
    assert fit["output_max_abs_error"] > 0 and fit["output_relative_rms_error"] > 0
    assert 0.1 < error / fit["output_max_abs_error"] < 10
    card = (folder / "README.md").read_text()
    assert f"relative RMS {fit['output_relative_rms_error']:.3g}" in card


def test_full_rank_delta_lora_is_exact_without_norm_changes(sd_dirs, tmp_path) -> None:
    """With every difference in linear / conv layers and rank ≥ their width, the LoRA is exact."""
    import copy

    from sfd.core.generator import OneStepGenerator
    from sfd.pipelines.io import save_generator

    teacher = StableDiffusionTeacher(str(sd_dirs["epsilon"]))
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
    assert fit["uncovered_parameters"] == [] and fit["weight_relative_error"] < 1e-6
    # no layer of the tiny UNet is 10 000 wide: the record and the card give the rank that ran
    ranks = [
        v.shape[0]
        for k, v in load_file(folder / "lora" / "pytorch_lora_weights.safetensors").items()
        if "lora_A" in k
    ]
    assert fit["largest_rank"] == max(ranks) < 10_000
    assert (
        f"rank {max(ranks)} (every layer at its full rank; 10000 requested)"
        in (folder / "README.md").read_text()
    )
    assert fit["output_max_abs_error"] < 1e-4
    got = load_in_subprocess("stock-lora", folder, tmp_path, sd_dirs["epsilon"])
    full = sfd_text_samples(folder)["latents"]
    np.testing.assert_allclose(got["latents"], full, rtol=0, atol=1e-4)
    assert np.abs(full).max() > 0.1


def test_weights_variant_is_the_cast_weights_and_loads(text_export) -> None:
    folder, _ = text_export
    if not json.loads((folder / "sfd_export.json").read_text()).get("variant"):
        assert not list(folder.rglob("*.bf16.safetensors"))
        return
    for part, name in [
        ("unet", "diffusion_pytorch_model"),
        ("vae", "diffusion_pytorch_model"),
        ("text_encoder", "model"),
    ]:
        full = load_file(folder / part / f"{name}.safetensors")
        variant = load_file(folder / part / f"{name}.bf16.safetensors")
        assert full.keys() == variant.keys()
        assert all(torch.equal(variant[k], v.to(torch.bfloat16)) for k, v in full.items())
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder, variant="bf16", dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16
    images = pipe(PROMPTS, generator=torch.Generator().manual_seed(SEED), output_type="pt").images
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_model_cards(class_export: Path, text_export) -> None:
    folder, teacher = text_export
    meta = front_matter((folder / "README.md").read_text())
    assert meta["library_name"] == "diffusers" and meta["pipeline_tag"] == "text-to-image"
    assert {"sfd", "machine-unlearning", "stable-diffusion"} <= set(meta["tags"])
    assert "base_model" not in meta  # a local teacher folder is not a Hub id
    card = (folder / "README.md").read_text()
    assert f"`{teacher}`" in card
    assert "| Brad Pitt | a middle aged man |" in card
    assert "- Iterations: 2" in card
    record = json.loads((folder / "sfd_export.json").read_text())
    assert f"sigmas=[{record['sigma_init']}, 0.0]" in card and "custom_pipeline=" in card
    assert record["training"]["global_step"] == 2
    assert record["training"]["hyperparameters"]["alpha"] == 1.0

    meta = front_matter((class_export / "README.md").read_text())
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    card = (class_export / "README.md").read_text()
    assert "| class 0 | class 1 |" in card  # configs/tiny.yaml: forget 0, override 1
    assert "| ua | 0.75 |" in card and "| fid_remain | 12.5 |" in card
    assert "- Iterations: 2" in card
    assert (class_export / "one_step_pipeline.py").is_file()
    index = json.loads((class_export / "model_index.json").read_text())
    assert index["_class_name"] == ["one_step_pipeline", "OneStepPipeline"]  # custom-pipeline form


def test_hub_base_model_only_for_hub_ids(tmp_path: Path) -> None:
    from sfd.pipelines.model_card import hub_base_model

    hub = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert hub_base_model(hub) == hub
    assert hub_base_model("runs/teachers/tiny") is None  # a relative path, not owner/name
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert hub_base_model(str(tmp_path / "owner" / "name")) is None  # a local folder
    assert hub_base_model(None) is None


def test_export_options_rejected_with_one_line(class_export: Path, tmp_path, capsys) -> None:
    [last] = class_export.parent.rglob("last.ckpt")
    for extra in (["--single-file"], ["--lora", "4"]):
        assert main(["export", str(last), str(tmp_path / "out"), *extra]) == 2
        assert "Stable Diffusion" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["edm", "v_prediction", "sample"])
def test_standalone_class_pipeline_matches_sfd_for_every_parameterisation(kind, tmp_path) -> None:
    """The standalone file (imported in-process here) against sfd, bit for bit, for the
    parameterisations the tiny trained export (VP, ε) does not cover."""
    from conftest import save_tiny_teacher, tiny_unet

    from sfd.core.generator import OneStepGenerator
    from sfd.pipelines.io import save_generator
    from sfd.pipelines.standalone_one_step import OneStepPipeline as Standalone
    from sfd.teachers import EDMUNetDenoiser, PretrainedVPTeacher

    if kind == "edm":
        denoiser = EDMUNetDenoiser(tiny_unet(), sigma_data=0.6)
    else:
        denoiser = PretrainedVPTeacher(str(save_tiny_teacher(tmp_path / "teacher", kind)))
    folder = save_generator(OneStepGenerator(denoiser, sigma_init=3.0).eval(), tmp_path / "gen")
    standalone = Standalone.from_pretrained(folder)
    if kind == "edm":  # c_noise = ln(σ)/4
        expected_timestep = math.log(3.0) / 4
    else:  # t with σ_t = 3 on the linear schedule, log-σ interpolated (float64 oracle)
        from diffusers import DDPMScheduler

        alphas = DDPMScheduler.from_pretrained(folder, subfolder="scheduler").alphas_cumprod
        log_sigmas = (((1 - alphas.double()) / alphas.double()).sqrt()).log().numpy()
        expected_timestep = float(np.interp(math.log(3.0), log_sigmas, np.arange(len(alphas))))
    assert standalone.config.timestep == pytest.approx(expected_timestep, abs=1e-3)
    for pipe in (standalone, load_pipeline(folder)):
        pipe.set_progress_bar_config(disable=True)
    images = [
        p(LABELS, generator=torch.Generator().manual_seed(SEED), output_type="pt").images
        for p in (standalone, load_pipeline(folder))
    ]
    assert torch.equal(images[0], images[1])
    assert images[0].abs().max() > 0.01


def test_class_pipeline_output_types_are_diffusers_postprocess(tmp_path: Path) -> None:
    """`output_type="pt"` and `"np"` of sfd's class pipeline and of the standalone file are what
    diffusers' image processor makes of the generator's [-1, 1] images: [0, 1], as the stock and
    the text pipelines return."""
    from conftest import tiny_unet
    from diffusers.image_processor import VaeImageProcessor

    from sfd.core.generator import OneStepGenerator
    from sfd.pipelines.io import save_generator
    from sfd.pipelines.standalone_one_step import OneStepPipeline as Standalone
    from sfd.teachers import EDMUNetDenoiser

    unet = tiny_unet()
    with torch.no_grad():
        unet.conv_out.weight.mul_(20)  # images past [-1, 1], so that the clamp is exercised
    generator = OneStepGenerator(EDMUNetDenoiser(unet, sigma_data=0.5), sigma_init=3.0)
    folder = save_generator(generator.eval(), tmp_path / "gen")
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        x0 = generator(z, torch.tensor(LABELS))  # (B, C, H, W) in model space
    assert x0.min() < -1 and x0.max() > 1
    processor = VaeImageProcessor()
    for pipe in (load_pipeline(folder), Standalone.from_pretrained(folder)):
        for output in ("pt", "np"):
            images = pipe(LABELS, latents=z, output_type=output).images
            expected = processor.postprocess(x0, output_type=output)
            assert type(images) is type(expected)
            assert images.shape == expected.shape
            assert (images == expected).all(), (type(pipe).__module__, output)
            assert images.min() >= 0 and images.max() <= 1


def test_a_new_export_part_is_one_registry_entry(tmp_path: Path, monkeypatch) -> None:
    """A part registered in EXPORT_PARTS is checked first, written into the folder, recorded."""
    from conftest import tiny_unet

    from sfd.core.generator import OneStepGenerator
    from sfd.errors import SFDConfigError
    from sfd.pipelines import export_parts
    from sfd.pipelines.io import save_generator
    from sfd.pipelines.model_card import EXPORT_RECORD
    from sfd.teachers import EDMUNetDenoiser

    def check(job, value: str) -> None:
        if not value:
            raise SFDConfigError("notes must not be empty")

    def write(job, staging: Path, value: str) -> dict:
        (staging / "notes.txt").write_text(value)
        return {"notes": "notes.txt"}

    parts = {**export_parts.EXPORT_PARTS, "notes": export_parts.ExportPart(check, write)}
    monkeypatch.setattr(export_parts, "EXPORT_PARTS", parts)
    monkeypatch.setattr("sfd.pipelines.io.EXPORT_PARTS", parts)
    generator = OneStepGenerator(EDMUNetDenoiser(tiny_unet(), sigma_data=0.5), 2.0).eval()
    folder = save_generator(generator, tmp_path / "gen", parts={"notes": "kept"})
    assert (folder / "notes.txt").read_text() == "kept"
    assert json.loads((folder / EXPORT_RECORD).read_text())["notes"] == "notes.txt"
    with pytest.raises(SFDConfigError, match="notes must not be empty"):
        save_generator(generator, tmp_path / "empty", parts={"notes": ""})
    with pytest.raises(SFDConfigError, match="export part 'other' is unknown"):
        save_generator(generator, tmp_path / "other", parts={"other": 1})
    assert not (tmp_path / "empty").exists() and not (tmp_path / "other").exists()


DOCS = Path(__file__).resolve().parents[2] / "docs" / "exports.md"


def stock_snippet() -> str:
    """The docs' Python block that loads a Stable Diffusion export without sfd."""
    blocks = DOCS.read_text().split("```python\n")[1:]
    [snippet] = [b.split("```")[0] for b in blocks if "from_single_file(" in b]
    return snippet


def test_the_docs_stock_snippet_runs_and_matches_sfd(text_export, tmp_path: Path) -> None:
    """docs/exports.md's stock / single-file / LoRA snippet, verbatim, in a fresh process without
    sfd: its images are sfd's to within `STOCK_ATOL` (before 8-bit rounding)."""
    folder, teacher = text_export
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "sd-export").symlink_to(folder)
    (tmp_path / "runs" / "tiny-sd").symlink_to(teacher)
    script = tmp_path / "snippet.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(SCRIPTS)!r})\n"
        "from load_export import BlockSfd\n"
        "sys.meta_path.insert(0, BlockSfd())\n" + stock_snippet() + "import numpy as np\n"
        "np.savez('out.npz', stock=np.asarray(image), single=np.asarray(image_single),\n"
        "         lora=np.asarray(image_lora), sfd_imported='sfd' in sys.modules)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-I", str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not expected" not in result.stderr  # no "unexpected config attributes" warning
    got = np.load(tmp_path / "out.npz")
    assert not got["sfd_imported"]
    expected = load_pipeline(folder)(
        "a photo of brad pitt", generator=torch.Generator().manual_seed(0), output_type="np"
    ).images[0]  # (H, W, 3) in [0, 1]
    for key in ("stock", "single"):  # PIL images: rounded to 8 bits from the same floats
        error = np.abs(got[key].astype(np.float64) / 255 - expected)
        assert error.max() <= 0.5 / 255 + STOCK_ATOL, key
    assert got["lora"].shape == got["stock"].shape


def test_text_pipelines_return_pt_images_as_diffusers_does(text_export) -> None:
    """`output_type="pt"`: sfd's SD pipeline and the standalone file return the stock image
    processor's [0, 1] images (as StableDiffusionPipeline does), the same tensors."""
    from diffusers.image_processor import VaeImageProcessor

    from sfd.pipelines.standalone_one_step_text import OneStepTextPipeline as Standalone

    folder, _ = text_export
    ours, standalone = load_pipeline(folder), Standalone.from_pretrained(folder)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(SEED))
    with torch.no_grad():
        latents = ours(PROMPTS, latents=z, output_type="latent").images
        expected = VaeImageProcessor().postprocess(ours.model_images(latents), output_type="pt")
        images = [p(PROMPTS, latents=z, output_type="pt").images for p in (ours, standalone)]
    assert images[0].min() >= 0 and images[0].max() <= 1
    assert torch.equal(images[0], expected) and torch.equal(images[1], expected)
