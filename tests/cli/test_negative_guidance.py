"""A negative prompt that a guided network cannot use is refused before loading: at guidance
scale 1 `Denoiser.guided` returns the conditional branch and the negative never acts (as the
sampling pipelines refuse a negative prompt at guidance 1), and a guidance-distilled Flux model
(FLUX.1-dev) keeps every scale at 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CONFIGS
from flow_fixtures import LATENT_SIZE

from sfd.cli import main
from sfd.core.conditions import NudityConditions, PromptConditions
from sfd.errors import SFDConfigError
from sfd.teachers import FluxTeacher, SD3Teacher

SOURCE = "--model.teacher.init_args.pretrained_model_name_or_path"


def fit(tmp_path: Path, capsys, *args: str) -> tuple[int, list[str]]:
    code = main(
        ["fit", *args, "--trainer.accelerator", "cpu", "--trainer.max_steps", "1",
         "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path / "run")]
    )  # fmt: skip
    return code, capsys.readouterr().err.strip().splitlines()


def test_flux_dev_with_the_nudity_preset_is_refused_in_one_line(flow_dirs, tmp_path, capsys):
    """`sfd fit -c flux_base.yaml -c sd15_nudity.yaml` on a guidance-distilled Flux: exit 2,
    one line naming the setting to turn off, nothing written."""
    code, err = fit(
        tmp_path, capsys,
        *("-c", str(CONFIGS / "flux_base.yaml"), "-c", str(CONFIGS / "sd15_nudity.yaml")),
        SOURCE, str(flow_dirs["flux"]),
    )  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert "guidance-distilled Flux" in err[0]
    assert "--model.conditions.init_args.keywords_as_negative false" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_negative_prompt_at_guidance_1_is_refused_in_one_line(flow_dirs, tmp_path, capsys):
    """FLUX.1-schnell-like (no guidance embedding) with flux_base's scales of 1, and a prompt
    preset's negative prompt given to the teacher at teacher_guidance 1 on SD3: refused."""
    code, err = fit(
        tmp_path, capsys,
        *("-c", str(CONFIGS / "flux_base.yaml"), "-c", str(CONFIGS / "sd15_nudity.yaml")),
        SOURCE, str(flow_dirs["flux_schnell"]), "--model.teacher.init_args.guidance", "null",
    )  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert "model.fake_train_guidance is 1" in err[0] and "--model.fake_train_guidance" in err[0]
    code, err = fit(
        tmp_path, capsys,
        *("-c", str(CONFIGS / "sd3_base.yaml"), "-c", str(CONFIGS / "sd15_celebrity.yaml")),
        SOURCE, str(flow_dirs["sd3"]),
        "--model.conditions.init_args.negative_prompt", "blurry",
        "--model.teacher_guidance", "1",
    )  # fmt: skip
    assert code == 2 and len(err) == 1, err
    assert "negative_prompt 'blurry' gives teacher a negative prompt" in err[0]
    assert not (tmp_path / "run").exists()


def test_a_negative_prompt_that_acts_is_allowed(flow_dirs) -> None:
    """Guidance above 1 on a teacher with classifier-free guidance, or no negative prompt."""
    nudity = NudityConditions.negative_setting({"negative_for": ["teacher", "fake_eval"]})
    assert nudity == ("keywords_as_negative true", ("teacher", "fake_eval"))
    assert NudityConditions.negative_setting({"keywords_as_negative": False}) is None
    assert PromptConditions.negative_setting({"negative_prompt": None}) is None
    scales = dict.fromkeys(("teacher_guidance", "fake_train_guidance", "fake_eval_guidance"), 4.5)
    schnell = {"pretrained_model_name_or_path": str(flow_dirs["flux_schnell"])}
    FluxTeacher.check_negative_prompt(schnell, scales, *nudity)
    SD3Teacher.check_negative_prompt({}, {**scales, "fake_train_guidance": 1.0}, *nudity)
    with pytest.raises(SFDConfigError, match="fake_eval_guidance is 1"):
        SD3Teacher.check_negative_prompt({}, {**scales, "fake_eval_guidance": 1.0}, *nudity)
    # the teacher unguided but its override guided (override_guidance): the teacher's negative
    # acts in the unlearning term, so it is allowed; with the override at 1 too it never acts
    unguided = {**scales, "teacher_guidance": 1.0}
    SD3Teacher.check_negative_prompt({}, {**unguided, "override_guidance": 4.5}, *nudity)
    for override in (None, 1.0):
        with pytest.raises(SFDConfigError, match="teacher_guidance is 1"):
            SD3Teacher.check_negative_prompt(
                {}, {**unguided, "override_guidance": override}, *nudity
            )


def test_flux_schnell_is_told_the_override_that_clears_the_presets_guidance(
    flow_dirs, tmp_path, capsys
) -> None:
    """flux_base.yaml sets guidance 3.5; on a schnell-like folder (no guidance embedding) the
    refusal names `--model.teacher.init_args.guidance null`, and with it the preset gets past
    that check (here to the celebrity preset's one-iteration run)."""
    base = ("-c", str(CONFIGS / "flux_base.yaml"), "-c", str(CONFIGS / "sd15_celebrity.yaml"))
    code, err = fit(tmp_path, capsys, *base, SOURCE, str(flow_dirs["flux_schnell"]))
    assert code == 2 and len(err) == 1, err
    assert "--model.teacher.init_args.guidance null" in err[0]
    assert not (tmp_path / "run").exists()
    code, err = fit(
        tmp_path, capsys, *base, SOURCE, str(flow_dirs["flux_schnell"]),
        "--model.teacher.init_args.guidance", "null",
        "--model.teacher.init_args.sample_size", str(LATENT_SIZE),
        "--model.teacher.init_args.max_sequence_length", "16", "--model.batch_size", "1",
        "--trainer.precision", "32-true", "--trainer.devices", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    )  # fmt: skip
    assert code == 0, err
    assert list((tmp_path / "run").rglob("*.ckpt"))
