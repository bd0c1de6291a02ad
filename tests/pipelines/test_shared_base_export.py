"""Exports of a shared-base run: the merged generator (from the live module and from a checkpoint
that holds only adapters), and the generator adapter alone as a LoRA that diffusers'
`load_lora_weights` applies to the original teacher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import quiet_trainer
from sd_fixtures import celebrity_conditions
from test_export_loading import load_in_subprocess, sfd_text_samples

from sfd.core.conditions import ClassConditions
from sfd.core.generator import OneStepGenerator
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.pipelines.io import export_checkpoint, load_generator, save_generator
from sfd.teachers import PretrainedVPTeacher, StableDiffusionTeacher
from sfd.teachers.adapter_settings import AdapterSettings

pytestmark = pytest.mark.usefixtures("single_thread")


def pixel_module(teacher_dir: Path) -> SFDModule:
    return SFDModule(
        teacher=PretrainedVPTeacher(str(teacher_dir)),
        conditions=ClassConditions(forget=0, override=1),
        sigma_sampler=UniformTimestepSigma(38, 712),
        batch_size=2,
        fake_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        ema_decay=0.5,
        t_init=440,
        adapters=AdapterSettings(rank=4),
    )


def samples(generator: torch.nn.Module) -> torch.Tensor:
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return generator(z, torch.tensor([1, 2, 3]))


def test_checkpoint_of_adapters_exports_the_merged_generator(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    module = pixel_module(tiny_teacher_dir)
    trainer = quiet_trainer(tmp_path, steps=2)
    trainer.fit(module)
    trainer.save_checkpoint(tmp_path / "run.ckpt")
    expected = samples(module.export_generator)
    assert (expected - samples(OneStepGenerator(module.teacher, t_init=440))).abs().max() > 1e-4
    from_checkpoint = export_checkpoint(tmp_path / "run.ckpt", tmp_path / "from-ckpt")
    from_module = save_generator(module.export_generator, tmp_path / "from-module")
    for folder in (from_checkpoint, from_module):
        generator = load_generator(folder)
        assert generator.sigma_init == module.export_generator.sigma_init
        assert not any("lora" in k for k in generator.state_dict())
        torch.testing.assert_close(samples(generator), expected, atol=1e-5, rtol=1e-5)


def test_generator_adapter_alone_is_a_lora_that_diffusers_applies_to_the_teacher(
    sd_dirs, tmp_path: Path
) -> None:
    teacher = StableDiffusionTeacher(str(sd_dirs["epsilon"]))
    module = SFDModule(
        teacher,
        celebrity_conditions(),
        UniformTimestepSigma(20, 980),
        batch_size=2,
        ema_decay=None,
        fake_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        adapters=AdapterSettings(rank=4),
    )
    quiet_trainer(tmp_path, steps=2).fit(module)
    folder = save_generator(module.export_generator, tmp_path / "export", lora_rank=4)
    fit = json.loads((folder / "sfd_export.json").read_text())["lora"]
    # The adapter's update B·A has rank 4: the rank-4 LoRA of merged − teacher is exact.
    assert fit["uncovered_parameters"] == [] and fit["weight_relative_error"] < 1e-5
    got = load_in_subprocess("stock-lora", folder, tmp_path, sd_dirs["epsilon"])
    full = sfd_text_samples(folder)["latents"]
    np.testing.assert_allclose(got["latents"], full, rtol=0, atol=1e-4)
    assert fit["adapted_layers"] > 0  # (a generator equal to its teacher has no LoRA to export)
