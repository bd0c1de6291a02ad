"""One frozen base, several adapters: the generator and the fake score as PEFT adapters on the teacher.

Full fine-tuning keeps three copies of the teacher's network (teacher, generator, fake score, plus
the generator's EMA). In the shared-base mode the teacher's network is held once, frozen, and
carries named PEFT adapters (LoRA, DoRA or LoKr): "generator", "fake_score" and, with an EMA,
"ema". The teacher is the network with every adapter disabled; the generator and the fake score
are `AdapterView`s, Denoisers that run the same network with their own adapter active.

Switching adapters. PEFT's `set_adapter` / `enable_adapters` also set `requires_grad` of the
adapter weights, which would undo the module's optimizer toggle (only the network being updated
requires grad). `SharedBase.active` switches the layers and puts every adapter weight's
`requires_grad` back. Autograd records the tensors a forward pass used, so switching adapters
between the generator's, the teacher's and the fake score's forward passes of one loss leaves
each backward pass with the right weights. Gradient checkpointing recomputes a block's forward
pass during the backward pass, when another adapter may be active: the checkpoint function of
the shared base re-activates, for the recomputation, the adapter that ran the original pass.

Weights. The base weights stay frozen parameters (no gradients, no optimizer state) and are left
out of the teacher's state_dict, so a training checkpoint holds only the adapter weights (under
`generator.`, `fake_score.`, `ema.`) and the optimizer states. `base_dtype="bfloat16"` stores the
base in bf16 (the adapters stay float32 and get float32 gradients).

Export. `merged_denoiser` folds one adapter into a plain copy of the base: the generator as a
full network, exported like a full fine-tuning run's.

Starting from saved adapters. `save_adapters` writes adapters alone (one safetensors file each,
their names free of the adapter's name, and `adapters.json` with the settings and the base's
architecture), never the base; `model.adapters.start_from` starts a run's generator (and its
EMA) and fake score from such a folder instead of the identity: the demos' stage 2 continues
from the stage-1 adapters as full copies continue from the stage-1 networks.
"""

from __future__ import annotations

import copy
import importlib
import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoKrConfig, LoraConfig, PeftConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sfd.errors import SFDConfigError, check_number
from sfd.teachers.base import Denoiser

GENERATOR_ADAPTER = "generator"
FAKE_SCORE_ADAPTER = "fake_score"
EMA_ADAPTER = "ema"
ADAPTER_KINDS = ("lora", "dora", "lokr")
BASE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Linear and convolution layers of diffusers UNets and transformers: attention projections,
# feed-forward layers, the residual blocks' convolutions and time embeddings. Names match as
# PEFT matches them (the module name or its last components); absent ones are skipped.
DEFAULT_TARGETS = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "proj_in",
    "proj_out",
    "ff.net.0.proj",
    "ff.net.2",
    "conv1",
    "conv2",
    "conv_shortcut",
    "time_emb_proj",
)
# Default α per unit of rank (α = 4 r, the update scaled by 4). Adam moves each factor's entries by
# about the learning rate per step whatever α is, so LoRA's update (α/r)·B·A grows slower than a full
# weight under the same optimizer at α = r; α/r scales the adapters' effective learning rate. 16 r
# trained stage 2 from the teacher fastest (digits demo, 200 iterations: remain FID 6.8x the
# teacher's at α = r, 4.5x at 4r, 3.5x at 8r, 3.1x at 16r), but diverged in the demo's stage 1 (600
# iterations at the generator's lr 3e-4: the losses jump at ~400 and the generator's FID goes from
# 2.4x to 68x; docs/results/shared_base_stage1.md). 4 r keeps the per-weight step of LoRA near a
# full copy's: stage 1 ends at 1.10x (6.66x at 16 r; full copies 0.97x), docs/results/shared_base.md.
# Stage 2 needs a faster fake score than full copies' (the demos' sfd_digits_stage2_shared_base.yaml):
# docs/results/shared_base_stage2.md.
ALPHA_PER_RANK = 4
# How the EMA adapter averages the generator's (`SharedBase.average_into`): the merged updates B·A,
# truncated to the rank. Caches of adapter runs record it (a stage 1 averaged otherwise differs).
ADAPTER_EMA = "merged updates, rank-truncated"
VIEW_SEPARATOR = "/"  # parameter names inside a view: the network's dotted name with "/"
ADAPTED_KIND = "shared_base_adapter"  # spec tag of an adapter view (see `generator_from_spec`)
ADAPTERS_RECORD = "adapters.json"  # beside the saved adapters (`save_adapters`)
# Settings that change the function an adapter's weights compute: saved and started-from must agree.
FUNCTION_SETTINGS = ("kind", "rank", "alpha", "targets")


