"""`ForgettingCurve`: UA and remain accuracy of the (EMA) generator every N SFD iterations."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from sfd.errors import SFDConfigError
from sfd.eval.evaluate import class_noise, classify
from sfd.eval.metrics import unlearning_accuracy
from sfd.images import to_uint8


@dataclass
class CurvePoint:
    """One evaluation of the forgetting curve."""

    iteration: int
    ua: float
    remain_accuracy: float


class ForgettingCurve(pl.Callback):
    """Evaluates the generator to ship (EMA if kept) at iteration 0 and every `every_n` iterations.

    Cheap enough to run often: `num_per_class` one-step samples per class with fixed noise, labelled
    by the evaluation classifier. Points are kept in `points` and logged as `curve/ua` and
    `curve/remain_accuracy`. A text-to-image generator takes one prompt condition per sample
    (`condition`, e.g. prompts of each class) and may need its latents decoded (`decode`).

    Args:
        classifier: the evaluation classifier (x in [-1, 1] -> logits).
        num_classes: number of classes K.
        forget: the forget classes.
        every_n: evaluate every this many iterations (and after the last one).
        num_per_class: samples per class per evaluation.
        seed: seed of the (fixed) evaluation noise.
        condition: what the generator is conditioned on, one row per sample in class-major
            order (K·num_per_class rows, e.g. a `TextCondition`); default the class labels.
        decode: maps generator outputs to images in [-1, 1] (e.g. a VAE decoder); default none.
    """

    def __init__(
        self,
        classifier: nn.Module,
        num_classes: int,
        forget: list[int],
        every_n: int = 25,
        num_per_class: int = 32,
        seed: int = 0,
        condition: Any | None = None,
        decode: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if every_n < 1:
            raise SFDConfigError(f"every_n={every_n} must be at least 1")
        if num_per_class < 1:
            raise SFDConfigError(f"num_per_class={num_per_class} must be at least 1")
        self.classifier = classifier.eval()
        self.forget = list(forget)
        self.remain = [c for c in range(num_classes) if c not in self.forget]
        self.labels = torch.arange(num_classes).repeat_interleave(num_per_class)
        self.every_n = every_n
        self.seed = seed
        if condition is not None and len(condition) != len(self.labels):
            raise SFDConfigError(
                f"condition has {len(condition)} rows for {len(self.labels)} curve samples"
            )
        self.condition = condition
        self.decode = decode
        self.points: list[CurvePoint] = []

    @torch.no_grad()
    def evaluate(self, module: Any) -> CurvePoint:
        """UA and mean per-class remain accuracy of `module.export_generator` now."""
        generator = module.export_generator
        was_training = generator.training
        generator.eval()
        z = class_noise(len(self.labels), generator.sample_shape, self.seed).to(module.device)
        cond = self.labels if self.condition is None else self.condition
        images = generator(z, cond.to(module.device))
        if self.decode is not None:
            images = self.decode(images)
        generator.train(was_training)
        self.classifier.to(module.device)
        predicted = classify(self.classifier, to_uint8(images))
        is_forget = torch.isin(self.labels, torch.tensor(self.forget))
        correct = predicted == self.labels
        remain_accuracy = sum(
            correct[self.labels == c].float().mean().item() for c in self.remain
        ) / len(self.remain)
        return CurvePoint(
            iteration=int(module.global_step),
            ua=unlearning_accuracy(predicted[is_forget], self.forget),
            remain_accuracy=remain_accuracy,
        )

    def _record(self, trainer: pl.Trainer, module: Any) -> None:
        if self.points and self.points[-1].iteration == module.global_step:
            return
        if trainer.is_global_zero:
            point = self.evaluate(module)
            self.points.append(point)
            module.log_dict(
                {"curve/ua": point.ua, "curve/remain_accuracy": point.remain_accuracy},
                rank_zero_only=True,
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.points and self.points[-1].iteration == pl_module.global_step:
            return
        if trainer.is_global_zero:
            self.points.append(self.evaluate(pl_module))  # logging is not allowed here

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = pl_module.global_step
        if step % self.every_n == 0 or (trainer.max_steps > 0 and step >= trainer.max_steps):
            self._record(trainer, pl_module)

    def as_dicts(self) -> list[dict[str, float]]:
        """The curve as [{iteration, ua, remain_accuracy}, ...]."""
        return [asdict(point) for point in self.points]


def first_iteration_reaching(points: list[dict[str, float]], ua: float) -> int | None:
    """The first curve iteration whose UA is at least `ua` (None if never)."""
    for point in points:
        if point["ua"] >= ua:
            return int(point["iteration"])
    return None
