"""A forgetting curve for any forgetting method: UA and remain accuracy against iterations and seconds.

`TimedForgettingCurve` samples what the module would ship now (`sfd.baselines.unlearned`: a
one-step generator directly, a fine-tuned denoiser with DDIM) every N iterations, labels the
samples with the evaluation classifier, and records the *training* seconds spent so far (for an
SFD module with an EMA, optionally the raw generator beside the shipped EMA): the clock
starts when `Trainer.fit` starts (so preparation inside the fit, such as SalUn's teacher samples and
saliency mask, counts) and the time spent evaluating the curve itself is left out.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from sfd.baselines.method import Unlearned, unlearned
from sfd.core.module import SFDModule
from sfd.errors import SFDConfigError
from sfd.eval.evaluate import ImageSampler, classify, ddim_sampler, generate, one_step_sampler
from sfd.eval.forgetting_curve import EveryNIterations, ForgettingCurve
from sfd.eval.metrics import feature_distances, per_class_accuracy, unlearning_accuracy
from sfd.images import to_uint8
from sfd.training.completion import UntilForgotten

UA_THRESHOLD = 0.95  # "time and iterations to UA >= 95 %"


def sampler_for(result: Unlearned, ddim_steps: int) -> ImageSampler:
    """One-step generators are sampled directly; denoisers with the teacher's DDIM."""
    if result.one_step:
        return one_step_sampler(result.network)
    return ddim_sampler(result.network, ddim_steps)


@dataclass
class TimedPoint:
    """One evaluation of the curve."""

    iteration: int
    seconds: float
    ua: float
    remain_accuracy: float
    ua_raw: float | None = None  # the raw generator's, when the curve traces it
    remain_accuracy_raw: float | None = None
    fid_remain: float | None = None  # remain FID of one-step models, when the curve has a reference
    fid_remain_raw: float | None = None


