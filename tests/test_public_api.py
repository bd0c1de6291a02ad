"""Every name `sfd` advertises resolves to the object its defining module holds."""

from __future__ import annotations

import importlib
import json
import re
import shutil
from pathlib import Path

import pytest
from conftest import REPO, docs_block

import sfd


@pytest.mark.parametrize("name", sfd.__all__)
def test_public_name_resolves(name: str) -> None:
    module = importlib.import_module(sfd._PUBLIC[name])
    assert getattr(sfd, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'TrainingMonitor'"):
        sfd.TrainingMonitor  # noqa: B018


def test_the_api_page_lists_every_public_name() -> None:
    page = (REPO / "docs" / "api" / "sfd.md").read_text()
    listed = set(re.findall(r"^\| \[`(\w+)`\]", page, re.M))
    assert listed == set(sfd.__all__)


DOCS_PAGE = "docs/getting-started.md"


def test_docs_train_export_sample_snippet(
    tiny_teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train → export → sample block of docs/getting-started.md, as written."""
    code = docs_block(DOCS_PAGE, "train-export-sample")
    assert re.findall(r"^from (\S+) import", code, re.M) == ["lightning.pytorch.callbacks", "sfd"]
    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_teacher_dir, tmp_path / "runs" / "teachers" / "tiny")
    namespace: dict = {}
    exec(compile(code, DOCS_PAGE, "exec"), namespace)
    assert len(namespace["images"]) == 3
    record = json.loads((namespace["folder"] / "sfd_export.json").read_text())
    assert record["training"]["global_step"] == 10
