"""The shared base on every family: Stable Diffusion, SDXL, SD3 and Flux teachers. After an SFD iteration
the teacher's output is bit-identical to a freshly loaded teacher's, the generator has moved, and a
checkpoint of adapters alone exports the merged generator (oracle: the live view)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import quiet_trainer
from flow_fixtures import LATENT_SIZE
from sd_fixtures import celebrity_conditions

from sfd.core.generator import generator_from_checkpoint, training_record
from sfd.core.module import SFDModule
from sfd.core.sigma import LogitNormalTime, UniformTimestepSigma
from sfd.teachers import (
    FluxTeacher,
    SD3Teacher,
    StableDiffusionTeacher,
    StableDiffusionXLTeacher,
)
from sfd.teachers.adapter_settings import AdapterSettings

pytestmark = pytest.mark.usefixtures("single_thread")


def build(family: str, dirs: dict):
    if family == "sd":
        return StableDiffusionTeacher(str(dirs["sd"])), UniformTimestepSigma(20, 980), 625
    if family == "sdxl":
        return StableDiffusionXLTeacher(str(dirs["sdxl"])), UniformTimestepSigma(20, 980), 625
    if family == "sd3":
        return SD3Teacher(str(dirs["sd3"]), max_sequence_length=16), LogitNormalTime(), 0.97
    teacher = FluxTeacher(str(dirs["flux"]), sample_size=LATENT_SIZE, max_sequence_length=16)
    return teacher, LogitNormalTime(), 0.97


@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3", "flux"])
def test_shared_base_trains_keeps_the_teacher_and_exports(
    family, sd_dirs, sdxl_dirs, flow_dirs, tmp_path: Path
) -> None:
    dirs = {"sd": sd_dirs["epsilon"], "sdxl": sdxl_dirs["epsilon"], **flow_dirs}
    teacher, sigma, t_init = build(family, dirs)
    fresh, _, _ = build(family, dirs)
    conditions = celebrity_conditions()
    module = SFDModule(
        teacher,
        conditions,
        sigma,
        t_init=t_init,
        batch_size=2,
        ema_decay=0.5,
        fake_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        adapters=AdapterSettings(rank=2, gradient_checkpointing=True),
    )
    cond = conditions.sample(2, torch.Generator().manual_seed(0), 1, 0).remain
    z = torch.randn(2, *teacher.sample_shape, generator=torch.Generator().manual_seed(1))
    sigma_probe = torch.tensor([0.5, 3.0])
    trainer = quiet_trainer(tmp_path, steps=1)
    trainer.fit(module)
    with torch.no_grad():
        assert torch.equal(module.teacher(z, sigma_probe, cond), fresh(z, sigma_probe, cond))
        moved = module.generator(z, cond) - module.teacher(
            z * module.generator.sigma_init, module.generator.sigma_init, cond
        )
    assert moved.abs().max() > 0
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    checkpoint = torch.load(tmp_path / "run.ckpt", weights_only=True)
    assert all("lora_" in key for key in checkpoint["state_dict"])
    exported = generator_from_checkpoint(checkpoint)
    with torch.no_grad():
        torch.testing.assert_close(
            exported(z, cond), module.export_generator(z, cond), atol=1e-5, rtol=1e-5
        )


PRESETS = {
    "sd": ("sd_base.yaml",),
    "sdxl": ("sdxl_base.yaml",),
    "sd3": ("sd3_base.yaml", "--model.teacher.init_args.max_sequence_length", "8"),
    "flux": (
        "flux_base.yaml",
        *("--model.teacher.init_args.max_sequence_length", "8"),
        *("--model.teacher.init_args.sample_size", str(LATENT_SIZE)),
    ),
}


@pytest.mark.parametrize("family", sorted(PRESETS))
def test_family_preset_with_shared_base_preset_trains(
    family, sd_dirs, sdxl_dirs, flow_dirs, tmp_path: Path
) -> None:
    """Each family preset turns on the teacher's gradient checkpointing and shared_base.yaml leaves
    its own off: the network still checkpoints through the shared base (no recomputation with the
    wrong adapter, which torch refuses as a CheckpointError)."""
    from conftest import CONFIGS

    from sfd.teachers.adapters import SharedBase
    from sfd.training.cli import sfd_lightning_cli

    dirs = {"sd": sd_dirs["epsilon"], "sdxl": sdxl_dirs["epsilon"], **flow_dirs}
    preset, *extra = PRESETS[family]
    cli = sfd_lightning_cli([
        "fit", "-c", str(CONFIGS / preset), "-c", str(CONFIGS / "sd15_celebrity.yaml"),
        "-c", str(CONFIGS / "shared_base.yaml"), "--model.adapters.rank", "2",
        "--model.teacher.init_args.pretrained_model_name_or_path", str(dirs[family]), *extra,
        "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.precision", "32",
        "--trainer.max_steps", "1", "--model.batch_size", "1", "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(tmp_path),
    ])  # fmt: skip
    assert cli.trainer.global_step == 1
    shared: SharedBase = cli.model.generator.denoiser.shared
    assert shared.checkpointing and not shared.settings.gradient_checkpointing
    # The training record says what ran: checkpointed, by the teacher's setting.
    assert training_record(cli.model)["adapters"]["gradient_checkpointing"] is True


@pytest.mark.parametrize("page", ["README.md", "docs/families/flow.md"])
def test_the_flux_shared_base_command_parses_at_a_batch_the_memory_table_fits(page: str) -> None:
    import re
    import shlex

    from conftest import CONFIGS

    from sfd.training.cli import parse_fit_config

    root = CONFIGS.parent
    command = re.search(
        r"sfd fit -c configs/flux_base\.yaml [^\n]*shared_base\.yaml(?:[^\n]*\\\n)+[^\n]*",
        (root / page).read_text(),
    )
    assert command, page
    words = shlex.split(re.sub(r"#[^\n]*", "", command.group(0)).replace("\\\n", " "))
    config = parse_fit_config([str(root / w) if w.startswith("configs/") else w for w in words[2:]])
    assert config.model.adapters.base_dtype == "bfloat16"
    assert config.model.adapters.gradient_checkpointing is True
    largest = re.search(  # the memory page's target row
        r"Flux\.1-dev shared base[^\n]*largest batch that fits: (\d+) \+",
        (root / "docs/results/memory.md").read_text(),
    )
    assert largest and 1 <= config.model.batch_size <= int(largest.group(1))
