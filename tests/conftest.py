"""Shared fixtures: tiny random-weight diffusers teachers saved to temporary folders, offline settings."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import lightning.pytorch as pl  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SCRIPTS = REPO / "tests" / "scripts"  # subprocess entry points and YAML-loadable test helpers


def concept_presets() -> list[str]:
    """The concept presets of configs/ (conditions, no teacher: composed with a family's base),
    e.g. sd15_celebrity.yaml; the tests that compose every preset with every base read this."""
    import yaml

    presets = []
    for path in sorted(CONFIGS.glob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        if "conditions" in model and "teacher" not in model:
            presets.append(path.name)
    return presets


def docs_block(page: str, marker: str) -> str:
    """The ```python block after `<!-- tested: marker -->` in a docs page, as a reader copies it."""
    text = (REPO / page).read_text()
    after = text.split(f"<!-- tested: {marker} -->", 1)[1]
    return after.split("```python\n", 1)[1].split("```", 1)[0]


def tiny_unet(
    num_class_embeds: int | None = 10,
    sample_size: int = 8,
    channels: int = 1,
    seed: int = 0,
    dropout: float = 0.0,
) -> UNet2DModel:
    """A ~60 k-parameter class-conditional UNet2DModel with random weights."""
    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=4,
        attention_head_dim=8,
        num_class_embeds=num_class_embeds,
        dropout=dropout,
    )


def quiet_trainer(root: Path | None = None, steps: int = 1, **kwargs) -> pl.Trainer:
    """A CPU `Trainer` for `steps` SFD iterations with nothing but what a test asks for."""
    settings = {
        "max_steps": steps,
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": root,
        **kwargs,
    }
    return pl.Trainer(**settings)


def save_tiny_teacher(
    path: Path, prediction_type: str = "epsilon", num_class_embeds: int | None = 10, **unet_kwargs
) -> Path:
    """Write a tiny DDPM teacher folder (unet/ + scheduler/) as `DDPMPipeline.save_pretrained` does."""
    scheduler = DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=1e-4,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type=prediction_type,
        clip_sample=False,
    )
    unet = tiny_unet(num_class_embeds, **unet_kwargs)
    DDPMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 10-class ε-prediction 8×8 teacher folder, shared by the session (read-only)."""
    return save_tiny_teacher(tmp_path_factory.mktemp("teacher") / "tiny")


def fit_args(teacher_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """`sfd fit` arguments for the tiny config, writing under `run_dir`."""
    return [
        "fit",
        "-c",
        str(CONFIGS / "tiny.yaml"),
        "--model.teacher.init_args.pretrained_model_name_or_path",
        str(teacher_dir),
        "--trainer.default_root_dir",
        str(run_dir),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.enable_model_summary",
        "false",
        *extra,
    ]


# Tiny settings of the end-to-end `sfd demo` and `sfd compare` runs on digits (seconds each).
TINY_DIGITS_RUN = [
    "--teacher-steps", "4",
    "--teacher-channels", "8", "16",
    "--classifier-steps", "30",
    "--trainer.max_steps", "3",
    "--model.batch_size", "4",
    "--curve-every", "1",
    "--curve-per-class", "2",
    "--eval-per-class", "6",
    "--ddim-steps", "3",
    "--throughput-batch", "4",
    "--throughput-repeats", "1",
    "--grid-per-class", "2",
    "--no-progress",
]  # fmt: skip


# --- Stable Diffusion: tiny random pipelines with the real CLIP tokenizer ------------------------


@pytest.fixture(scope="module")
def single_thread():
    """Tiny networks run fastest, and unaffected by a loaded machine, on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def sd_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny ε- (PNDM scheduler, SD 1.x style) and v-prediction (SD 2.x style) pipeline folders."""
    from sd_fixtures import clip_tokenizer_files, save_tiny_sd_pipeline

    try:
        clip_tokenizer_files()
    except RuntimeError as error:
        pytest.skip(f"the CLIP BPE vocabulary is not cached and cannot be downloaded: {error}")
    root = tmp_path_factory.mktemp("sd")
    return {kind: save_tiny_sd_pipeline(root / kind, kind) for kind in ("epsilon", "v_prediction")}


@pytest.fixture(scope="session")
def sdxl_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny ε- and v-prediction SDXL pipeline folders (`tests/sdxl_fixtures.py`)."""
    from sd_fixtures import clip_tokenizer_files
    from sdxl_fixtures import save_tiny_sdxl_pipeline

    try:
        clip_tokenizer_files()
    except RuntimeError as error:
        pytest.skip(f"the CLIP BPE vocabulary is not cached and cannot be downloaded: {error}")
    root = tmp_path_factory.mktemp("sdxl")
    return {
        kind: save_tiny_sdxl_pipeline(root / kind, kind) for kind in ("epsilon", "v_prediction")
    }


@pytest.fixture(scope="session")
def sd_teacher(sd_dirs: dict[str, Path]):
    """The tiny ε-prediction pipeline as a `StableDiffusionTeacher` (shared: do not train it)."""
    from sfd.teachers import StableDiffusionTeacher

    return StableDiffusionTeacher(str(sd_dirs["epsilon"]))


@pytest.fixture(scope="session")
def flow_dirs(
    sd_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Tiny SD3 (shift 3) and Flux (guidance-distilled, dynamic shift) pipeline folders."""
    from flow_fixtures import save_tiny_flux_pipeline, save_tiny_sd3_pipeline

    root = tmp_path_factory.mktemp("flow")
    return {
        "sd3": save_tiny_sd3_pipeline(root / "sd3"),
        "flux": save_tiny_flux_pipeline(root / "flux"),
        "flux_schnell": save_tiny_flux_pipeline(root / "flux_schnell", guidance_embeds=False),
    }


def assert_same_vp_outputs(a: torch.nn.Module, b: torch.nn.Module) -> None:
    """Two class-conditional 1×8×8 VP denoisers give bit-identical x0 at low, mid and high σ."""
    torch.manual_seed(1)
    x, sigma, labels = (
        torch.randn(3, 1, 8, 8),
        torch.tensor([0.3, 2.0, 9.0]),
        torch.tensor([1, 5, 9]),
    )
    with torch.no_grad():
        assert torch.equal(a(x, sigma, labels), b(x, sigma, labels))


@contextlib.contextmanager
def lightning_logs_to_stderr() -> Iterator[None]:
    """Lightning's log handlers write to the stderr of the moment the test collected them (pytest's
    own capture): point them at the current one, so that `capfd` sees "Seed set to 0" and the rest
    as a user's terminal does."""
    handlers = [
        handler
        for name in ("lightning", "lightning.pytorch", "lightning.fabric")
        for handler in logging.getLogger(name).handlers
        if type(handler) is logging.StreamHandler  # not pytest's own capture handlers
    ]
    streams = [handler.setStream(sys.stderr) for handler in handlers]
    try:
        yield
    finally:
        for handler, stream in zip(handlers, streams, strict=True):
            handler.setStream(stream)