@dataclass
class AdapterSettings:
    """The shared-base mode of `SFDModule` (`model.adapters`; null: full copies).

    Args:
        rank: adapter rank r (LoRA / DoRA rank, LoKr rank).
        alpha: scaling α (the update is scaled by α/r); default `ALPHA_PER_RANK` · r (4 r):
            with Adam, α/r multiplies the adapters' effective learning rate.
        kind: "lora", "dora" (weight-decomposed LoRA) or "lokr" (Kronecker product).
        targets: names of the layers to adapt (PEFT's `target_modules`); default
            `DEFAULT_TARGETS`, those the teacher has.
        base_dtype: "float32" or "bfloat16": the dtype of the frozen base weights.
        gradient_checkpointing: recompute the network's blocks in the backward pass (diffusers
            networks).
        seed: seed of the adapters' random initialisation (LoRA's A, LoKr's w1).
        start_from: a folder of saved adapters (`save_adapters`; e.g. a demo's stage 1) to start
            the generator, its EMA and the fake score from; None: the identity (the teacher).
    """

    rank: int = 16
    alpha: float | None = None
    kind: str = "lora"
    targets: list[str] | None = None
    base_dtype: str = "float32"
    gradient_checkpointing: bool = False
    seed: int = 0
    start_from: str | None = None

    def __post_init__(self) -> None:
        check_adapter_settings(asdict(self))

    def resolved_alpha(self) -> float:
        """α with its default filled in."""
        return float(self.alpha if self.alpha is not None else ALPHA_PER_RANK * self.rank)

    def resolved_targets(self) -> list[str]:
        """The layer names PEFT is asked to adapt, with the default filled in."""
        return list(self.targets or DEFAULT_TARGETS)

    def described(self) -> dict[str, Any]:
        """The settings with defaults filled in (kind, rank, alpha, targets, ...): the training
        record's and the model card's "adapters"."""
        return asdict(self) | {"alpha": self.resolved_alpha(), "targets": self.resolved_targets()}

    def peft_config(self) -> PeftConfig:
        """The PEFT config of one adapter."""
        alpha = self.resolved_alpha()
        targets = self.resolved_targets()
        if self.kind == "lokr":
            return LoKrConfig(r=self.rank, alpha=alpha, target_modules=targets)
        return LoraConfig(
            r=self.rank,
            lora_alpha=alpha,
            target_modules=targets,
            lora_dropout=0.0,
            use_dora=self.kind == "dora",
        )


def check_adapter_settings(
    settings: Mapping[str, Any] | None, prefix: str = "model.adapters."
) -> None:
    """Raise `SFDConfigError` (one line naming the setting) for a bad `model.adapters` value."""
    if settings is None:
        return
    rank = settings.get("rank", 16)
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise SFDConfigError(f"{prefix}rank={rank!r} must be an integer of at least 1")
    if settings.get("alpha") is not None:
        check_number(f"{prefix}alpha", settings["alpha"], low=0, low_open=True)
    kind = settings.get("kind", "lora")
    if kind not in ADAPTER_KINDS:
        raise SFDConfigError(f"{prefix}kind={kind!r} is not supported; allowed: {ADAPTER_KINDS}")
    dtype = settings.get("base_dtype", "float32")
    if dtype not in BASE_DTYPES:
        raise SFDConfigError(
            f"{prefix}base_dtype={dtype!r} is not supported; allowed: {tuple(BASE_DTYPES)}"
        )
    targets = settings.get("targets")
    if targets is not None and (
        not isinstance(targets, list | tuple)
        or not targets
        or not all(isinstance(t, str) and t for t in targets)
    ):
        raise SFDConfigError(
            f"{prefix}targets={targets!r} must be a non-empty list of layer names (or null)"
        )
    start = settings.get("start_from")
    if start is not None and (not isinstance(start, str | Path) or not str(start)):
        raise SFDConfigError(
            f"{prefix}start_from={start!r} must be a folder of saved adapters (or null)"
        )


