"""Lightning loop plumbing for a data-free, two-optimizer module.

`IterationStream` is the "dataset" of SFD (batches are only conditions and noise, drawn inside
the module); `step_without_counting` keeps the fake-score step out of `global_step`, so that
`max_steps`, checkpoint intervals and the random streams all count SFD iterations;
`set_training_mode` is `nn.Module.train` without its per-call walk of the module tree (each
iteration switches both networks twice).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)
from torch.utils.data import IterableDataset

# LightningOptimizer's private hooks that count a step in `global_step` (see step_without_counting).
LIGHTNING_STEP_HOOKS = ("_on_before_step", "_on_after_step")


class IterationStream(IterableDataset):
    """A data-free "dataset": SFD batches are only conditions and noise, drawn inside the module.

    It yields the index of each iteration so that Lightning's loops (epochs, checkpoints, logging
    intervals) work unchanged.
    """

    def __init__(self, steps_per_epoch: int) -> None:
        self.steps_per_epoch = steps_per_epoch

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.steps_per_epoch))

    def __len__(self) -> int:
        return self.steps_per_epoch


def step_without_counting(optimizer: Any) -> None:
    """`optimizer.step()` that Lightning does not count in `trainer.global_step`.

    Lightning counts every optimizer step, and one SFD iteration is two (fake score, generator),
    so the fake-score step is kept out of the count and `max_steps`, checkpoint intervals and the
    random streams all count iterations. Lightning exposes no switch for this: its training loop
    counts through the private `LightningOptimizer._on_before_step` / `_on_after_step` hooks,
    which are swapped for no-ops for this one step. If a Lightning release drops them, this
    fails loudly instead of silently counting two steps per iteration.

    Args:
        optimizer: a `LightningOptimizer`, as `LightningModule.optimizers()` returns it.
    """
    missing = [name for name in LIGHTNING_STEP_HOOKS if not hasattr(optimizer, name)]
    if missing:
        import lightning

        raise RuntimeError(
            f"Lightning {lightning.__version__}'s {type(optimizer).__name__} has no {missing}: "
            "sfd cannot keep the fake-score step out of global_step with this Lightning version"
        )
    saved = [getattr(optimizer, name) for name in LIGHTNING_STEP_HOOKS]
    for name in LIGHTNING_STEP_HOOKS:
        setattr(optimizer, name, _do_nothing)
    try:
        optimizer.step()
    finally:
        for name, hook in zip(LIGHTNING_STEP_HOOKS, saved, strict=True):
            setattr(optimizer, name, hook)


def _do_nothing() -> None:
    return None


# --- the networks' structure; training / evaluation mode ------------------------------------------

_registrations = 0  # registrations into watched modules so far (`structure_version`)
# id -> weak reference of the modules of networks whose structure something caches; an entry
# leaves when its module dies, so a new module reusing the id is not taken for a watched one
_watched: dict[int, weakref.ref] = {}


def _count_registration(module: nn.Module, name: str, value: Any) -> None:
    global _registrations
    watched = _watched.get(id(module))
    if watched is not None and watched() is module:
        _registrations += 1


def _forget(key: int) -> Callable[[weakref.ref], None]:
    return lambda _: _watched.pop(key, None)


for _register in (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
    register_module_buffer_registration_hook,
):
    _register(_count_registration)


def watch_structure(network: nn.Module) -> int:
    """Start counting registrations into `network`'s modules in `structure_version`; its value now.

    Call it when caching anything derived from `network`'s module tree (modules, parameters,
    buffers) and keep the returned version with the cache.
    """
    for module in network.modules():
        key = id(module)
        if key not in _watched:
            _watched[key] = weakref.ref(module, _forget(key))
    return _registrations


def bump_structure_version() -> None:
    """Invalidate every cache made at the current `structure_version`: for changes that bypass
    torch's registration hooks (e.g. FSDP2 putting sharded parameters into `_parameters`)."""
    global _registrations
    _registrations += 1


def structure_version() -> int:
    """A number that changes whenever a submodule, parameter or buffer is registered into a
    module of a watched network (`watch_structure`): attribute assignment, `add_module`,
    `register_buffer`, PEFT's adapter injection, `load_state_dict(assign=True)`, ... (FSDP2's
    `fully_shard` swaps parameters without a registration hook: the sharding step calls
    `bump_structure_version`). Lists of a watched network's modules or tensors made at
    one version are still the network's at the same one, unless `_apply` (`.to()`, `.half()`)
    replaced buffers in between. Registrations into modules outside watched networks (e.g. the
    `nn.ModuleList` a slice of one builds, as diffusers' blocks do on every forward) leave it
    alone; a module that joins a watched network is registered into one of its modules.
    """
    return _registrations


class _ModePlan:
    """What `network.train(mode)` does, flattened: the modules whose flag it sets, in its order.

    `nn.Module.train` sets a module's `training` flag and recurses into its children, one Python
    call and one `children()` walk per module (~1.5 µs each, 135 modules for the tests' tiny UNet,
    thousands for a large one). The plan records that recursion once: a module of a class that keeps
    `nn.Module.train` becomes a flag to set; one that overrides `train` (or has it replaced on
    the instance) is called as is, and its subtree is its business. Replaying the plan in order
    leaves every flag as the recursion would, shared submodules included.
    """

    def __init__(self, network: nn.Module) -> None:
        self.version = watch_structure(network)
        self.steps: list[tuple[nn.Module, bool]] = []  # (module, call its own train)
        self._record(network)

    def _record(self, module: nn.Module) -> None:
        cls = type(module)
        own = (
            cls.train is not nn.Module.train
            or cls.__setattr__ is not nn.Module.__setattr__
            or "train" in vars(module)
        )
        self.steps.append((module, own))
        if not own:
            for child in module.children():
                self._record(child)

    def run(self, mode: bool) -> None:
        for module, own in self.steps:
            if own:
                module.train(mode)
            else:  # what nn.Module.__setattr__ does with a plain attribute
                module.__dict__["training"] = mode


def set_training_mode(network: nn.Module, mode: bool, plans: dict[int, _ModePlan]) -> None:
    """`network.train(mode)`, replayed from a plan cached in `plans` (the caller's dictionary).

    A plan is rebuilt whenever a submodule (or tensor) was registered anywhere since it was made
    (`structure_version`), so a changed network is never switched from a stale plan. Modules put into a container's `_modules` directly (e.g.
    `nn.ModuleList.insert`) bypass torch's registration hooks: rebuild by clearing `plans`.
    """
    if not isinstance(mode, bool):
        raise ValueError("training mode is expected to be boolean")
    plan = plans.get(id(network))
    if plan is None or plan.version != structure_version() or plan.steps[0][0] is not network:
        plan = plans[id(network)] = _ModePlan(network)
    plan.run(mode)
