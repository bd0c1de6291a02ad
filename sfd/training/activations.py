"""Activation bytes of an SFD run, measured on meta-device twins of its networks.

Activations are measured, not guessed: one forward of a twin of the network, built from its config
on the meta device (shapes only, no memory, no weights), at the run's batch and latent size,
summing the bytes of the distinct tensors autograd saves for the backward pass. Attention saves what
FlashAttention-style kernels save (q, k, v, the output and an fp32 log-sum-exp per query row), not
the N×N attention matrix. Gradient checkpointing is read from the same forward: a checkpointed
block keeps only its inputs until the backward pass, which then recomputes one block at a time, so
the checkpointed estimate is (what is saved outside the blocks) + (the blocks' inputs) + (the
largest block's own saved tensors).

One SFD iteration (docs/method.md §4) keeps, at per-device batch b, in its generator step: two
generator calls (remain, forget) of b samples with the generator's weights trainable, and two
teacher and two fake-score calls of b samples (2b when that network is guided: the conditional and
null halves run as one batch) with frozen weights and the input requiring grad; its fake-score step
keeps two fake-score calls with the fake score's weights trainable. The peak is the larger of the
two steps.

Mixed precision with fp32 weights: autocast keeps one bf16 copy of every trainable weight for the
whole step, and the frozen networks' ops save the bf16 copies of their weights they need for the
input gradient (measured per call; with checkpointing, only one block's at a time).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from sfd.training.parameter_bytes import parameter_count

__all__ = [
    "CLIP_TOKENS",
    "T5_TOKENS",
    "Activations",
    "CallActivations",
    "CallCache",
    "StepShape",
    "adapter_twin",
    "example_inputs",
    "measure_call",
    "meta_twin",
    "step_activations",
]

CLIP_TOKENS = 77  # the CLIP prompt length of SD 1.x / 2.x / XL and of SD3's CLIP half
T5_TOKENS = {"SD3Transformer2DModel": 256, "FluxTransformer2DModel": 512}  # pipelines' defaults


@dataclass(frozen=True)
class CallActivations:
    """Bytes one forward keeps for its backward pass.

    Args:
        saved: activations saved without gradient checkpointing.
        held: activations kept with checkpointing (the checkpointed blocks' inputs and what is
            saved outside the blocks).
        recompute: the largest checkpointed block's own saved activations (live while its
            backward runs).
        weights_saved: bytes of weights the ops save (in the compute dtype; under autocast with
            fp32 weights, these are copies).
        weights_held: those saved outside the checkpointed blocks.
        weights_recompute: the largest block's saved weights (with `recompute`, an upper bound
            of one block's backward).
        largest_block_params: elements of the largest checkpointed block (an FSDP unit).
    """

    saved: int
    held: int
    recompute: int
    weights_saved: int
    weights_held: int
    weights_recompute: int
    largest_block_params: int

    def kept(self, checkpointing: bool, weight_copies: bool) -> int:
        """What the call keeps until its backward (checkpointing: without the recompute peak)."""
        if checkpointing:
            return self.held + (self.weights_held if weight_copies else 0)
        return self.saved + (self.weights_saved if weight_copies else 0)

    def peak(self, weight_copies: bool) -> int:
        """What the backward of one checkpointed block adds while it runs."""
        return self.recompute + (self.weights_recompute if weight_copies else 0)


class _FlashAttentionSaves(torch.autograd.Function):
    """Shape-only attention that saves what FlashAttention saves: q, k, v, out, log-sum-exp."""

    @staticmethod
    def forward(ctx: Any, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        logsumexp = q.new_empty(q.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(q, k, v, out, logsumexp)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Any:  # pragma: no cover - never run on meta
        raise RuntimeError("memory measurement only; no backward")


class _FlashAttention(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func is nn.functional.scaled_dot_product_attention:
            named = dict(zip(("query", "key", "value"), args[:3], strict=False))
            q, k, v = ({**named, **kwargs}[name] for name in ("query", "key", "value"))
            return _FlashAttentionSaves.apply(q, k, v)
        return func(*args, **kwargs)


class _SavedBytes:
    """Storages autograd saves, by where they are saved (outside the checkpointed blocks or in one)."""

    def __init__(self, weights: set[int]) -> None:
        self.weights = weights
        self.outside: dict[int, int] = {}
        self.outside_weights: dict[int, int] = {}
        self.block_inputs: dict[int, int] = {}
        self.blocks: list[tuple[dict[int, int], dict[int, int], int]] = []
        self._current: tuple[dict[int, int], dict[int, int]] | None = None
        self._alive: list[Tensor] = []  # keeps storages alive, so their keys stay unique

    def pack(self, tensor: Tensor) -> Tensor:
        storage = tensor.untyped_storage()
        key = storage._cdata
        activations, weights = self._current or (self.outside, self.outside_weights)
        (weights if key in self.weights else activations)[key] = storage.nbytes()
        self._alive.append(tensor)
        return tensor

    def checkpoint(self, block: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """Stands in for diffusers' `_gradient_checkpointing_func`: runs the block, recording."""
        if self._current is not None:  # nested: part of the enclosing block
            return block(*args, **kwargs)
        for value in (*args, *kwargs.values()):
            if isinstance(value, Tensor):
                storage = value.untyped_storage()
                self.block_inputs[storage._cdata] = storage.nbytes()
                self._alive.append(value)
        self._current = ({}, {})
        try:
            output = block(*args, **kwargs)
        finally:
            activations, weights = self._current
            self._current = None
            self.blocks.append((activations, weights, parameter_count(block)))
        return output

    def result(self) -> CallActivations:
        every = dict(self.outside)
        every_weights = dict(self.outside_weights)
        for activations, weights, _ in self.blocks:
            every.update(activations)
            every_weights.update(weights)
        return CallActivations(
            saved=sum(every.values()),
            held=sum({**self.outside, **self.block_inputs}.values()),
            recompute=max((sum(b[0].values()) for b in self.blocks), default=0),
            weights_saved=sum(every_weights.values()),
            weights_held=sum(self.outside_weights.values()),
            weights_recompute=max((sum(b[1].values()) for b in self.blocks), default=0),
            largest_block_params=max((b[2] for b in self.blocks), default=0),
        )


