"""The report of `sfd compare`: metrics.json, report.md, forgetting curves, histogram, samples."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from sfd.apps.compare.curve import UA_THRESHOLD
from sfd.eval.evaluate import ModelEvaluation
from sfd.images import tile


@dataclass
class MethodReport:
    """One method's row of the report.

    Attributes:
        key: the method's key.
        title: its display name.
        evaluation: the final metrics.
        iterations: training iterations.
        train_seconds: training wall time.
        curve: {iteration, seconds, ua, remain_accuracy} points.
        ua95: first point with UA >= 95 %: {"iteration", "seconds"} (None if never / not traced).
        cached: whether the network came from the cache.
        extra: method-specific facts.
    """

    key: str
    title: str
    evaluation: ModelEvaluation
    iterations: int
    train_seconds: float
    curve: list[dict[str, float]] = field(default_factory=list)
    ua95: dict[str, Any] = field(default_factory=dict)
    cached: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            **self.evaluation.to_dict(),
            "iterations": self.iterations,
            "train_seconds": self.train_seconds,
            "ua95": self.ua95,
            "cached": self.cached,
            "curve": self.curve,
            "extra": self.extra,
        }


@dataclass
class CompareResults:
    """Everything the comparison report shows."""

    num_classes: int
    forget: int
    override: int
    teacher: ModelEvaluation
    methods: dict[str, MethodReport]
    protocol: dict[str, Any]
    grids: dict[str, Tensor]

    def to_json(self) -> dict[str, Any]:
        """The content of metrics.json."""
        return {
            "forget": self.forget,
            "override": self.override,
            "num_classes": self.num_classes,
            "ua_threshold": UA_THRESHOLD,
            "teacher": self.teacher.to_dict(),
            "methods": {key: report.to_dict() for key, report in self.methods.items()},
            "protocol": self.protocol,
        }


def write_compare_report(results: CompareResults, output_dir: Path) -> dict[str, Path]:
    """Write metrics.json, report.md and the figures; returns {artefact: path}."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": output_dir / "metrics.json",
        "report": output_dir / "report.md",
        "forgetting_curves": output_dir / "forgetting_curves.png",
        "forget_histogram": output_dir / "forget_histogram.png",
        "samples": output_dir / "samples.png",
    }
    paths["metrics"].write_text(json.dumps(results.to_json(), indent=2, allow_nan=True) + "\n")
    plot_curves(results, paths["forgetting_curves"])
    plot_histogram(results, paths["forget_histogram"])
    plot_samples(results, paths["samples"])
    paths["report"].write_text(markdown(results, {k: p.name for k, p in paths.items()}))
    return paths


