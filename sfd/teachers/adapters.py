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
Whichever setting turns checkpointing on, `model.adapters.gradient_checkpointing` or the teacher's
own (`gradient_checkpointing` of the family presets), the shared network checkpoints through that
function: diffusers' own would recompute with whatever adapter is active in the backward pass.

Weights. The base weights stay frozen parameters (no gradients, no optimizer state) and are left
out of the teacher's state_dict, so a training checkpoint holds only the adapter weights (under
`generator.`, `fake_score.`, `ema.`) and the optimizer states. `base_dtype="bfloat16"` stores the
base in bf16 (the adapters stay float32 and get float32 gradients).

Files: the settings are `sfd.teachers.adapter_settings`; the run's views, saved adapters and the
merged export are `sfd.teachers.adapter_io`.

Export. `merged_denoiser` folds one adapter into a plain copy of the base: the generator as a
full network, exported like a full fine-tuning run's.

Starting from saved adapters. `save_adapters` writes adapters alone (one safetensors file each,
their names free of the adapter's name, and `adapters.json` with the settings and the base's
architecture), never the base; `model.adapters.start_from` starts a run's generator (and its
EMA) and fake score from such a folder instead of the identity: the demos' stage 2 continues
from the stage-1 adapters as full copies continue from the stage-1 networks.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from typing import Any

import torch
from peft import inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from sfd.errors import SFDConfigError
from sfd.teachers.adapter_settings import (
    BASE_DTYPES,
    EMA_ADAPTER,
    FAKE_SCORE_ADAPTER,
    GENERATOR_ADAPTER,
    AdapterSettings,
)
from sfd.teachers.base import Denoiser

# How the EMA adapter averages the generator's (`SharedBase.average_into`): the merged updates B·A,
# truncated to the rank. Caches of adapter runs record it (a stage 1 averaged otherwise differs).
ADAPTER_EMA = "merged updates, rank-truncated"
VIEW_SEPARATOR = "/"  # parameter names inside a view: the network's dotted name with "/"
ADAPTED_KIND = "shared_base_adapter"  # spec tag of an adapter view (see `generator_from_spec`)


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
        # The teacher's own checkpointing (diffusers' function) would recompute a block with the
        # adapter active in the backward pass: either setting checkpoints through `_checkpoint`.
        self.checkpointing = settings.gradient_checkpointing or any(
            getattr(m, "is_gradient_checkpointing", False) for m in teacher.modules()
        )
        if self.checkpointing:
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

    def described(self) -> dict[str, Any]:
        """The settings as the run used them: `gradient_checkpointing` is true when either the
        adapters' setting or the teacher's own turned it on (the training record, the card)."""
        return self.settings.described() | {"gradient_checkpointing": self.checkpointing}

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
