"""The `trainer` settings of an SFD run, checked on the parsed configuration before anything loads.

`sfd fit` and the demos (which parse their SFD options with the same parser) refuse here, in one
line, what Lightning would refuse only once the teacher is loaded and the `Trainer` is built (a
multi-line `MisconfigurationException`), and what cannot work with SFD's manual optimisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sfd.core import guards
from sfd.errors import SFDConfigError, check_at_least, check_count

NO_LIMIT = -1  # Lightning's max_steps / max_epochs meaning "no limit"
DEVICES_ALLOWED = (
    "a number of devices of at least 1, -1 (all of them), 'auto', or a list of device indices "
    "such as [0, 1] or '0,1'"
)


def check_trainer_settings(trainer: Mapping[str, Any]) -> None:
    """Refuse, in one line naming the value and what is allowed, a `trainer` setting that
    Lightning rejects or that SFD cannot use (no trainer setting given: nothing to check).

    Args:
        trainer: the parsed `trainer` group (as the configuration holds it: plain values).
    """
    for name in ("max_steps", "max_epochs"):
        value = trainer.get(name)
        if value is not None and value != NO_LIMIT:
            check_at_least(f"--trainer.{name}", value, note=f"or {NO_LIMIT}: no limit")
    check_devices(trainer.get("devices"))
    if trainer.get("num_nodes") is not None:
        check_count("trainer.num_nodes", trainer["num_nodes"])
    if trainer.get("log_every_n_steps") is not None:  # 0: no logging (Lightning's meaning)
        check_count("trainer.log_every_n_steps", trainer["log_every_n_steps"], 0)
    if trainer.get("precision") is not None:
        guards.check_precision(trainer["precision"])
    if trainer.get("gradient_clip_val") is not None:
        raise SFDConfigError(
            f"trainer.gradient_clip_val={trainer['gradient_clip_val']} cannot work: SFD "
            "optimises manually (two optimizers per iteration) and Lightning clips only "
            "automatic optimisation; set model.fake_grad_clip / model.generator_grad_clip instead "
            "(each network's gradient elements clipped to ±value; null: no clipping)"
        )
    if trainer.get("gradient_clip_algorithm") is not None:
        raise SFDConfigError(
            f"trainer.gradient_clip_algorithm={trainer['gradient_clip_algorithm']!r} cannot "
            "work with SFD's manual optimisation; model.fake_grad_clip / model.generator_grad_clip "
            "clip by value"
        )
    accumulate = trainer.get("accumulate_grad_batches")
    if accumulate not in (None, 1):
        raise SFDConfigError(
            f"trainer.accumulate_grad_batches={accumulate} cannot work with SFD's manual "
            "optimisation; raise model.batch_size (or trainer.devices) instead"
        )


def check_devices(devices: Any) -> None:
    """Refuse a `trainer.devices` that selects no device (0, '0', [], a negative count other than
    -1) or is not a count, 'auto' or device indices."""
    if devices is None or devices == "auto":
        return
    if _device_count(devices) is None:
        raise SFDConfigError(f"trainer.devices={devices!r} must be {DEVICES_ALLOWED}")


def _device_count(devices: Any) -> int | None:
    """How many devices `devices` selects (-1: all), None where it selects none or is no such value."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return devices if devices >= 1 or devices == -1 else None
    if isinstance(devices, str):
        text = devices.strip()
        if "," in text:  # Lightning's "0,1" (or "0,"): device indices
            parts = [part.strip() for part in text.split(",") if part.strip()]
            return len(parts) if parts and all(part.isdigit() for part in parts) else None
        try:
            return _device_count(int(text))  # "2", "-1": a count
        except ValueError:
            return None
    if isinstance(devices, list | tuple):
        indices = [i for i in devices if isinstance(i, int) and not isinstance(i, bool) and i >= 0]
        return len(devices) if devices and len(indices) == len(devices) else None
    return None
