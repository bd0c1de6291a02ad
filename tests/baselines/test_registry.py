"""`BASELINES`: every registered baseline is a forgetting method `sfd compare` can configure."""

from __future__ import annotations

import inspect

from sfd.baselines import BASELINES, ESDModule, ForgettingMethod, SalUnModule


def test_registry_lookup() -> None:
    assert BASELINES["esd"] is ESDModule and BASELINES["salun"] is SalUnModule


def test_every_baseline_has_the_interface_compare_uses() -> None:
    for key, module in BASELINES.items():
        assert key.isidentifier() and key == key.lower(), key  # --KEY.setting on the command line
        assert issubclass(module, ForgettingMethod), key
        parameters = inspect.signature(module.__init__).parameters
        assert {"teacher", "conditions", "seed", "steps_per_epoch"} <= set(parameters), key
        module.check_settings()  # the defaults are valid settings
