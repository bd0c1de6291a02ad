"""Adapters of a shared-base run on disk and as plain networks: the views of a run, saved
adapters (`save_adapters`, `model.adapters.start_from`), and the merged generator for export.
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import Tensor

from sfd.errors import SFDConfigError
from sfd.teachers.adapter_settings import (
    EMA_ADAPTER,
    FAKE_SCORE_ADAPTER,
    GENERATOR_ADAPTER,
    AdapterSettings,
)
from sfd.teachers.adapters import VIEW_SEPARATOR, AdapterView, SharedBase, _stem
from sfd.teachers.base import Denoiser

ADAPTERS_RECORD = "adapters.json"  # beside the saved adapters (`save_adapters`)
# Settings that change the function an adapter's weights compute: saved and started-from must agree.
FUNCTION_SETTINGS = ("kind", "rank", "alpha", "targets")


def shared_base_views(
    settings: AdapterSettings, teacher: Denoiser, ema: bool
) -> dict[str, AdapterView]:
    """Inject the adapters of an SFD run into `teacher` and return the views, by adapter name.

    The EMA adapter starts as a copy of the generator's; every adapter starts as the identity
    (LoRA's B and DoRA's are zero-initialised, LoKr's w2 likewise), so every view starts equal
    to the teacher, as full copies do.
    """
    names = [GENERATOR_ADAPTER, FAKE_SCORE_ADAPTER] + ([EMA_ADAPTER] if ema else [])
    base = SharedBase(teacher, settings, names)
    views = {name: AdapterView(base, name).requires_grad_(name != EMA_ADAPTER) for name in names}
    if settings.start_from is not None:  # the generator and the fake score continue saved ones
        load_adapters({n: views[n] for n in (GENERATOR_ADAPTER, FAKE_SCORE_ADAPTER)}, settings)
    if ema:
        base.copy_adapter(GENERATOR_ADAPTER, EMA_ADAPTER)
    return views


# --- saved adapters (`start_from`) -------------------------------------------------------------


def _saved_state(view: AdapterView) -> dict[str, Tensor]:
    """A view's adapter weights under names free of the adapter's name (equal across adapters)."""
    return {
        _stem(key.replace(VIEW_SEPARATOR, ".")): param.detach().contiguous()
        for key, param in view.weights.items()
    }


def _architecture(teacher: Denoiser) -> dict[str, Any] | None:
    try:
        return teacher.spec()
    except NotImplementedError:
        return None


def save_adapters(
    views: Mapping[str, AdapterView], folder: Path, record: Mapping[str, Any] | None = None
) -> None:
    """Write adapters alone (not the base): `<name>.safetensors` per entry, and `adapters.json`.

    Args:
        views: saved name -> the view whose weights to save (e.g. "generator": the EMA's view).
        folder: an existing folder.
        record: more facts for adapters.json (e.g. the generator's σ_init).
    """
    base = next(iter(views.values())).shared
    for name, view in views.items():
        save_file(_saved_state(view), str(folder / f"{name}.safetensors"))
    described = {
        "adapters": sorted(views),
        "settings": base.settings.described() | {"start_from": None},
        "base": _architecture(base.teacher),
        "base_source": getattr(base.teacher, "source", None),
        **dict(record or {}),
    }
    (folder / ADAPTERS_RECORD).write_text(json.dumps(described, indent=2, default=str) + "\n")


def read_adapters_record(folder: str | Path, setting: str = "model.adapters.start_from") -> dict:
    """`adapters.json` of a folder `save_adapters` wrote; one line naming `setting` if absent."""
    record = Path(folder) / ADAPTERS_RECORD
    if not record.is_file():
        raise SFDConfigError(
            f"{setting}={str(folder)!r} is not a folder of saved adapters (no {ADAPTERS_RECORD})"
        )
    return json.loads(record.read_text())


def load_adapters(views: Mapping[str, AdapterView], settings: AdapterSettings) -> None:
    """Set each view's adapter to the saved adapter of the same name in `settings.start_from`.

    The saved adapters must compute the same function family (kind, rank, α, layers) on a base
    of the same architecture; anything else is one line naming the difference.
    """
    folder = Path(str(settings.start_from))
    setting = "model.adapters.start_from"
    saved = read_adapters_record(folder, setting)
    ours = settings.described()
    for key in FUNCTION_SETTINGS:
        if saved["settings"].get(key) != ours[key]:
            raise SFDConfigError(
                f"{setting}={str(folder)!r} holds adapters with {key}="
                f"{saved['settings'].get(key)!r}, this run's is {ours[key]!r}"
            )
    base = next(iter(views.values())).shared
    if saved.get("base") is not None and saved["base"] != _architecture(base.teacher):
        raise SFDConfigError(
            f"{setting}={str(folder)!r} holds adapters of another architecture than the teacher's"
        )
    for name, view in views.items():
        if name not in saved["adapters"]:
            raise SFDConfigError(
                f"{setting}={str(folder)!r} has no {name!r} adapter (it has {saved['adapters']})"
            )
        state = load_file(str(folder / f"{name}.safetensors"))
        ours_state = _saved_state(view)
        if set(state) != set(ours_state) or any(
            state[k].shape != ours_state[k].shape for k in state
        ):
            raise SFDConfigError(
                f"{setting}={str(folder)!r}: the {name!r} adapter's weights do not fit this "
                "teacher's adapted layers"
            )
        with torch.no_grad():
            for key, param in view.weights.items():
                param.copy_(state[_stem(key.replace(VIEW_SEPARATOR, "."))])


def saved_adapter_view(teacher: Denoiser, folder: str | Path, name: str) -> AdapterView:
    """One saved adapter on `teacher` (injected in place): e.g. a stage-1 generator to sample."""
    saved = read_adapters_record(folder, "the saved adapters")
    settings = AdapterSettings(**(saved["settings"] | {"start_from": str(folder)}))
    view = AdapterView(SharedBase(teacher, settings, [name]), name)
    load_adapters({name: view}, settings)
    return view.requires_grad_(False).eval()


# --- merging and export ----------------------------------------------------------------------


@torch.no_grad()
def merged_denoiser(view: AdapterView) -> Denoiser:
    """A plain float32 copy of the base network with `view`'s adapter folded into its weights."""
    teacher = view.shared.teacher
    merged = copy.deepcopy(teacher).float()
    for parent in list(merged.modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, BaseTunerLayer):
                child.merge(adapter_names=[view.adapter_name])
                setattr(parent, child_name, child.get_base_layer())
    merged.__dict__.pop("peft_config", None)
    for handle in view.shared.hooks:  # the copy's state_dict holds all its weights
        merged._state_dict_hooks.pop(handle.id, None)
        merged._load_state_dict_post_hooks.pop(handle.id, None)
    for network in merged.modules():  # the copy's checkpointing calls the live shared base
        if getattr(network, "gradient_checkpointing", False) and hasattr(
            network, "disable_gradient_checkpointing"
        ):
            network.disable_gradient_checkpointing()
    return merged.requires_grad_(False).eval()


def teacher_from_source(source: Mapping[str, Any]) -> Denoiser:
    """Load a pretrained teacher from its recorded source ({"class_path", "init_args"}).

    Only `sfd.teachers` denoiser classes are loaded: a checkpoint cannot name other code.
    """
    class_path = str(source.get("class_path", ""))
    module_name, _, class_name = class_path.rpartition(".")
    if not module_name.startswith("sfd.teachers"):
        raise SFDConfigError(f"the recorded teacher class {class_path!r} is not an sfd teacher")
    cls = getattr(importlib.import_module(module_name), class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Denoiser)):
        raise SFDConfigError(f"the recorded teacher class {class_path!r} is not a denoiser")
    return cls(**dict(source.get("init_args") or {}))


def denoiser_from_adapter_spec(spec: Mapping[str, Any], state: Mapping[str, Tensor]) -> Denoiser:
    """The merged generator denoiser of an adapter checkpoint: the teacher reloaded from its
    source, the adapter's weights (`state`, the view's state_dict) loaded and folded in."""
    settings = AdapterSettings(**spec["settings"])
    teacher = teacher_from_source(spec["base_source"])
    if teacher.spec() != spec["base"]:
        raise SFDConfigError(
            "the teacher loaded from the checkpoint's recorded source is not the architecture "
            "the run adapted"
        )
    name = spec["adapter"]
    view = AdapterView(SharedBase(teacher, settings, [name]), name)
    view.load_state_dict(dict(state), strict=True)
    return merged_denoiser(view)
