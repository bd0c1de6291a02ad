"""`sfd fit`, `sfd export` and `sfd sample` end to end on the tiny config, through the real CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS, concept_presets, fit_args
from diffusers import UNet2DModel
from grids import assert_tiles
from PIL import Image
from safetensors.torch import load_file

from sfd.apps.demo.run import default_sfd_config
from sfd.cli import main
from sfd.core.generator import generator_from_checkpoint
from sfd.pipelines.io import PretrainedOneStepGenerator, load_generator, load_pipeline
from sfd.training.cli import parse_fit_config, sfd_lightning_cli


def checkpoints(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob("*.ckpt"))


@pytest.fixture(scope="module")
def trained(tiny_teacher_dir, tmp_path_factory):
    """One 10-iteration tiny run (checkpoint every 10 iterations), shared by the tests below."""
    run_dir = tmp_path_factory.mktemp("run")
    cli = sfd_lightning_cli(fit_args(tiny_teacher_dir, run_dir, "--trainer.max_steps", "10"))
    return cli, run_dir


def test_fit_trains_generator_and_fake_but_never_the_teacher(trained, tiny_teacher_dir) -> None:
    cli, run_dir = trained
    module = cli.model
    assert cli.trainer.global_step == 10
    original = load_file(tiny_teacher_dir / "unet" / "diffusion_pytorch_model.safetensors")
    teacher_state = module.teacher.unet.state_dict()
    assert all(torch.equal(teacher_state[k], v) for k, v in original.items())
    generator_state = module.generator.denoiser.unet.state_dict()
    fake_state = module.fake_score.unet.state_dict()
    ema_state = module.ema.denoiser.unet.state_dict()
    assert any(not torch.equal(generator_state[k], v) for k, v in original.items())
    assert any(not torch.equal(fake_state[k], v) for k, v in original.items())
    assert any(not torch.equal(ema_state[k], original[k]) for k in original)  # EMA moved …
    assert any(not torch.equal(ema_state[k], generator_state[k]) for k in original)  # … and lags
    assert list(run_dir.rglob("config.yaml")), "the resolved config is saved beside the run"


def test_checkpoint_holds_no_teacher_and_loads_safely(trained) -> None:
    _, run_dir = trained
    found = checkpoints(run_dir)
    assert found
    for path in found:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert not [k for k in checkpoint["state_dict"] if k.startswith("teacher.")]
        assert any(k.startswith("generator.") for k in checkpoint["state_dict"])
        assert len(checkpoint["optimizer_states"]) == 2


def test_resume_continues_from_checkpoint(trained, tiny_teacher_dir) -> None:
    _, run_dir = trained
    last = next(p for p in checkpoints(run_dir) if p.name == "last.ckpt")
    cli = sfd_lightning_cli(
        fit_args(
            tiny_teacher_dir,
            run_dir / "resumed",
            "--trainer.max_steps",
            "12",
            "--ckpt_path",
            str(last),
        )
    )
    assert cli.trainer.global_step == 12


def test_export_round_trip_is_bit_identical(trained, tmp_path) -> None:
    cli, run_dir = trained
    last = next(p for p in checkpoints(run_dir) if p.name == "last.ckpt")
    assert main(["export", str(last), str(tmp_path / "gen")]) == 0
    exported = tmp_path / "gen"
    assert (exported / "model_index.json").is_file()
    assert list((exported / "unet").glob("*.safetensors"))
    assert not list(exported.rglob("*.bin")) and not list(exported.rglob("*.ckpt"))
    UNet2DModel.from_pretrained(exported, subfolder="unet")  # plain diffusers loads the network

    z = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 1, 2, 3, 4, 9])
    with torch.no_grad():
        reference = cli.model.ema(z, labels)
        from_checkpoint = generator_from_checkpoint(last)(z, labels)
        reloaded = load_generator(exported)(z, labels)
    assert torch.equal(reference, from_checkpoint)
    assert torch.equal(reference, reloaded)

    pipeline = load_pipeline(exported)
    images_a = pipeline(labels, generator=torch.Generator().manual_seed(3), output_type="pt").images
    pipeline.save_pretrained(tmp_path / "again")
    again = load_pipeline(tmp_path / "again")
    images_b = again(labels, generator=torch.Generator().manual_seed(3), output_type="pt").images
    assert torch.equal(images_a, images_b)

    assert main(["export", str(last), str(exported)]) == 2  # refuses to overwrite silently


def test_edm_generator_export_round_trip(tmp_path) -> None:
    from conftest import tiny_unet

    from sfd.core.generator import OneStepGenerator
    from sfd.pipelines.io import save_generator
    from sfd.teachers import EDMUNetDenoiser

    generator = OneStepGenerator(
        EDMUNetDenoiser(tiny_unet(), sigma_data=0.6), sigma_init=3.0
    ).eval()
    save_generator(generator, tmp_path / "edm")
    z, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 5, 9])
    reloaded = load_generator(tmp_path / "edm")
    assert reloaded.sigma_init == 3.0 and reloaded.denoiser.sigma_data == 0.6
    with torch.no_grad():
        assert torch.equal(generator(z, labels), reloaded(z, labels))


def test_sample_writes_a_grid(trained, tmp_path) -> None:
    _, run_dir = trained
    last = next(p for p in checkpoints(run_dir) if p.name == "last.ckpt")
    main(["export", str(last), str(tmp_path / "gen")])
    out = tmp_path / "grid.png"
    args = ["sample", str(tmp_path / "gen"), "--labels", "0", "1", "2", "--num-per-label", "4"]
    assert main([*args, "--output", str(out)]) == 0
    expected = load_pipeline(tmp_path / "gen")(
        torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]),
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images  # (12, 8, 8, 1) in [0, 1]
    tiles = np.rint(np.clip(expected, 0, 1) * 255).astype(np.uint8)
    # 8x8 tiles upscaled 8x to 64 px, row labels at the left (tests/grids.py reads the layout).
    assert_tiles(np.asarray(Image.open(out)), tiles, rows=3, scale=8)
    assert main([*args[:2], "--labels", "10", "--output", str(tmp_path / "bad.png")]) == 2
    assert not (tmp_path / "bad.png").exists()


BAD_INPUTS = [
    (["--model.conditions.init_args.forget", "10"], "class 10 is outside the label range"),
    (["--model.conditions.init_args.override", "0"], "equals its forget class 0"),
    (
        [
            "--model.conditions.init_args.forget",
            "[0, 1]",
            "--model.conditions.init_args.override",
            "[1, 2]",
        ],
        "override class 1 is itself in the forget set",
    ),
    (
        [
            "--model.conditions.init_args.forget",
            "[0,1,2,3,4,5,6,7,8,9]",
            "--model.conditions.init_args.override",
            "random",
        ],
        "leaves no remain class",
    ),
    (["--model.sigma_sampler.init_args.t_min", "712"], "t_min=712, t_max=712"),
    (["--model.sigma_sampler.init_args.t_max", "5000"], "t_max=5000 exceeds"),
    (["--model.sigma_init", "-1"], "sigma_init=-1"),
    (["--model.ema_decay", "1.5"], "ema_decay=1.5"),
]


@pytest.mark.parametrize(("extra", "message"), BAD_INPUTS)
def test_bad_input_is_one_clear_error_and_writes_nothing(
    extra, message, tiny_teacher_dir, tmp_path, capsys
) -> None:
    run_dir = tmp_path / "run"
    assert main(fit_args(tiny_teacher_dir, run_dir, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sfd: error:") and message in err[-1]
    assert not run_dir.exists()


def test_missing_teacher_exits_2_from_the_console_script(tmp_path) -> None:
    """The real `sfd` process: one error line naming the path, exit status 2, nothing written."""
    run_dir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "sfd.cli", *fit_args(tmp_path / "no-teacher", run_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "sfd: error:" in result.stderr and "no-teacher" in result.stderr
    assert "Traceback" not in result.stderr
    assert not run_dir.exists()


def test_unknown_command_and_crash_exit_nonzero(tmp_path) -> None:
    assert main(["frobnicate"]) == 2
    assert main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


PRESETS = [*sorted(CONFIGS.glob("*.yaml")), default_sfd_config()]


@pytest.mark.parametrize("config", PRESETS, ids=lambda p: p.name)
def test_every_config_parses(config: Path) -> None:
    """Each YAML in configs/ (and the demo's preset) parses and type-checks with its CLI."""
    if config.name.startswith("teacher"):
        pytest.importorskip("sfd.apps.teachers.pixel")
        from sfd.cli.teacher_cli import parse_teacher_config

        parse_teacher_config(["-c", str(config)])
        return
    sd_preset = config.name.startswith(("sd15", "sd21"))
    base_name = "sd_base.yaml" if sd_preset else "tiny.yaml"
    base = [] if config.name == base_name else ["-c", str(CONFIGS / base_name)]
    parsed = parse_fit_config([*base, "-c", str(config)])
    assert parsed.model.teacher.class_path


FLOW_BASES = {
    "sd3_base.yaml": "sfd.teachers.SD3Teacher",
    "flux_base.yaml": "sfd.teachers.FluxTeacher",
}


@pytest.mark.parametrize("concept", concept_presets())
@pytest.mark.parametrize("base", sorted(FLOW_BASES))
def test_flow_presets_compose_with_the_concept_presets(base: str, concept: str) -> None:
    parsed = parse_fit_config(["-c", str(CONFIGS / base), "-c", str(CONFIGS / concept)])
    assert parsed.model.teacher.class_path == FLOW_BASES[base]
    assert parsed.model.sigma_sampler.class_path == "sfd.core.sigma.LogitNormalTime"
    assert parsed.model.t_init == 0.97 and "Conditions" in parsed.model.conditions.class_path


def test_generator_init_from_an_exported_generator(trained, tiny_teacher_dir, tmp_path) -> None:
    from sfd.core.conditions import ClassConditions
    from sfd.core.module import SFDModule
    from sfd.core.sigma import UniformTimestepSigma
    from sfd.teachers import PretrainedVPTeacher

    _, run_dir = trained
    last = next(p for p in checkpoints(run_dir) if p.name == "last.ckpt")
    main(["export", str(last), str(tmp_path / "gen")])
    module = SFDModule(
        PretrainedVPTeacher(str(tiny_teacher_dir)),
        ClassConditions(0, 1),
        UniformTimestepSigma(),
        generator=PretrainedOneStepGenerator(str(tmp_path / "gen")),
    )
    z, labels = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        started = module.generator.eval()(z, labels)
        assert torch.equal(started, load_generator(tmp_path / "gen")(z, labels))
    assert all(p.requires_grad for p in module.generator.parameters())
    assert not any(p.requires_grad for p in module.teacher.parameters())
