"""Settings of `sfd compare`: which methods, and the baselines' constructor arguments.

The baselines are configured the way `sfd fit` configures SFD: typed constructor signatures
(`ESDModule`, `SalUnModule`) read from a YAML preset (`baselines_digits.yaml` beside this module)
and overridden by `--esd.KEY VALUE` / `--salun.KEY VALUE`, parsed by jsonargparse. Values are
checked before anything is trained or written.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from jsonargparse import ActionConfigFile, ArgumentParser
from jsonargparse import ArgumentError as JsonArgumentError

from sfd.apps.compare.choices import BASELINE_KEYS as BASELINE_KEYS
from sfd.apps.compare.choices import BASELINE_PREFIXES as BASELINE_PREFIXES
from sfd.apps.compare.choices import METHOD_KEYS as METHOD_KEYS
from sfd.apps.compare.choices import CompareSettings as CompareSettings
from sfd.apps.compare.choices import parse_methods as parse_methods
from sfd.baselines import BASELINES
from sfd.errors import SFDConfigError
from sfd.training.config_errors import one_line

BASELINES_PRESET = "baselines_digits.yaml"  # beside this module
SET_BY_HARNESS = {"teacher", "conditions", "seed", "steps_per_epoch"}


def default_baselines_config() -> Path:
    """The packaged preset of the baselines' settings."""
    return Path(str(resources.files("sfd.apps.compare") / BASELINES_PRESET))


def baselines_parser() -> ArgumentParser:
    """A jsonargparse parser of `--config FILE` plus every baseline's constructor arguments."""
    parser = ArgumentParser(exit_on_error=False, prog="sfd compare (baseline settings)")
    parser.add_argument("--config", action=ActionConfigFile)
    for key, module in BASELINES.items():
        parser.add_class_arguments(module, key, skip=SET_BY_HARNESS)
        parser.add_argument(f"--{key}.max_steps", type=int, default=200)
    return parser


def parse_baselines(config: Path | None, args: list[str]) -> dict[str, dict[str, Any]]:
    """The baselines' settings: the preset (or `config`), then `args`; values checked.

    Args:
        config: a YAML file replacing the preset.
        args: `--esd.KEY VALUE` / `--salun.KEY VALUE` overrides.

    Returns:
        {"esd": {...}, "salun": {...}}, each with "max_steps" and the module's keyword arguments.
    """
    path = config or default_baselines_config()
    if not Path(path).is_file():
        raise SFDConfigError(f"--baselines-config {str(path)!r} does not exist")
    try:
        namespace = baselines_parser().parse_args(["--config", str(path), *args])
    except JsonArgumentError as error:
        raise SFDConfigError(one_line(error)) from error
    settings = {key: dict(vars(namespace[key])) for key in BASELINES}
    for key, module in BASELINES.items():
        values = settings[key]
        steps = values["max_steps"]
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise SFDConfigError(f"--{key}.max_steps={steps!r} must be a positive integer")
        module.check_settings(**{k: v for k, v in values.items() if k != "max_steps"})
    return settings
