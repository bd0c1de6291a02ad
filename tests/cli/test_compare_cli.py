"""`sfd compare` refuses bad input with one `sfd: error:` line, exit status 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfd.cli import main


@pytest.mark.parametrize(
    "bad, named",
    [
        (["--methods", "sfd,dmd"], "dmd"),
        (["--methods", ","], "--methods"),
        (["--methods", "esd,esd"], "esd"),
        (["--forget", "10"], "--forget"),
        (["--forget", "3", "--override", "3"], "--override"),
        (["--data", "no/such/file.npz"], "no/such/file.npz"),
        (["--trainer.max_steps", "0"], "max_steps"),
        (["--esd.lr", "-1"], "lr"),
        (["--esd.lr", "fast"], "esd.lr"),
        (["--salun.share", "1.5"], "share"),
        (["--salun.max_steps", "0"], "salun.max_steps"),
        (["--esd.train_parameters", "attention"], "train_parameters"),
        (["--dmd.lr", "1"], "--dmd.lr"),
        (["--baselines-config", "no/such.yaml"], "no/such.yaml"),
        (["--stage1-steps", "0"], "0"),
        (["--threads", "0"], "--threads"),
    ],
)
def test_compare_bad_input_exits_2_and_writes_nothing(
    bad: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, cache = tmp_path / "out", tmp_path / "cache"
    args = ["compare", "--output-dir", str(output), "--teacher-cache", str(cache), "--no-progress"]
    assert main([*args, *bad]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("sfd: error: "), error
    assert named in error[0]
    assert not output.exists() and not cache.exists()


def test_the_help_s_method_list_matches_the_baselines() -> None:
    # `sfd compare --help` reads the torch-free `BASELINE_KEYS`; the modules are `BASELINES`.
    from sfd.apps.compare.choices import BASELINE_KEYS, METHOD_KEYS
    from sfd.baselines import BASELINES

    assert BASELINE_KEYS == tuple(BASELINES)
    assert set(BASELINE_KEYS) < set(METHOD_KEYS)