def measure_call(
    network: nn.Module, inputs: Mapping[str, Any], train_weights: bool, grad_input: bool
) -> CallActivations:
    """Bytes one forward of a meta-device network saves for its backward pass.

    Args:
        network: a diffusers model on the meta device, in the compute dtype; its parameters that
            require grad are the trained ones (all, or the adapters).
        inputs: its forward's keyword arguments (`example_inputs`), on the meta device.
        train_weights: whether the trained parameters get gradients in this call.
        grad_input: whether the first input (the noisy sample) requires grad.
    """
    trained = [p for p in network.parameters() if p.requires_grad]
    weights = {p.untyped_storage()._cdata for p in network.parameters()}
    counter = _SavedBytes(weights)
    checkpointing = getattr(network, "is_gradient_checkpointing", False)
    if (
        hasattr(network, "enable_gradient_checkpointing")
        and network._supports_gradient_checkpointing
    ):
        network.enable_gradient_checkpointing(counter.checkpoint)
    inputs = dict(inputs)
    first = next(iter(inputs))
    inputs[first] = inputs[first].detach().requires_grad_(grad_input)
    try:
        for p in trained:
            p.requires_grad_(train_weights)
        with (
            torch.enable_grad(),
            _FlashAttention(),
            torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t),
        ):
            network(**inputs)
    finally:
        for p in trained:
            p.requires_grad_(True)
        if (
            hasattr(network, "disable_gradient_checkpointing")
            and network._supports_gradient_checkpointing
        ):
            network.disable_gradient_checkpointing()
            if checkpointing:
                network.enable_gradient_checkpointing()
    return counter.result()


