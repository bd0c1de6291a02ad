"""`save_denoiser`: a trained fake score written to a folder its teacher class loads unchanged."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest
import torch
from conftest import assert_same_vp_outputs

from sfd.apps.harness.stages import save_denoiser
from sfd.core.conditions import TextCondition
from sfd.teachers import PretrainedVPTeacher, StableDiffusionTeacher

pytestmark = pytest.mark.usefixtures("single_thread")


def perturbed(network: torch.nn.Module, seed: int) -> torch.nn.Module:
    """The network with every weight moved (a fake score is no longer its teacher)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return network


def reload(class_path: str, folder: Path) -> torch.nn.Module:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)(str(folder))


def test_stable_diffusion_fake_score_reloads_bit_identically(sd_dirs, tmp_path: Path) -> None:
    fake = perturbed(StableDiffusionTeacher(str(sd_dirs["v_prediction"])), 0)
    class_path = save_denoiser(fake, tmp_path)
    assert class_path == "sfd.teachers.StableDiffusionTeacher"
    loaded = reload(class_path, tmp_path)
    assert loaded.prediction_type == "v_prediction"
    torch.manual_seed(1)
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.3, 4.0])
    embeds = torch.randn(2, 77, 32)
    cond = TextCondition(embeds, torch.zeros_like(embeds))
    with torch.no_grad():
        assert torch.equal(loaded.guided(x, sigma, cond, 2.0), fake.guided(x, sigma, cond, 2.0))
    assert torch.equal(loaded.sigmas, fake.sigmas)


def test_vp_fake_score_reloads_bit_identically(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    fake = perturbed(PretrainedVPTeacher(str(tiny_teacher_dir)), 0)
    assert_same_vp_outputs(reload(save_denoiser(fake, tmp_path), tmp_path), fake)
