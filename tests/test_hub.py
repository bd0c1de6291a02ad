"""A hub id while the Hub cannot be reached: one line at once, without HF_HUB_OFFLINE."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import fit_args
from huggingface_hub import constants

from sfd.errors import SFDConfigError
from sfd.hub import check_hub_source, hub_reachable

UNREACHABLE = "http://127.0.0.1:9"  # the discard port: connections are refused at once


@pytest.fixture
def no_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("HF_HUB_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", UNREACHABLE)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    hub_reachable.cache_clear()
    yield tmp_path / "hub"
    hub_reachable.cache_clear()


def test_unreachable_hub_id_is_refused_at_once(no_hub: Path) -> None:
    start = time.monotonic()
    with pytest.raises(SFDConfigError, match="not in the local cache") as raised:
        check_hub_source("some-org/no-such-model", "teacher")
    assert time.monotonic() - start < 5
    assert "\n" not in str(raised.value) and UNREACHABLE in str(raised.value)


def test_a_cached_hub_id_points_to_offline_mode(no_hub: Path) -> None:
    (no_hub / "models--some-org--cached").mkdir(parents=True)
    with pytest.raises(SFDConfigError, match="in the local cache: set HF_HUB_OFFLINE=1"):
        check_hub_source("some-org/cached", "teacher")


def test_folders_offline_mode_and_proxies_pass(
    no_hub: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "owner" / "name").mkdir(parents=True)
    check_hub_source(str(tmp_path / "owner" / "name"), "teacher")  # a local folder
    check_hub_source("runs/teachers/tiny", "teacher")  # not owner/name: the loader answers
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check_hub_source("some-org/no-such-model", "teacher")  # the cache answers at once
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    hub_reachable.cache_clear()
    check_hub_source("some-org/no-such-model", "teacher")  # the proxy decides


def test_sfd_fit_without_hf_hub_offline(tmp_path: Path) -> None:
    """The real command, HF_HUB_OFFLINE unset: exit 2 and one line, no half-minute of retries."""
    env = {
        k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE" and "PROXY" not in k.upper()
    }
    env |= {"HF_ENDPOINT": UNREACHABLE, "HF_HOME": str(tmp_path / "hf")}
    args = fit_args(Path("some-org/no-such-model"), tmp_path / "run")
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "sfd.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("sfd: error:")]
    assert len(errors) == 1 and "cannot be reached" in errors[0], done.stderr
    assert "Retrying" not in done.stderr
    assert time.monotonic() - start < 60
    assert not (tmp_path / "run").exists()