def example_inputs(
    network: nn.Module,
    batch: int,
    latent_size: tuple[int, int],
    dtype: torch.dtype,
    t5_tokens: int | None = None,
) -> dict[str, Any] | None:
    """Keyword arguments of one forward of a diffusers denoising network, on the meta device.

    Args:
        network: a `UNet2DModel`, `UNet2DConditionModel` (SD 1.x / 2.x / XL),
            `SD3Transformer2DModel` or `FluxTransformer2DModel`.
        batch: samples in the call.
        latent_size: (H, W) of the network's input (Flux: before 2×2 packing).
        dtype: the compute dtype.
        t5_tokens: T5 prompt length of the flow transformers (default: their pipelines' 256 for
            SD3, after CLIP's 77; 512 for Flux).

    Returns:
        the inputs, or None for a network of another kind.
    """
    kind = type(network).__name__
    config = network.config if hasattr(network, "config") else None
    if config is None:
        return None
    h, w = latent_size
    meta = {"device": "meta", "dtype": dtype}
    timestep = torch.empty(batch, device="meta")
    tokens = CLIP_TOKENS
    if kind in T5_TOKENS:
        t5 = T5_TOKENS[kind] if t5_tokens is None else t5_tokens
        tokens = t5 + (CLIP_TOKENS if kind == "SD3Transformer2DModel" else 0)
    if kind == "UNet2DModel":
        inputs = {
            "sample": torch.empty(batch, config.in_channels, h, w, **meta),
            "timestep": timestep,
        }
        if config.num_class_embeds is not None:
            inputs["class_labels"] = torch.zeros(batch, dtype=torch.long, device="meta")
        return inputs
    if kind == "UNet2DConditionModel":
        inputs = {
            "sample": torch.empty(batch, config.in_channels, h, w, **meta),
            "timestep": timestep,
            "encoder_hidden_states": torch.empty(batch, tokens, config.cross_attention_dim, **meta),
        }
        if config.addition_embed_type == "text_time":  # SDXL: pooled text + size / crop ids
            pooled = (
                config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
            )
            inputs["added_cond_kwargs"] = {
                "text_embeds": torch.empty(batch, pooled, **meta),
                "time_ids": torch.empty(batch, 6, **meta),
            }
        return inputs
    if kind == "SD3Transformer2DModel":
        return {
            "hidden_states": torch.empty(batch, config.in_channels, h, w, **meta),
            "encoder_hidden_states": torch.empty(batch, tokens, config.joint_attention_dim, **meta),
            "pooled_projections": torch.empty(batch, config.pooled_projection_dim, **meta),
            "timestep": timestep,
        }
    if kind == "FluxTransformer2DModel":
        patches = (h // 2) * (w // 2)
        inputs = {
            "hidden_states": torch.empty(batch, patches, config.in_channels, **meta),
            "encoder_hidden_states": torch.empty(batch, tokens, config.joint_attention_dim, **meta),
            "pooled_projections": torch.empty(batch, config.pooled_projection_dim, **meta),
            "timestep": timestep,
            "img_ids": torch.empty(patches, 3, device="meta"),
            "txt_ids": torch.empty(tokens, 3, device="meta"),
        }
        if config.guidance_embeds:
            inputs["guidance"] = torch.empty(batch, device="meta")
        return inputs
    return None


def meta_twin(network: nn.Module, dtype: torch.dtype) -> nn.Module | None:
    """The network rebuilt from its config on the meta device, in `dtype`, with its peft adapters.

    Parameters trained in `network` (requires_grad) are the trained ones of the twin; None when the
    network is not a diffusers model (no config to rebuild it from).
    """
    from diffusers import ModelMixin

    if not isinstance(network, ModelMixin):
        return None
    with torch.device("meta"):
        twin = type(network).from_config(network.config)
        for name, config in (getattr(network, "peft_config", None) or {}).items():
            twin.add_adapter(copy.deepcopy(config), adapter_name=name)
    nn.Module.to(twin, dtype)  # (ModelMixin.to warns about fp32 modules: none matter here)
    trained = {n for n, p in network.named_parameters() if p.requires_grad}
    for name, param in twin.named_parameters():
        param.requires_grad_(name in trained)
    if getattr(network, "is_gradient_checkpointing", False):
        twin.enable_gradient_checkpointing()
    return twin


def adapter_twin(
    network: nn.Module, config: Any, adapter: str, dtype: torch.dtype
) -> nn.Module | None:
    """`meta_twin` of a shared base's network (`sfd.teachers.adapters`) as one view runs it: with
    the PEFT adapter `adapter` (`config`, a `PeftConfig`) injected, active and the only weights
    trained. The shared base's other adapters are off in that view's calls: they save nothing.
    None when the network is not a diffusers model or PEFT cannot adapt its twin."""
    from peft import inject_adapter_in_model

    twin = meta_twin(network, dtype)
    if twin is None:
        return None
    try:
        with torch.device("meta"):
            inject_adapter_in_model(copy.deepcopy(config), twin, adapter_name=adapter)
    except (ValueError, TypeError):
        return None
    nn.Module.to(twin, dtype)
    for name, param in twin.named_parameters():
        param.requires_grad_(adapter in name.split("."))
    return twin


@dataclass(frozen=True)
class StepShape:
    """What one SFD iteration evaluates on one device (docs/method.md §4).

    Args:
        batch: samples per device in each of the remain and forget batches.
        teacher_guided: the teacher runs conditional and null halves as one call (CFG).
        fake_train_guided: the same for the fake score in its own loss.
        fake_eval_guided: the same for the fake score inside the generator loss.
    """

    batch: int
    teacher_guided: bool = True
    fake_train_guided: bool = True
    fake_eval_guided: bool = True


@dataclass(frozen=True)
class Activations:
    """Activation bytes of the peak step, and which step it is."""

    total: int
    step: str  # "generator" or "fake score"


Measure = Callable[[str, int, bool, bool], CallActivations]


def step_activations(
    measure: Measure,
    shape: StepShape,
    checkpointing: bool,
    weight_copies: bool,
    trained_weight_bytes: Mapping[str, int],
    gathered_units: int = 0,
    element_bytes: int = 2,
) -> Activations:
    """Activation bytes of the larger of SFD's two steps.

    Args:
        measure: (role, batch, train_weights, grad_input) -> the call's `CallActivations`, role
            one of "generator", "teacher", "fake score".
        shape: the iteration's batch and guidance.
        checkpointing: gradient checkpointing on.
        weight_copies: autocast makes compute-dtype copies of the weights (fp32 weights under
            mixed precision); False when the weights already are in the compute dtype, or
            gathered per block (FSDP).
        trained_weight_bytes: per role, the bytes of the compute-dtype copies of its trained
            weights that autocast caches while the role trains.
        gathered_units: FSDP units held unsharded at once (the one computing and the one
            prefetched: 2), each the size of the largest checkpointed block; 0 without FSDP.
        element_bytes: bytes per element of a gathered unit (the compute dtype).
    """
    b = shape.batch
    generator_step = [
        ("generator", b, True, False),
        ("generator", b, True, False),
        ("teacher", b * (2 if shape.teacher_guided else 1), False, True),
        ("teacher", b * (2 if shape.teacher_guided else 1), False, True),
        ("fake score", b * (2 if shape.fake_eval_guided else 1), False, True),
        ("fake score", b * (2 if shape.fake_eval_guided else 1), False, True),
    ]
    fake_step = [("fake score", b * (2 if shape.fake_train_guided else 1), True, False)] * 2
    totals = {}
    for step, calls, trained in (
        ("generator", generator_step, "generator"),
        ("fake score", fake_step, "fake score"),
    ):
        results = [(measure(*call), call[2]) for call in calls]
        kept = sum(r.kept(checkpointing, weight_copies and not train) for r, train in results)
        peak = (
            max(r.peak(weight_copies and not train) for r, train in results) if checkpointing else 0
        )
        cached = trained_weight_bytes.get(trained, 0) if weight_copies else 0
        unit = max(r.largest_block_params for r, _ in results) * element_bytes
        totals[step] = kept + peak + cached + gathered_units * unit
    step = max(totals, key=lambda s: totals[s])
    return Activations(totals[step], step)


class CallCache:
    """`Measure` over meta twins of the networks, each call shape measured once."""

    def __init__(
        self,
        twins: Mapping[str, nn.Module],
        latent_size: tuple[int, int],
        dtype: torch.dtype,
        t5_tokens: int | None = None,
    ) -> None:
        self.twins = twins
        self.latent_size = latent_size
        self.dtype = dtype
        self.t5_tokens = t5_tokens
        self._done: dict[tuple[str, int, bool, bool], CallActivations] = {}

    def __call__(
        self, role: str, batch: int, train_weights: bool, grad_input: bool
    ) -> CallActivations:
        key = (role, batch, train_weights, grad_input)
        if key not in self._done:
            twin = self.twins[role]
            inputs = example_inputs(twin, batch, self.latent_size, self.dtype, self.t5_tokens)
            if inputs is None:
                raise ValueError(f"no example inputs for {type(twin).__name__}")
            self._done[key] = measure_call(twin, inputs, train_weights, grad_input)
        return self._done[key]
