"""t_init is checked against the teacher's own time variable before the teacher loads: a σ-space
(EDM) model has none, an SDXL folder's schedule bounds its integer timestep (as SD 1.x's does)."""

from __future__ import annotations

import pytest
from gaussian import gaussian_teacher

from sfd.errors import SFDConfigError
from sfd.teachers import EDMDenoiser, FlowDenoiser, StableDiffusionXLTeacher
from sfd.teachers.vp import VPDenoiser


def test_a_sigma_space_model_refuses_t_init_before_it_exists_as_once_built() -> None:
    with pytest.raises(SFDConfigError, match=r"t_init=5 .*EDMDenoiser has none \(give sigma_init"):
        EDMDenoiser.check_module_settings({"t_init": 5})
    EDMDenoiser.check_module_settings({"t_init": None, "sigma_init": 2.5})
    built = gaussian_teacher()
    with pytest.raises(SFDConfigError, match="has none \\(give sigma_init"):
        built.sigma_at_time(5)  # the refusal of the built model: the same words
    VPDenoiser.check_module_settings({"t_init": 625})  # families with a time of their own
    FlowDenoiser.check_module_settings({"t_init": 0.97})


def test_sdxl_checks_t_init_against_its_schedule_before_loading(sdxl_dirs) -> None:
    settings = {"pretrained_model_name_or_path": str(sdxl_dirs["epsilon"])}
    with pytest.raises(SFDConfigError, match=r"t_init=5000 must be an integer timestep in 0\.\."):
        StableDiffusionXLTeacher.check_before_loading(settings, {"t_init": 5000})
    StableDiffusionXLTeacher.check_before_loading(settings, {"t_init": 625})
    StableDiffusionXLTeacher.check_before_loading(settings, {"t_init": None})
