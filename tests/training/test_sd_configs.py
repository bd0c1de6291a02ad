"""The Stable Diffusion presets: reference settings, one iteration each on a tiny pipeline, LoRA switch."""

from __future__ import annotations

import pytest
from conftest import CONFIGS, concept_presets

from sfd.cli import main

pytestmark = pytest.mark.usefixtures("single_thread")


SD_CONFIGS = {
    "sd15_celebrity.yaml": "epsilon",
    "sd15_nudity.yaml": "epsilon",
    "sd15_style.yaml": "epsilon",
    "sd21_vpred.yaml": "v_prediction",
}


@pytest.mark.parametrize("name", sorted(SD_CONFIGS))
def test_config_parses_with_reference_settings(name) -> None:
    from sfd.training.cli import parse_fit_config

    config = parse_fit_config(["-c", str(CONFIGS / "sd_base.yaml"), "-c", str(CONFIGS / name)])
    model = config.model
    assert model.teacher.class_path == "sfd.teachers.StableDiffusionTeacher"
    assert (model.alpha, model.t_init, model.batch_size, model.ema_decay) == (1.0, 625, 8, None)
    assert model.sigma_init is None  # the reference's integer timestep, not σ = 2.5
    assert (model.fake_grad_clip, model.generator_grad_clip) == (None, 1.0)
    for optimizer in (model.fake_optimizer, model.generator_optimizer):
        assert optimizer.init_args.eps == 1e-6
    assert (model.fake_train_guidance, model.fake_eval_guidance, model.teacher_guidance) == (
        4.5,
    ) * 3
    assert (
        model.fake_optimizer.init_args.lr == 3e-6 and model.generator_optimizer.init_args.lr == 1e-6
    )
    assert (model.sigma_sampler.init_args.t_min, model.sigma_sampler.init_args.t_max) == (20, 980)
    assert config.trainer.precision == "bf16-mixed"
    conditions = model.conditions.init_args
    if name == "sd15_nudity.yaml":  # the reference's nudity run: all three see the negative
        assert conditions.negative_for == ["fake_train", "fake_eval", "teacher"]
    else:
        assert conditions.negative_for is None  # the default: the teacher only


@pytest.mark.parametrize("name", sorted(SD_CONFIGS))
def test_config_trains_one_iteration_on_a_tiny_pipeline(sd_dirs, tmp_path, name) -> None:
    train_one_iteration(sd_dirs, tmp_path, name)


def test_adversarial_preset_trains_one_iteration_on_a_clip_teacher(sd_dirs, tmp_path) -> None:
    """The README's SD 1.5 adversarial command: the soft-prompt inner attack through CLIP."""
    train_one_iteration(
        sd_dirs, tmp_path, "sd15_nudity.yaml", "-c", str(CONFIGS / "adversarial.yaml")
    )


def train_one_iteration(sd_dirs, tmp_path, name: str, *extra: str) -> None:
    """`sfd fit` with sd_base.yaml, the preset `name` and `extra` for one iteration on a tiny SD."""
    argv = [
        "fit",
        "-c",
        str(CONFIGS / "sd_base.yaml"),
        "-c",
        str(CONFIGS / name),
        *extra,
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


def test_lora_fake_score_switch_parses() -> None:
    from sfd.training.cli import parse_fit_config

    lora = "sfd.teachers.stable_diffusion.StableDiffusionLoRAFakeScore"
    config = parse_fit_config(
        [
            *("-c", str(CONFIGS / "sd_base.yaml")),
            *("-c", str(CONFIGS / "sd15_celebrity.yaml")),
            *("--model.fake_score", lora),
            *("--model.fake_score.pretrained_model_name_or_path", "some/pipeline"),
            *("--model.fake_score.rank", "16"),
            *("--model.fake_score.gradient_checkpointing", "true"),
        ]
    )
    assert config.model.fake_score.class_path == lora
    assert config.model.fake_score.init_args.rank == 16


SDXL_CONCEPTS = tuple(concept_presets())


def test_every_concept_preset_composes_with_the_sd_base() -> None:
    """A new concept preset in configs/ is parsed and trained with sd_base.yaml here, with
    sdxl_base.yaml below and with the flow bases (tests/cli/test_fit_export_sample.py)."""
    assert {"sd15_celebrity.yaml", "sd15_nudity.yaml", "sd15_style.yaml"} <= set(concept_presets())
    assert set(concept_presets()) <= set(SD_CONFIGS)


@pytest.mark.parametrize("name", SDXL_CONCEPTS)
def test_sdxl_base_composes_with_the_concept_files(name) -> None:
    """configs/sdxl_base.yaml carries sd_base.yaml's reference settings onto an SDXL teacher."""
    from sfd.training.cli import parse_fit_config

    config = parse_fit_config(["-c", str(CONFIGS / "sdxl_base.yaml"), "-c", str(CONFIGS / name)])
    reference = parse_fit_config(["-c", str(CONFIGS / "sd_base.yaml"), "-c", str(CONFIGS / name)])
    model = config.model
    assert model.teacher.class_path == "sfd.teachers.StableDiffusionXLTeacher"
    teacher = model.teacher.init_args
    assert teacher.pretrained_model_name_or_path == "stabilityai/stable-diffusion-xl-base-1.0"
    assert teacher.gradient_checkpointing and teacher.original_size is None
    assert model.conditions == reference.model.conditions
    same = {k: v for k, v in vars(reference.model).items() if k != "teacher"}
    assert {k: getattr(model, k) for k in same} == same
    assert config.trainer == reference.trainer


@pytest.mark.parametrize("name", SDXL_CONCEPTS)
def test_sdxl_config_trains_one_iteration_on_a_tiny_pipeline(sdxl_dirs, tmp_path, name) -> None:
    argv = [
        "fit",
        *("-c", str(CONFIGS / "sdxl_base.yaml"), "-c", str(CONFIGS / name)),
        "--model.teacher.init_args.pretrained_model_name_or_path",
        str(sdxl_dirs["epsilon"]),
        *("--model.batch_size", "1", "--trainer.accelerator", "cpu", "--trainer.devices", "1"),
        *("--trainer.precision", "32-true", "--trainer.max_steps", "1"),
        *("--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)),
        *("--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"),
    ]
    assert main(argv) == 0
    assert list(tmp_path.rglob("*.ckpt"))


def test_a_folder_of_the_other_family_is_one_line_exit_2(sd_dirs, sdxl_dirs, tmp_path, capsys):
    common = [
        *("--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--trainer.logger", "false"),
        *("--trainer.default_root_dir", str(tmp_path / "run")),
    ]
    source = "--model.teacher.init_args.pretrained_model_name_or_path"
    for base, folder, expected in [
        ("sd_base.yaml", sdxl_dirs["epsilon"], "is an SDXL pipeline"),
        ("sdxl_base.yaml", sd_dirs["epsilon"], "is not an SDXL pipeline"),
    ]:
        configs = ["-c", str(CONFIGS / base), "-c", str(CONFIGS / "sd15_celebrity.yaml")]
        assert main(["fit", *configs, source, str(folder), *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "run").exists()