def _adapter_of(name: str, adapters: Sequence[str]) -> str | None:
    """Which adapter a parameter name of the adapted network belongs to (None: the base)."""
    parts = name.split(".")
    found = [a for a in adapters if a in parts]
    return found[0] if found else None


class SharedBase:
    """The teacher's network, frozen, carrying one PEFT adapter per trained network.

    Not an `nn.Module`: the network is registered once, as the teacher; the views register
    only their adapter's weights.

    Args:
        teacher: the teacher denoiser; adapters are injected into it in place.
        settings: rank, kind, targets, base dtype, gradient checkpointing.
        names: the adapters to create.
    """

    def __init__(self, teacher: Denoiser, settings: AdapterSettings, names: Sequence[str]) -> None:
        self.teacher = teacher
        self.settings = settings
        self.names = tuple(names)
        taken = {part for name, _ in teacher.named_modules() for part in name.split(".")}
        clash = sorted(taken & set(self.names))
        if clash:
            raise SFDConfigError(
                f"model.adapters: the teacher has a layer named {clash[0]!r}, an adapter's name"
            )
        teacher.requires_grad_(False)
        for index, name in enumerate(self.names):
            # The adapters' random initialisation depends only on the seed, not on the global
            # random state: two builds of one run (a restart, another rank) start equal.
            with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(settings.seed * 1_000_003 + index)
                warnings.filterwarnings("ignore", message=".*peft_config.*")
                try:
                    inject_adapter_in_model(settings.peft_config(), teacher, adapter_name=name)
                except (ValueError, TypeError) as error:
                    raise SFDConfigError(
                        f"model.adapters: PEFT cannot adapt the teacher {type(teacher).__name__} "
                        f"({str(error).splitlines()[0][:200]}); adapters need linear or "
                        "convolution layers named by adapters.targets (default: the attention, "
                        "feed-forward and residual layers of diffusers networks); use full "
                        "copies (model.adapters: null)"
                    ) from error
        self.layers = [m for m in teacher.modules() if isinstance(m, BaseTunerLayer)]
        self.adapter_parameters: dict[str, dict[str, nn.Parameter]] = {n: {} for n in self.names}
        base = []
        for key, param in teacher.named_parameters():
            owner = _adapter_of(key, self.names)
            if owner is None:
                base.append(param)
            else:
                self.adapter_parameters[owner][key] = param
        if not all(self.adapter_parameters.values()):
            raise SFDConfigError(
                f"model.adapters: PEFT added no trainable weights to {type(teacher).__name__}"
            )
        dtype = BASE_DTYPES[settings.base_dtype]
        for param in base:
            param.data = param.data.to(dtype)
            param.requires_grad_(False)
        self._hide_adapters_from_teacher_state()
        self.current: str | None = None
        self._switch(None)
        if settings.gradient_checkpointing:
            self._enable_checkpointing()

    # --- switching --------------------------------------------------------------------------------

    @contextmanager
    def active(self, name: str | None) -> Iterator[None]:
        """Run the network with adapter `name` (None: none, the teacher) inside the block."""
        previous = self.current
        if name == previous:
            yield
            return
        self._switch(name)
        try:
            yield
        finally:
            self._switch(previous)

    def _switch(self, name: str | None) -> None:
        wanted = [
            p.requires_grad for group in self.adapter_parameters.values() for p in group.values()
        ]
        for layer in self.layers:
            if name is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(name)
        params = [p for group in self.adapter_parameters.values() for p in group.values()]
        for param, requires_grad in zip(params, wanted, strict=True):
            param.requires_grad_(requires_grad)
        self.current = name

    def _checkpoint(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Non-reentrant activation checkpointing that recomputes with the adapter that ran."""
        name = self.current
        return checkpoint(
            function,
            *args,
            use_reentrant=False,
            context_fn=lambda: (nullcontext(), self.active(name)),
            **kwargs,
        )

    def _enable_checkpointing(self) -> None:
        networks = [
            m
            for m in self.teacher.modules()
            if getattr(m, "_supports_gradient_checkpointing", False)
            and hasattr(m, "enable_gradient_checkpointing")
        ]
        if not networks:
            raise SFDConfigError(
                "model.adapters.gradient_checkpointing: the teacher "
                f"{type(self.teacher).__name__} has no diffusers network that supports it"
            )
        for network in networks:
            network.enable_gradient_checkpointing(gradient_checkpointing_func=self._checkpoint)

    # --- state ----------------------------------------------------------------------------------

    def _hide_adapters_from_teacher_state(self) -> None:
        """The teacher's state_dict is the base alone: adapter weights are saved by the views."""
        adapter_keys = {k for group in self.adapter_parameters.values() for k in group}

        def drop(module: nn.Module, state: dict[str, Any], prefix: str, _meta: Any) -> None:
            for key in adapter_keys:
                state.pop(prefix + key, None)

        def not_missing(module: nn.Module, incompatible: Any) -> None:
            incompatible.missing_keys[:] = [
                k for k in incompatible.missing_keys if not _is_adapter_key(k, adapter_keys)
            ]

        self.hooks = [
            self.teacher.register_state_dict_post_hook(drop),
            self.teacher.register_load_state_dict_post_hook(not_missing),
        ]

    def copy_adapter(self, source: str, target: str) -> None:
        """Set adapter `target`'s weights to adapter `source`'s (same keys up to the name)."""
        with torch.no_grad():
            for key, param in self.adapter_parameters[target].items():
                param.copy_(self.adapter_parameters[source][_rename(key, target, source)])

    @torch.no_grad()
    def average_into(self, target: str, source: str, weight: float) -> None:
        """Adapter `target` ← the EMA step toward adapter `source` (weight w = 1 − decay) of the
        function they compute: each LoRA (and DoRA) layer's merged update B·A by `low_rank_lerp`,
        the rest of the weights (DoRA's magnitudes, LoKr's factors, biases) lerped as they are."""
        averaged: set[int] = set()
        for layer in self.layers:
            for ema, live in zip(
                _lora_pairs(layer, target), _lora_pairs(layer, source), strict=True
            ):
                low_rank_lerp(ema, live, weight)
                averaged.update(id(t) for t in ema)
        rest = [
            (param, self.adapter_parameters[source][_rename(key, target, source)])
            for key, param in self.adapter_parameters[target].items()
            if id(param) not in averaged
        ]
        if rest:
            torch._foreach_lerp_([t for t, _ in rest], [s.detach() for _, s in rest], weight)

    def trainable_count(self, name: str) -> int:
        """Number of weights of adapter `name`."""
        return sum(p.numel() for p in self.adapter_parameters[name].values())


def _rename(key: str, old: str, new: str) -> str:
    return ".".join(new if part == old else part for part in key.split("."))


def _lora_pairs(layer: nn.Module, name: str) -> list[tuple[Tensor, Tensor]]:
    """(B, A) weights of adapter `name` in a PEFT LoRA / DoRA layer (none in other kinds)."""
    pairs = []
    if name in getattr(layer, "lora_A", {}):
        pairs.append((layer.lora_B[name].weight, layer.lora_A[name].weight))
    if name in getattr(layer, "lora_embedding_A", {}):
        pairs.append((layer.lora_embedding_B[name], layer.lora_embedding_A[name]))
    return pairs


def _is_adapter_key(key: str, adapter_keys: set[str]) -> bool:
    return any(key == k or key.endswith("." + k) for k in adapter_keys)


class AdapterView(Denoiser):
    """The shared network with one adapter active: the generator's or the fake score's denoiser.

    Registers only its adapter's weights (as `weights`, names with "/" for "."), so its
    `parameters()`, `requires_grad_`, optimizer and state_dict are the adapter's alone.

    Args:
        base: the shared base.
        name: the adapter this view runs.
    """

    def __init__(self, base: SharedBase, name: str) -> None:
        super().__init__()
        self.shared = base  # a plain attribute: the network itself is registered as the teacher
        self.adapter_name = name
        self.sample_shape = base.teacher.sample_shape
        self.num_classes = base.teacher.num_classes
        params = base.adapter_parameters[name]
        self.weights = nn.ParameterDict(
            {key.replace(".", VIEW_SEPARATOR): params[key] for key in sorted(params, key=_stem)}
        )

    @property
    def sigma_table(self) -> Tensor | None:
        return self.shared.teacher.sigma_table

    def forward(self, x: Tensor, sigma: Tensor | float, cond: Any) -> Tensor:
        with self.shared.active(self.adapter_name):
            return self.shared.teacher(x, sigma, cond)

    def guided(self, x: Tensor, sigma: Tensor | float, cond: Any, scale: float) -> Tensor:
        with self.shared.active(self.adapter_name):
            return self.shared.teacher.guided(x, sigma, cond, scale)

    def guided_in_one_batch(
        self, x: Tensor, sigma: Tensor | float, cond: Any, scale: float
    ) -> Tensor:
        with self.shared.active(self.adapter_name):
            return self.shared.teacher.guided_in_one_batch(x, sigma, cond, scale)

    # Everything but the network call is the teacher's.

    def sigma_at_time(self, t_init: Any) -> float:
        return self.shared.teacher.sigma_at_time(t_init)

    def check_guidance_scales(self, scales: dict[str, float]) -> None:
        self.shared.teacher.check_guidance_scales(scales)

    def generator_input(self, z: Tensor, sigma: float) -> Tensor:
        return self.shared.teacher.generator_input(z, sigma)

    def null_condition(self, cond: Any) -> Any:
        return self.shared.teacher.null_condition(cond)

    def class_embedding_table(self) -> Tensor | None:
        return self.shared.teacher.class_embedding_table()  # the frozen base's (not adapted)

    def drop_condition(self, cond: Any, drop: Tensor) -> Any:
        return self.shared.teacher.drop_condition(cond, drop)

    def spec(self) -> dict[str, Any]:
        """The base's spec, where to load its weights and the adapter's settings."""
        source = getattr(self.shared.teacher, "source", None)
        if source is None:
            raise NotImplementedError(
                f"{type(self.shared.teacher).__name__} records no source to reload its weights"
            )
        return {
            "kind": ADAPTED_KIND,
            "base": self.shared.teacher.spec(),
            "base_source": source,
            "adapter": self.adapter_name,
            "settings": asdict(self.shared.settings),
        }


def _stem(key: str) -> str:
    """A parameter name with its adapter's name removed: equal across adapters of one layer."""
    return ".".join(
        p for p in key.split(".") if p not in (GENERATOR_ADAPTER, FAKE_SCORE_ADAPTER, EMA_ADAPTER)
    )


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


# --- the EMA of merged updates -------------------------------------------------------------------


@torch.no_grad()
def low_rank_lerp(ema: tuple[Tensor, Tensor], live: tuple[Tensor, Tensor], weight: float) -> None:
    """B_e·A_e ← the best rank-k approximation of (1 − w)·B_e·A_e + w·B·A, in place (k: A_e's rows).

    The EMA of a LoRA's merged update B·A, kept as rank-k factors: lerping each factor on its own
    averages neither B·A nor anything of the network's weights (the mean of products is not the
    product of means). The sum of the two products has rank ≤ k + r; with thin QRs of the stacked
    factors and the SVD of their (k + r)² core it is written exactly, then truncated to rank k
    (Eckart–Young: no rank-k matrix is closer). Exact whenever the sum has rank ≤ k, e.g. while
    the updates share one column or row space. The new factors are balanced (B_e = U·√S,
    A_e = √S·Vᵀ).

    Args:
        ema: (B_e, A_e): (out, k, ...) and (k, in, ...) tensors (a convolution's trailing kernel
            dimensions are flattened into `in`; B's 1×1 kernel into `out`).
        live: (B, A) of the adapter being averaged, shaped likewise with rank r.
        weight: w = 1 − decay.
    """
    b_ema, a_ema = ema
    b_live, a_live = live
    rank = a_ema.shape[0]
    keep, take = (1.0 - weight) ** 0.5, weight**0.5
    left = torch.cat([keep * b_ema.flatten(1).double(), take * b_live.flatten(1).double()], 1)
    right = torch.cat([keep * a_ema.flatten(1).double(), take * a_live.flatten(1).double()], 0)
    q_left, r_left = torch.linalg.qr(left)
    q_right, r_right = torch.linalg.qr(right.T)
    u, s, vh = torch.linalg.svd(r_left @ r_right.T)
    kept = min(rank, s.numel())  # a rank above the layer's out or in size: the rest stays zero
    root = s[:kept].sqrt()
    b_new, a_new = torch.zeros_like(left[:, :rank]), torch.zeros_like(right[:rank])
    b_new[:, :kept] = q_left @ (u[:, :kept] * root)
    a_new[:kept] = (root[:, None] * vh[:kept]) @ q_right.T
    b_ema.copy_(b_new.reshape(b_ema.shape))
    a_ema.copy_(a_new.reshape(a_ema.shape))