def plot_curves(results: CompareResults, path: Path) -> None:
    """UA against training seconds (left) and iterations (right), one line per traced method."""
    figure = Figure(figsize=(11, 4))
    by_time, by_step = figure.add_subplot(1, 2, 1), figure.add_subplot(1, 2, 2)
    for index, report in enumerate(results.methods.values()):
        if not report.curve:
            continue
        ua = [p["ua"] for p in report.curve]
        style = {"color": f"C{index}", "marker": ".", "label": report.key}
        by_time.plot([p["seconds"] for p in report.curve], ua, **style)
        by_step.plot([p["iteration"] for p in report.curve], ua, **style)
    for axes, label in ((by_time, "training seconds"), (by_step, "iteration")):
        axes.axhline(UA_THRESHOLD, color="gray", linewidth=0.8, linestyle="--")
        axes.set_xlabel(label)
        axes.set_ylabel("UA")
        axes.set_ylim(-0.02, 1.02)
        axes.legend(fontsize=7, loc="lower right")
    figure.suptitle(
        f"forgetting curves: class {results.forget} (UA {100 * UA_THRESHOLD:.0f} % dashed)",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_histogram(results: CompareResults, path: Path) -> None:
    """Where forget-class samples went: share per predicted class, per model."""
    models = {"teacher": results.teacher, **{k: r.evaluation for k, r in results.methods.items()}}
    figure = Figure(figsize=(9, 3.8))
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(models)
    classes = np.arange(results.num_classes)
    for index, (key, evaluation) in enumerate(models.items()):
        counts = np.asarray(evaluation.forget_histogram, dtype=float)
        share = counts / max(counts.sum(), 1.0)
        axes.bar(classes + (index - (len(models) - 1) / 2) * width, share, width, label=key)
    axes.set_xticks(classes, [str(c) for c in classes])
    axes.set_xlabel("classifier label of samples generated for the forget class")
    axes.set_ylabel("share")
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_samples(results: CompareResults, path: Path) -> None:
    """One sample grid per model (rows = classes), side by side."""
    keys = list(results.grids)
    figure = Figure(figsize=(1.9 * len(keys), 4.2))
    for index, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), index + 1)
        canvas = tile(results.grids[key], results.num_classes, gap=1)
        gray = canvas.shape[-1] == 1
        axes.imshow(canvas[..., 0] if gray else canvas, cmap="gray" if gray else None)
        axes.set_title(key, fontsize=8)
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle(f"rows = classes 0..{results.num_classes - 1}; forget {results.forget}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def _reached(report: MethodReport) -> str:
    if not report.curve:
        return "not traced"
    if report.ua95.get("iteration") is None:
        return "never"
    return f"it. {report.ua95['iteration']} / {report.ua95['seconds']:.0f} s"


def table_rows(results: CompareResults) -> list[str]:
    """The main table in markdown: one row for the teacher and one per method."""
    rows = [
        "| model | NFE | UA | forget → override | remain accuracy | remain FID | remain KID "
        "| images/s | iterations | training time | UA ≥ 95 % at |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    t = results.teacher
    rows.append(
        f"| {TEACHER_TITLE} | {t.nfe} | {_percent(t.ua)} | {_percent(t.forget_as_override)} "
        f"| {_percent(t.remain_accuracy)} | {_number(t.fid_remain)} | {_number(t.kid_remain, 4)} "
        f"| {_number(t.images_per_second, 1)} | | | |"
    )
    for report in results.methods.values():
        m = report.evaluation
        seconds = f"{report.train_seconds:.0f} s" + (" (cached)" if report.cached else "")
        if "stage1_seconds" in report.extra:
            seconds += f" + stage 1 {report.extra['stage1_seconds']:.0f} s"
        rows.append(
            f"| {report.title} | {m.nfe} | {_percent(m.ua)} | {_percent(m.forget_as_override)} "
            f"| {_percent(m.remain_accuracy)} | {_number(m.fid_remain)} "
            f"| {_number(m.kid_remain, 4)} | {_number(m.images_per_second, 1)} "
            f"| {report.iterations} | {seconds} | {_reached(report)} |"
        )
    return rows


TEACHER_TITLE = "teacher (DDIM)"


def markdown(results: CompareResults, files: dict[str, str]) -> str:
    """report.md: the table, per-class accuracy, where forget samples went, figures, protocol."""
    models = {"teacher": results.teacher, **{k: r.evaluation for k, r in results.methods.items()}}
    remain = sorted(results.teacher.remain_per_class)
    lines = [
        f"# Forgetting class {results.forget} (override {results.override}): methods side by side",
        "",
        *table_rows(results),
        "",
        "UA = 1 − (share of forget-class samples the classifier labels as the forget class). FID and "
        "KID compare generated remain-class samples with held-out real remain-class images on the "
        "evaluation classifier's penultimate features. Training time is the wall time of "
        "`Trainer.fit` without the forgetting-curve evaluations; two-stage SFD lists its stage 2, "
        "plus the (cached) stage 1 it starts from. Multi-step models are sampled with the "
        "teacher's DDIM.",
        "",
        "## Remain accuracy per class",
        "",
        "| model | " + " | ".join(str(c) for c in remain) + " |",
        "|---|" + "---|" * len(remain),
    ]
    for key, m in models.items():
        lines.append(
            f"| {key} | " + " | ".join(_percent(m.remain_per_class[c]) for c in remain) + " |"
        )
    lines += [
        "",
        f"## Where samples generated for class {results.forget} went (classifier labels)",
        "",
        "| model | " + " | ".join(str(c) for c in range(results.num_classes)) + " |",
        "|---|" + "---|" * results.num_classes,
    ]
    for key, m in models.items():
        lines.append(f"| {key} | " + " | ".join(str(n) for n in m.forget_histogram) + " |")
    lines += [
        "",
        f"![forgetting curves]({files['forgetting_curves']})",
        "",
        f"![where forget samples went]({files['forget_histogram']})",
        "",
        f"![samples]({files['samples']})",
        "",
        "## Protocol",
        "",
        "```json",
        json.dumps(results.protocol, indent=2, default=str),
        "```",
        "",
    ]
    return "\n".join(lines)


def summary_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of a compare metrics.json (printed at the end of `sfd compare`)."""
    head = f"{'model':16s} {'NFE':>4s} {'UA %':>6s} {'remain %':>9s} {'FID':>7s} {'train s':>8s} {'UA95 s':>7s}"
    rows = [head]
    entries = [("teacher", metrics["teacher"], None)] + [
        (key, m, m) for key, m in metrics["methods"].items()
    ]
    for key, m, method in entries:
        ua95 = "" if method is None else method["ua95"].get("seconds")
        rows.append(
            f"{key:16s} {m['nfe']:>4d} {100 * m['ua']:>6.1f} {100 * m['remain_accuracy']:>9.1f} "
            f"{m['fid_remain']:>7.2f} "
            f"{'' if method is None else format(method['train_seconds'], '.0f'):>8s} "
            f"{'' if ua95 in ('', None) else format(ua95, '.0f'):>7s}"
        )
    return "\n".join(rows)
