"""`--model.adversarial.<setting>` only after something turns adversarial SFD on: a config file
or `--model` (a file or inline YAML/JSON) with an `adversarial` block, or `--model.adversarial`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sfd.errors import SFDConfigError
from sfd.training.cli import parse_fit_config
from sfd.training.config_files import check_adversarial_switch

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CELEBRITY = ["-c", str(CONFIGS / "sd_base.yaml"), "-c", str(CONFIGS / "sd15_celebrity.yaml")]


def model_file(tmp_path: Path, block: object) -> str:
    path = tmp_path / "model_adv.yaml"
    path.write_text(json.dumps({"adversarial": block}))
    return str(path)


@pytest.mark.parametrize("form", ["file", "inline", "inline="])
def test_a_model_block_with_adversarial_turns_it_on(tmp_path, form) -> None:
    """`--model FILE`, `--model '{json}'` and `--model=...` holding `adversarial` turn it on: the
    later setting refines that block (the file's steps 3 becomes 4, its other values kept)."""
    value = model_file(tmp_path, {"steps": 3, "share": 0.25})
    if form != "file":
        value = json.dumps({"adversarial": {"steps": 3, "share": 0.25}})
    given = [f"--model={value}"] if form == "inline=" else ["--model", value]
    args = [*CELEBRITY, *given, "--model.adversarial.steps", "4"]
    check_adversarial_switch(args)
    adversarial = parse_fit_config(args, one_line_errors=True).model.adversarial
    assert (adversarial.steps, adversarial.share) == (4, 0.25)


@pytest.mark.parametrize("block", [None, "absent"])
def test_a_model_block_without_adversarial_leaves_a_setting_refused(tmp_path, block) -> None:
    """`--model` whose block sets `adversarial: null`, or has none, does not turn it on."""
    value = model_file(tmp_path, block) if block is None else json.dumps({"seed": 3})
    with pytest.raises(SFDConfigError, match="--model.adversarial.steps 4: a setting of "):
        check_adversarial_switch([*CELEBRITY, "--model", value, "--model.adversarial.steps", "4"])


def test_a_lone_setting_and_one_after_null_are_refused() -> None:
    for args in (["--model.adversarial.steps", "4"],
                 ["-c", str(CONFIGS / "adversarial.yaml"), "--model", '{"adversarial": null}',
                  "--model.adversarial.steps=4"]):  # fmt: skip
        with pytest.raises(SFDConfigError, match="--model.adversarial.steps 4: a setting of "):
            check_adversarial_switch(args)
