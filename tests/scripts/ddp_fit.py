"""Fit SFD on CPU with N gloo processes and save the final networks (rank zero).

Run as a script (Lightning's "popen" launcher re-runs this command line for the other ranks):

    python tests/scripts/ddp_fit.py --teacher DIR --output OUT.pt --devices 2 --strategy sfd_ddp

The output holds the generator, fake score and EMA state, both optimizer states and the median
seconds per iteration after the first (warm-up) iterations.
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from sfd.core.adversarial_settings import AdversarialSettings
from sfd.core.conditions import ClassConditions
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.teachers import PretrainedVPTeacher
from sfd.teachers.adapter_settings import AdapterSettings
from sfd.training.fsdp import SHARDED_NETWORKS, AlternatingFSDPStrategy
from sfd.training.strategies import AlternatingDDPStrategy

WARMUP_ITERATIONS = 2
OPTIMIZERS = {
    "sgd": partial(torch.optim.SGD, lr=1e-2, momentum=0.9),
    "adam": partial(torch.optim.Adam, lr=1e-4, betas=(0.0, 0.999)),
}


class IterationTimer(Callback):
    """Wall time between consecutive training-batch ends."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.seconds.append(now - self._last)
        self._last = now


class CountingAlternatingDDP(AlternatingDDPStrategy):
    """Counts the gradient bytes each rank all-reduces."""

    allreduced_bytes = 0

    def average_gradients(self) -> None:
        assert self.model is not None
        self.allreduced_bytes += sum(
            p.grad.numel() * p.grad.element_size()
            for p in self.model.parameters()
            if p.requires_grad and p.grad is not None
        )
        super().average_gradients()


class CountDDPBytes(Callback):
    """Registers a DDP communication hook that counts bucket bytes, then all-reduces as usual."""

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        strategy = trainer.strategy

        def counting_hook(state: Any, bucket: Any) -> Any:
            strategy.allreduced_bytes += bucket.buffer().numel() * bucket.buffer().element_size()
            return allreduce_hook(state, bucket)

        # DDP checks the hook's annotations at run time (this file's are strings).
        counting_hook.__annotations__ = {
            "state": object,
            "bucket": torch.distributed.GradBucket,
            "return": torch.futures.Future[torch.Tensor],
        }
        strategy.allreduced_bytes = 0
        strategy.model.register_comm_hook(None, counting_hook)


class CountReduceScatters(Callback):
    """Under sfd_fsdp: which network's FSDP units reduce-scatter gradients between optimizer steps.

    Each unit (a block, or the network's root) gets a counting copy of FSDP2's default
    reduce-scatter; `updates` lists, per optimizer step, {network: [unit index per reduce-scatter]}.
    """

    def __init__(self) -> None:
        self.updates: list[dict[str, list[int]]] = []
        self.units: dict[str, int] = {}
        self._current: dict[str, list[int]] = {}

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultReduceScatter

        counter = self

        class Counting(DefaultReduceScatter):
            def __init__(self, network: str, unit: int) -> None:
                self.network, self.unit = network, unit

            def __call__(self, *args: Any, **kwargs: Any) -> Any:
                counter._current.setdefault(self.network, []).append(self.unit)
                return super().__call__(*args, **kwargs)

        for name in SHARDED_NETWORKS:
            network = getattr(pl_module, name, None)
            if network is None:
                continue
            units = [m for m in network.modules() if isinstance(m, FSDPModule)]
            self.units[name] = len(units)
            for index, unit in enumerate(units):
                unit.set_custom_reduce_scatter(Counting(name, index))
        for optimizer in trainer.optimizers:
            optimizer.register_step_post_hook(self._step)

    def _step(self, *args: Any) -> None:
        self.updates.append(self._current)
        self._current = {}


def build_strategy(name: str) -> Any:
    if name == "single":
        return "auto"
    if name == "sfd_ddp":
        return CountingAlternatingDDP(process_group_backend="gloo")
    if name == "sfd_fsdp":
        return AlternatingFSDPStrategy(process_group_backend="gloo")
    if name == "ddp":
        return pl.strategies.DDPStrategy(process_group_backend="gloo")
    if name == "ddp_find_unused":
        return pl.strategies.DDPStrategy(process_group_backend="gloo", find_unused_parameters=True)
    raise ValueError(f"unknown strategy {name!r}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--devices", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2, help="per device")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--strategy",
        choices=["single", "sfd_ddp", "sfd_fsdp", "ddp", "ddp_find_unused"],
        default="single",
    )
    parser.add_argument("--precision", default="32-true")
    parser.add_argument(
        "--optimizer",
        choices=["sgd", "adam"],
        default="sgd",
        help="sgd (momentum 0.9, lr 1e-2) keeps float noise small: Adam turns the ~1e-12 "
        "gradients of parameters whose true gradient is zero (attention key biases) into "
        "lr-sized steps of random sign",
    )
    parser.add_argument(
        "--adapters", type=int, default=None, metavar="RANK", help="shared base, LoRA rank RANK"
    )
    parser.add_argument(
        "--adversarial-share", type=float, help="adversarial SFD with this share (default: off)"
    )
    parser.add_argument(
        "--adversarial-pool", type=int, default=1, help="adversarial SFD's pool (blocks of rows)"
    )
    options = parser.parse_args()
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)

    module = SFDModule(
        teacher=PretrainedVPTeacher(options.teacher),
        conditions=ClassConditions(forget=0, override=1),
        sigma_sampler=UniformTimestepSigma(38, 712),
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        batch_size=options.batch_size,
        fake_optimizer=OPTIMIZERS[options.optimizer],
        generator_optimizer=OPTIMIZERS[options.optimizer],
        ema_decay=0.9,
        seed=3,
        adapters=AdapterSettings(rank=options.adapters) if options.adapters else None,
        adversarial=None
        if options.adversarial_share is None
        else AdversarialSettings(
            steps=2,
            share=options.adversarial_share,
            refresh_every=3,
            pool=options.adversarial_pool,
        ),
    )
    timer = IterationTimer()
    callbacks: list[Callback] = [timer]
    if options.strategy == "ddp_find_unused":
        callbacks.append(CountDDPBytes())
    reduce_scatters = CountReduceScatters()
    if options.strategy == "sfd_fsdp":
        callbacks.append(reduce_scatters)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=options.devices,
        strategy=build_strategy(options.strategy),
        precision=options.precision,
        max_steps=options.steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    trainer.fit(module)
    # The full tensors (gathered on every rank under sfd_fsdp; the module's own otherwise).
    full_state = trainer.strategy.lightning_module_state_dict()
    optimizers = [trainer.strategy.optimizer_state(opt) for opt in trainer.optimizers]
    if trainer.is_global_zero:
        state = {key: value for key, value in full_state.items() if not key.startswith("teacher.")}
        seconds = timer.seconds[WARMUP_ITERATIONS - 1 :] or timer.seconds
        torch.save(
            {
                "state_dict": state,
                "optimizers": optimizers,
                "global_step": trainer.global_step,
                "world_size": trainer.world_size,
                "adversarial": None
                if module.adversarial is None
                else module.adversarial.state_dict(),
                "seconds_per_iteration": statistics.median(seconds),
                "allreduced_bytes_per_iteration": getattr(trainer.strategy, "allreduced_bytes", 0)
                / max(trainer.global_step, 1),
                "reduce_scatters": reduce_scatters.updates,
                "fsdp_units": reduce_scatters.units,
            },
            options.output,
        )


if __name__ == "__main__":
    main()
