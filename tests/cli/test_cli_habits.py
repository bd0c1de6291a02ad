"""Habits users bring: `sfd --version`, fast help and path errors (before torch is imported),
every shipped class in `sfd fit --help`, `from sfd import ...`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import REPO

from sfd.cli import main

HEAVY = ("torch", "lightning", "diffusers", "transformers")


def run_python(code: str, cwd: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip()


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"sfd {version}"


FAST_ERRORS = [
    (["export", "missing.ckpt", "out"], "checkpoint 'missing.ckpt' does not exist"),
    (["sample", "missing", "--output", "grid.png"], "not an exported generator folder"),
    (["sample", "missing", "--output", "grid"], "no image extension"),
    (["eval", "missing", "--classifier", "c", "--forget", "0"], "neither an exported generator"),
    (["eval-text", "missing", "--prompts", "p.txt", "--output-dir", "o"], "not an exported"),
    (["fit", "-c", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["teacher", "-c", "missing.yaml"], "config file 'missing.yaml' does not exist"),
    (["--help"], None),
    (["--version"], None),
    (["export", "--help"], None),
    (["sample", "--help"], None),
    (["eval", "--help"], None),
    (["eval-text", "--help"], None),
    (["teacher-text", "--help"], None),
    (["teacher", "--help"], None),
    (["demo", "--help"], None),
    (["compare", "--help"], None),
    (["demo-text", "--help"], None),
]


@pytest.mark.parametrize(
    ("argv", "message"), FAST_ERRORS, ids=lambda a: " ".join(a) if isinstance(a, list) else ""
)
def test_help_and_path_errors_come_before_the_heavy_imports(
    argv: list[str], message: str | None, tmp_path: Path
) -> None:
    code = (
        "import contextlib, io, sys\n"
        "from sfd.cli import main\n"
        "err = io.StringIO()\n"
        "with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        status = main({argv!r})\n"
        "    except SystemExit as exit:\n"
        "        status = exit.code\n"
        f"print(status, [m for m in {HEAVY!r} if m in sys.modules], repr(err.getvalue()))\n"
    )
    status, imported, err = run_python(code, tmp_path).split(" ", 2)
    assert imported == "[]", f"{argv} imported {imported} before answering"
    if message is None:
        assert status == "0"
    else:
        assert status == "2" and message in err and err.count("sfd: error:") == 1
    assert list(tmp_path.iterdir()) == []


def test_fit_help_lists_every_shipped_class_and_no_data_group(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "sfd.cli", "fit", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={**os.environ, "COLUMNS": "2000"},  # no line breaks inside class paths
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    for name in (
        "PretrainedVPTeacher",
        "PretrainedEDMTeacher",
        "StableDiffusionTeacher",
        "ClassConditions",
        "PromptConditions",
        "NudityConditions",
        "UniformTimestepSigma",
    ):
        # jsonargparse names each class by its shortest import path (sfd.X or sfd.teachers.X).
        assert re.search(rf"\bsfd(\.\w+)*\.{name}\b", text), name
    assert "--data " not in text and "--data.help" not in text
    assert text.startswith("usage: sfd [options] fit")


def test_the_public_api_is_lazy_and_complete(tmp_path: Path) -> None:
    names = [
        "SFDModule", "ClassConditions", "PromptConditions", "NudityConditions",
        "PretrainedVPTeacher", "PretrainedEDMTeacher", "StableDiffusionTeacher",
        "OneStepGenerator", "OneStepPipeline", "OneStepTextPipeline", "UniformTimestepSigma",
        "AtomicCheckpointIO", "find_resume_checkpoint", "IterationProgressBar",
        "quiet_design_warnings", "SFDConfigError", "load_pipeline", "export_checkpoint",
    ]  # fmt: skip
    code = (
        "import sys, sfd, sfd.cli\n"
        f"light = [m for m in {HEAVY!r} if m in sys.modules]\n"
        f"from sfd import {', '.join(names)}\n"
        "import sfd.core, sfd.teachers, sfd.pipelines, sfd.training.checkpoint_io\n"
        f"same = all(getattr(sfd, n) is not None for n in {names!r})\n"
        "print(light, same, set(sfd.__all__) >= set(" + repr(names) + "))\n"
    )
    assert run_python(code, tmp_path) == "[] True True"
    import sfd

    with pytest.raises(AttributeError, match="no attribute 'Nonsense'"):
        _ = sfd.Nonsense


def test_no_progress_hides_the_libraries_weight_bars_and_restores_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from sfd.cli.common import run_quietly

    AutoencoderKL(block_out_channels=(8,), norm_num_groups=4).save_pretrained(tmp_path)
    capsys.readouterr()
    with run_quietly(progress=False):
        assert not transformers_logging.is_progress_bar_enabled()
        assert not diffusers_logging.is_progress_bar_enabled()
        AutoencoderKL.from_pretrained(tmp_path)
    assert "Loading" not in capsys.readouterr().err
    assert transformers_logging.is_progress_bar_enabled()
    assert diffusers_logging.is_progress_bar_enabled()
    with run_quietly(progress=True):
        assert diffusers_logging.is_progress_bar_enabled()


def test_teacher_help_lists_what_the_lightning_parser_takes(capsys) -> None:
    """`sfd teacher --help` is read from the source without torch (above); its options and
    defaults are those of the LightningCLI parser itself (the oracle), and --help-all is that
    parser's own page."""
    from sfd.cli.teacher import teacher_options
    from sfd.cli.teacher_cli import parse_teacher_config

    parsed = parse_teacher_config([])
    for group, options in teacher_options().items():
        assert {name: value for name, value, _ in options} == {
            key: (tuple(v) if isinstance(v, list) else v) for key, v in dict(parsed[group]).items()
        }, group
        assert all(text for _, _, text in options), group  # every option described
    assert main(["teacher", "--help"]) == 0
    short = capsys.readouterr().out
    for group, options in teacher_options().items():
        assert all(f"--{group}.{name} " in short for name, _, _ in options)
    with pytest.raises(SystemExit) as stop:
        main(["teacher", "--help-all"])
    assert stop.value.code == 0
    full = capsys.readouterr().out
    assert "--trainer.max_steps" in full and "--model.block_out_channels" in full
