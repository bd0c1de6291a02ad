"""Every name `sfd` advertises resolves to the object its defining module holds."""

from __future__ import annotations

import importlib

import pytest

import sfd


@pytest.mark.parametrize("name", sfd.__all__)
def test_public_name_resolves(name: str) -> None:
    module = importlib.import_module(sfd._PUBLIC[name])
    assert getattr(sfd, name) is getattr(module, name)


def test_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'TrainingMonitor'"):
        sfd.TrainingMonitor  # noqa: B018
