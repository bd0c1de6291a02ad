"""What `sfd compare` runs, torch-free (the command line's help reads it): the methods, the
baselines' option prefixes and the settings dataclass. The baselines' own settings are parsed in
`settings`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sfd.apps.harness.class_run import ClassRunSettings
from sfd.errors import SFDConfigError

# The keys of `sfd.baselines.BASELINES` (method key -> Lightning module), without importing them.
BASELINE_KEYS = ("esd", "salun")
BASELINE_PREFIXES = tuple(f"--{key}." for key in BASELINE_KEYS)
# Every method `sfd compare --methods` accepts, in report order.
METHOD_KEYS = ("sfd", "sfd_two_stage", "distill", *BASELINE_KEYS, "retrain")


@dataclass
class CompareSettings(ClassRunSettings):
    """Everything one `sfd compare` run depends on (the demo's settings plus these).

    Attributes:
        methods: the methods to run, a subset of `METHOD_KEYS`.
        baselines_config: YAML of the baselines' settings (default: the preset).
        baseline_args: `--esd.*` / `--salun.*` overrides.
    """

    output_dir: Path = Path("compare-output")
    methods: list[str] = field(default_factory=lambda: list(METHOD_KEYS))
    baselines_config: Path | None = None
    baseline_args: list[str] = field(default_factory=list)
    time_full_schedule: bool = False


def parse_methods(text: str) -> list[str]:
    """`"sfd,esd"` -> ["sfd", "esd"], refusing unknown, repeated or no methods."""
    methods = [name.strip() for name in text.split(",") if name.strip()]
    if not methods:
        raise SFDConfigError(f"--methods {text!r} names no method; choose from {list(METHOD_KEYS)}")
    unknown = [name for name in methods if name not in METHOD_KEYS]
    if unknown:
        raise SFDConfigError(
            f"--methods: unknown method {unknown[0]!r}; choose from {list(METHOD_KEYS)}"
        )
    repeated = sorted({name for name in methods if methods.count(name) > 1})
    if repeated:
        raise SFDConfigError(f"--methods names {repeated[0]!r} twice")
    return methods
