"""The trainer settings `sfd fit` and the demos check before anything loads: what Lightning itself
takes passes, what it would refuse only once the `Trainer` is built is one line."""

from __future__ import annotations

import re

import pytest
from lightning.pytorch import Trainer

from sfd.errors import SFDConfigError
from sfd.training.trainer_settings import check_trainer_settings

ACCEPTED = [
    {"max_steps": -1},
    {"max_steps": 1},
    {"max_epochs": None},
    {"max_epochs": -1},
    {"devices": "auto"},
    {"devices": 1},
    {"devices": -1},
    {"devices": "1"},
    {"devices": "0,"},
    {"devices": [0]},
    {"num_nodes": 1},
    {"log_every_n_steps": 1},
    {"log_every_n_steps": 0},  # no logging
    {"precision": "bf16-mixed"},
]
REFUSED = [
    ({"max_steps": -5}, "--trainer.max_steps is too small (got -5; need at least 1, or -1"),
    ({"max_steps": 0}, "--trainer.max_steps is too small (got 0"),
    ({"max_epochs": -2}, "--trainer.max_epochs is too small (got -2"),
    ({"devices": 0}, "trainer.devices=0 must be a number of devices of at least 1"),
    ({"devices": "0"}, "trainer.devices='0'"),
    ({"devices": -2}, "trainer.devices=-2"),
    ({"devices": []}, "trainer.devices=[]"),
    ({"devices": [-1]}, "trainer.devices=[-1]"),
    ({"devices": "many"}, "trainer.devices='many'"),
    ({"devices": True}, "trainer.devices=True"),
    ({"num_nodes": 0}, "trainer.num_nodes=0 must be an integer of at least 1"),
    ({"log_every_n_steps": -1}, "trainer.log_every_n_steps=-1 must be an integer of at least 0"),
    ({"precision": "bf16-true"}, "keeps the weights in half precision"),
    ({"accumulate_grad_batches": 2}, "trainer.accumulate_grad_batches=2 cannot work"),
    ({"gradient_clip_val": 1.0}, "trainer.gradient_clip_val=1.0 cannot work"),
]


@pytest.mark.parametrize("settings", ACCEPTED, ids=str)
def test_what_lightning_takes_passes(settings: dict) -> None:
    check_trainer_settings(settings)
    devices = settings.get("devices")
    if devices not in (None, "auto", 1, "1") or "precision" in settings:
        return  # device indices need those devices, -1 (all) an accelerator; precision: SFD's rule
    Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **settings)


@pytest.mark.parametrize(("settings", "message"), REFUSED, ids=[str(s) for s, _ in REFUSED])
def test_what_cannot_run_is_one_line(settings: dict, message: str) -> None:
    with pytest.raises(SFDConfigError, match=re.escape(message)):
        check_trainer_settings(settings)


@pytest.mark.parametrize(
    "settings", [{"max_steps": -5}, {"devices": 0}, {"devices": []}, {"num_nodes": 0}], ids=str
)
def test_lightning_itself_refuses_them_only_when_the_trainer_is_built(settings: dict) -> None:
    """The oracle: each refused value is one Lightning's Trainer rejects too (a late traceback)."""
    with pytest.raises(Exception, match="max_steps|devices|num_nodes"):  # Misconfiguration...
        Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **settings)