class TimedForgettingCurve(EveryNIterations):
    """UA and remain accuracy every `every_n` iterations (and at 0 and the end), with training time.

    Args:
        classifier: the evaluation classifier (x in [-1, 1] -> logits).
        num_classes: number of classes K.
        forget: the forget classes.
        every_n: evaluate every this many iterations.
        num_per_class: samples of each forget class per evaluation (fixed noise).
        remain_per_class: samples of each remain class per evaluation (default: num_per_class);
            fewer keep the curve of multi-step models affordable, UA needs the forget samples.
        ddim_steps: DDIM steps for multi-step models.
        seed: seed of the fixed evaluation noise.
        raw: also evaluate the raw generator of an SFD module that ships its EMA (same noise,
            same clock): `ua_raw` and `remain_accuracy_raw` of every point.
        real_remain: real remain-class images (uint8, (N, C, H, W)): one-step models also get a
            remain FID at every point (`fid_remain`, `fid_remain_raw`) of `fid_per_class` samples
            per remain class on fixed noise, on the classifier's features. Few samples bias it
            upward against the final evaluation's; it is for following the curve, not for tables.
        fid_per_class: samples per remain class of that FID.
    """

    def __init__(
        self,
        classifier: nn.Module,
        num_classes: int,
        forget: list[int],
        every_n: int,
        num_per_class: int = 32,
        ddim_steps: int = 50,
        seed: int = 0,
        remain_per_class: int | None = None,
        raw: bool = False,
        real_remain: torch.Tensor | None = None,
        fid_per_class: int = 32,
    ) -> None:
        remain_per_class = num_per_class if remain_per_class is None else remain_per_class
        if every_n < 1 or num_per_class < 1 or remain_per_class < 1 or fid_per_class < 2:
            raise SFDConfigError(
                f"curve interval {every_n} and samples per class {num_per_class} / "
                f"{remain_per_class} must be >= 1, FID samples per class {fid_per_class} >= 2"
            )
        self.classifier = classifier.eval()
        self.forget = list(forget)
        self.remain = [c for c in range(num_classes) if c not in self.forget]
        counts = torch.tensor(
            [num_per_class if c in self.forget else remain_per_class for c in range(num_classes)]
        )
        self.labels = torch.arange(num_classes).repeat_interleave(counts)
        self.every_n = every_n
        self.ddim_steps = ddim_steps
        self.seed = seed
        self.raw = raw
        self.real_remain = real_remain
        self.fid_labels = torch.tensor(self.remain).repeat_interleave(fid_per_class)
        self.points: list[TimedPoint] = []
        self._start = 0.0
        self._evaluating = 0.0  # seconds spent on the curve itself, left out of training time

    @property
    def evaluation_seconds(self) -> float:
        """Seconds the curve's own evaluations took (to subtract from the fit's wall time)."""
        return self._evaluating

    def training_seconds(self) -> float:
        """Seconds since the fit started, without the curve's own evaluations."""
        return time.perf_counter() - self._start - self._evaluating

    def evaluate(self, module: Any) -> tuple[float, float]:
        """(UA, mean per-class remain accuracy) of what `module` would ship now."""
        return self.evaluate_network(unlearned(module), module.device)

    @torch.no_grad()
    def remain_fid(self, result: Unlearned, device: Any) -> float | None:
        """Remain FID of a one-step network on fixed noise (None: no reference, or multi-step)."""
        if self.real_remain is None or not result.one_step:
            return None
        network = result.network
        was_training = network.training
        images = generate(sampler_for(result, self.ddim_steps), self.fid_labels, self.seed + 1,
                          device=device)  # fmt: skip
        network.train(was_training)
        return feature_distances(self.real_remain, to_uint8(images), self.classifier).fid

    @torch.no_grad()
    def evaluate_network(self, result: Unlearned, device: Any) -> tuple[float, float]:
        """(UA, mean per-class remain accuracy) of one network (fixed noise)."""
        network = result.network
        was_training = network.training
        images = generate(
            sampler_for(result, self.ddim_steps), self.labels, self.seed, device=device
        )
        network.train(was_training)
        predicted = classify(self.classifier.to(device), to_uint8(images)).cpu()
        is_forget = torch.isin(self.labels, torch.tensor(self.forget))
        per_class = per_class_accuracy(predicted, self.labels, self.remain)
        remain_accuracy = sum(per_class.values()) / len(per_class)
        return unlearning_accuracy(predicted[is_forget], self.forget), remain_accuracy

    def _record(self, trainer: pl.Trainer, module: Any, log: bool) -> None:
        step = int(module.global_step)
        if (self.points and self.points[-1].iteration == step) or not trainer.is_global_zero:
            return
        seconds = self.training_seconds()
        clock = time.perf_counter()
        shipped = unlearned(module)
        point = TimedPoint(step, seconds, *self.evaluate_network(shipped, module.device))
        point.fid_remain = self.remain_fid(shipped, module.device)
        if self.raw and raw_generator(module) is not None:
            raw = Unlearned(raw_generator(module))
            point.ua_raw, point.remain_accuracy_raw = self.evaluate_network(raw, module.device)
            point.fid_remain_raw = self.remain_fid(raw, module.device)
        self._evaluating += time.perf_counter() - clock
        self.points.append(point)
        if log:  # logging is not allowed in on_train_start
            module.log_dict({"curve/ua": point.ua, "curve/remain_accuracy": point.remain_accuracy})
            optional = {
                "curve/ua_raw": point.ua_raw,
                "curve/fid_remain": point.fid_remain,
                "curve/fid_remain_raw": point.fid_remain_raw,
            }
            module.log_dict({k: v for k, v in optional.items() if v is not None})

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()
        self._evaluating = 0.0

    def as_dicts(self) -> list[dict[str, float]]:
        """The curve as [{iteration, seconds, ua, remain_accuracy}, ...] (plus `ua_raw`,
        `remain_accuracy_raw` when the raw generator is traced, `fid_remain` (`_raw`) when
        measured)."""
        return [{k: v for k, v in asdict(point).items() if v is not None} for point in self.points]

    def raw_dicts(self) -> list[dict[str, float]]:
        """The raw generator's curve as [{iteration, seconds, ua, remain_accuracy}, ...] (plus
        `fid_remain` when measured; empty when it is not traced)."""
        points = [
            {
                "iteration": p.iteration,
                "seconds": p.seconds,
                "ua": p.ua_raw,
                "remain_accuracy": p.remain_accuracy_raw,
                "fid_remain": p.fid_remain_raw,
            }
            for p in self.points
            if p.ua_raw is not None
        ]
        return [{k: v for k, v in p.items() if v is not None} for p in points]


def raw_generator(module: Any) -> nn.Module | None:
    """The raw (not averaged) generator of an SFD module that ships its EMA, else None."""
    if isinstance(module, SFDModule) and module.ema is not None:
        return module.generator
    return None


def until_forgotten(
    curve: TimedForgettingCurve | ForgettingCurve,
    average_after: int = 0,
    override_floor: bool = False,
) -> UntilForgotten:
    """The completion rule at a forgetting curve's interval, with the curve's classifier UA beside it
    (`average_after`: the rule's "EMA after forgetting", the demos' `--average-after`: at least
    one curve interval; 0: off; `override_floor`: the threshold counts above the judged rate of the
    generator's override samples).

    Put it after the curve among the callbacks: at each probe the curve's point of the same
    iteration is then already there and nothing is evaluated twice.
    """

    def classifier_ua(module: Any) -> float | None:
        last = curve.points[-1] if curve.points else None
        return last.ua if last is not None and last.iteration == module.global_step else None

    return UntilForgotten(
        every_n=curve.every_n,
        classifier_ua=classifier_ua,
        average_after=max(average_after, curve.every_n) if average_after else None,
        override_floor=override_floor,
    )


def first_reaching(points: list[dict[str, float]], ua: float = UA_THRESHOLD) -> dict[str, Any]:
    """The first curve point with UA >= `ua`: {"iteration", "seconds"} (None each if never)."""
    for point in points:
        if point["ua"] >= ua:
            return {"iteration": int(point["iteration"]), "seconds": point["seconds"]}
    return {"iteration": None, "seconds": None}
