"""`ForgettingCurve`: UA and remain accuracy of the (EMA) generator every N SFD iterations.

Usable from `sfd fit` YAML (give the classifier as the folder `sfd demo` / `save_classifier`
writes; forget classes and class count default to the run's own), see configs/wandb.yaml.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn

from sfd.errors import SFDConfigError
from sfd.eval.classifier import load_classifier
from sfd.eval.evaluate import class_noise, classify
from sfd.eval.metrics import per_class_accuracy, unlearning_accuracy
from sfd.images import to_uint8


class EveryNIterations(pl.Callback):
    """The schedule every forgetting curve shares: `_record` at the start of training (`log`
    False: Lightning allows no logging there), every `every_n` iterations and after the last one.

    Subclasses set `every_n` and implement `_record(trainer, module, log)`, which skips an
    iteration it already holds (a resumed fit starts where a point was taken).
    """

    every_n: int

    def _record(self, trainer: pl.Trainer, module: Any, log: bool) -> None:
        raise NotImplementedError

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._record(trainer, pl_module, log=False)

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
            self._record(trainer, pl_module, log=True)


@dataclass
class CurvePoint:
    """One evaluation of the forgetting curve."""

    iteration: int
    ua: float
    remain_accuracy: float


class ForgettingCurve(EveryNIterations):
    """Evaluates the generator to ship (EMA if kept) at iteration 0 and every `every_n` iterations.

    Cheap enough to run often: `num_per_class` one-step samples per class with fixed noise, labelled
    by the evaluation classifier. Points are kept in `points` and sent to every logger (wandb,
    CSV) as `curve/ua` and `curve/remain_accuracy` at step = iteration. A text-to-image generator
    takes one prompt condition per sample (`condition`, e.g. prompts of each class) and may need
    its latents decoded (`decode`).

    Args:
        classifier: the evaluation classifier (x in [-1, 1] -> logits), or the folder of a
            saved one (`sfd.eval.classifier.save_classifier`, e.g. demo-output/classifier).
        num_classes: number of classes K (default: the classifier's).
        forget: the forget classes (default: the run's, from its class conditions).
        every_n: evaluate every this many iterations (and after the last one).
        num_per_class: samples per class per evaluation.
        seed: seed of the (fixed) evaluation noise.
        condition: what the generator is conditioned on, one row per sample in class-major
            order (K·num_per_class rows, e.g. a `TextCondition`); default the class labels.
        decode: maps generator outputs to images in [-1, 1] (e.g. a VAE decoder); default none.
    """

    def __init__(
        self,
        classifier: nn.Module | str,
        num_classes: int | None = None,
        forget: list[int] | None = None,
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
        if isinstance(classifier, str):
            classifier = load_classifier(classifier)
        self.classifier = classifier.eval()
        if num_classes is None:
            num_classes = getattr(classifier, "num_classes", None)
            if num_classes is None:
                raise SFDConfigError("ForgettingCurve needs num_classes for this classifier")
        self.num_classes = num_classes
        self.forget = None if forget is None else list(forget)
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

    @property
    def remain(self) -> list[int]:
        return [c for c in range(self.num_classes) if c not in (self.forget or [])]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.forget is None:
            forget = getattr(getattr(pl_module, "conditions", None), "forget", None)
            if not isinstance(forget, list):
                raise SFDConfigError(
                    "ForgettingCurve needs class conditions (or an explicit forget list)"
                )
            self.forget = list(forget)
        bad = [c for c in self.forget if not 0 <= c < self.num_classes]
        if bad:
            raise SFDConfigError(
                f"ForgettingCurve forget class {bad[0]} is outside 0..{self.num_classes - 1}"
            )

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
        predicted = classify(self.classifier, to_uint8(images)).cpu()
        is_forget = torch.isin(self.labels, torch.tensor(self.forget))
        per_class = per_class_accuracy(predicted, self.labels, self.remain)
        remain_accuracy = sum(per_class.values()) / len(per_class)
        return CurvePoint(
            iteration=int(module.global_step),
            ua=unlearning_accuracy(predicted[is_forget], self.forget),
            remain_accuracy=remain_accuracy,
        )

    def _record(self, trainer: pl.Trainer, module: Any, log: bool) -> None:
        if self.points and self.points[-1].iteration == module.global_step:
            return
        if trainer.is_global_zero:
            point = self.evaluate(module)
            self.points.append(point)
            # Straight to the loggers: `module.log` would drop points between log intervals.
            metrics = {"curve/ua": point.ua, "curve/remain_accuracy": point.remain_accuracy}
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=point.iteration)

    def as_dicts(self) -> list[dict[str, float]]:
        """The curve as [{iteration, ua, remain_accuracy}, ...]."""
        return [asdict(point) for point in self.points]


def first_iteration_reaching(points: list[dict[str, float]], ua: float) -> int | None:
    """The first curve iteration whose UA is at least `ua` (None if never)."""
    for point in points:
        if point["ua"] >= ua:
            return int(point["iteration"])
    return None
