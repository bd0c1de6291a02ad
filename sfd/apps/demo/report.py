"""The demo's report folder: metrics.json, report.md, sample grids and plots (matplotlib, no display)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from torch import Tensor

from sfd.eval.evaluate import ModelEvaluation
from sfd.eval.forgetting_curve import first_iteration_reaching
from sfd.images import tile

# Report keys of the models, in table order, with their display names.
MODEL_TITLES = {
    "teacher": "teacher (DDIM)",
    "distilled_without_forgetting": "one-step, distilled without forgetting",
    "sfd": "one-step SFD (forgetting)",
}
UA_CURVE_THRESHOLD = 0.95


@dataclass
class DemoResults:
    """Everything the report shows.

    Attributes:
        num_classes: number of classes K.
        forget: the forget class.
        override: the override class.
        models: evaluation per model key of `MODEL_TITLES`.
        forgetting_curve: SFD curve, [{iteration, ua, remain_accuracy}, ...].
        baseline_curve: the same for the run without forgetting.
        iterations: SFD training iterations.
        throughput: extra timings, e.g. {"teacher_ddim_1000": {...}}.
        protocol: seeds, sample counts, samplers, settings, library versions.
        grids: uint8 sample grids per model key, (K·n, C, H, W), rows = classes.
    """

    num_classes: int
    forget: int
    override: int
    models: dict[str, ModelEvaluation]
    forgetting_curve: list[dict[str, float]]
    baseline_curve: list[dict[str, float]]
    iterations: int
    throughput: dict[str, dict[str, Any]]
    protocol: dict[str, Any]
    grids: dict[str, Tensor]

    def curve_summary(self) -> dict[str, Any]:
        """First iteration with UA >= 95 %, absolute and as a fraction of training."""
        first = first_iteration_reaching(self.forgetting_curve, UA_CURVE_THRESHOLD)
        return {
            "ua_threshold": UA_CURVE_THRESHOLD,
            "first_iteration": first,
            "first_fraction": None if first is None else first / self.iterations,
        }

    def to_json(self) -> dict[str, Any]:
        """The content of metrics.json."""
        data: dict[str, Any] = {key: self.models[key].to_dict() for key in self.models}
        data.update(
            forget=self.forget,
            override=self.override,
            num_classes=self.num_classes,
            iterations=self.iterations,
            forgetting_curve=self.forgetting_curve,
            forgetting_curve_without_forgetting=self.baseline_curve,
            forgetting_curve_summary=self.curve_summary(),
            throughput=self.throughput,
            protocol=self.protocol,
        )
        return data


def write_report(results: DemoResults, output_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, report.md and the PNG figures into `output_dir`.

    Args:
        results: what to report.
        output_dir: the report folder (created if missing; report files are replaced).

    Returns:
        {artefact name: path}.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "metrics": output_dir / "metrics.json",
        "report": output_dir / "report.md",
        "samples": output_dir / "samples.png",
        "forgetting_curve": output_dir / "forgetting_curve.png",
        "forget_histogram": output_dir / "forget_histogram.png",
    }
    paths["metrics"].write_text(json.dumps(results.to_json(), indent=2, allow_nan=True) + "\n")
    plot_sample_grids(results, paths["samples"])
    plot_forgetting_curve(results, paths["forgetting_curve"])
    plot_forget_histogram(results, paths["forget_histogram"])
    paths["report"].write_text(markdown_report(results, {k: p.name for k, p in paths.items()}))
    return paths


def plot_sample_grids(results: DemoResults, path: Path) -> None:
    """Teacher, no-forgetting and SFD sample grids side by side (rows = classes)."""
    keys = [key for key in MODEL_TITLES if key in results.grids]
    n, _, height, width = results.grids[keys[0]].shape
    aspect = (n // results.num_classes) * width / (results.num_classes * height)
    figure = Figure(figsize=(len(keys) * (1.2 + 3.6 * aspect), 4.6))
    for index, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), index + 1)
        canvas = tile(results.grids[key], results.num_classes, gap=1)
        gray = canvas.shape[-1] == 1
        axes.imshow(canvas[..., 0] if gray else canvas, cmap="gray" if gray else None)
        axes.set_title(MODEL_TITLES[key], fontsize=9)
        height = canvas.shape[0] / results.num_classes
        axes.set_yticks([height * (c + 0.5) for c in range(results.num_classes)])
        axes.set_yticklabels([_class_label(results, c) for c in range(results.num_classes)])
        axes.set_xticks([])
    figure.suptitle(
        f"rows = classes; forget {results.forget} -> override {results.override}", fontsize=10
    )
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _class_label(results: DemoResults, label: int) -> str:
    if label == results.forget:
        return f"{label} (forget)"
    if label == results.override:
        return f"{label} (override)"
    return str(label)


def plot_forgetting_curve(results: DemoResults, path: Path) -> None:
    """UA and remain accuracy of the EMA generator against the SFD iteration."""
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot(1, 1, 1)
    for curve, style, label in (
        (results.forgetting_curve, "-", "SFD"),
        (results.baseline_curve, ":", "without forgetting"),
    ):
        if not curve:
            continue
        iterations = [point["iteration"] for point in curve]
        axes.plot(iterations, [point["ua"] for point in curve], "C0" + style, label=f"UA, {label}")
        axes.plot(
            iterations,
            [point["remain_accuracy"] for point in curve],
            "C1" + style,
            label=f"remain accuracy, {label}",
        )
    axes.axhline(UA_CURVE_THRESHOLD, color="gray", linewidth=0.8, linestyle="--")
    axes.axvline(0.2 * results.iterations, color="gray", linewidth=0.8, linestyle=":")
    axes.set_xlabel("SFD iteration")
    axes.set_ylabel("share")
    axes.set_ylim(-0.02, 1.02)
    axes.set_title("swift forgetting: UA and remain accuracy during training", fontsize=10)
    axes.legend(fontsize=7, loc="center right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def plot_forget_histogram(results: DemoResults, path: Path) -> None:
    """Where forget-class samples went: the classifier's labels of them, per model."""
    keys = list(results.models)
    figure = Figure(figsize=(7, 3.6))
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(len(keys), 1)
    classes = np.arange(results.num_classes)
    for index, key in enumerate(keys):
        counts = np.asarray(results.models[key].forget_histogram, dtype=float)
        share = counts / max(counts.sum(), 1.0)
        axes.bar(classes + (index - (len(keys) - 1) / 2) * width, share, width, label=key)
    axes.set_xticks(classes, [_class_label(results, int(c)) for c in classes], fontsize=7)
    axes.set_ylabel("share of forget-class samples")
    axes.set_title(
        f"classifier labels of samples generated for class {results.forget}", fontsize=10
    )
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def _scaled(value: float | None, scale: float) -> float | None:
    return None if value is None else scale * value


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown_report(results: DemoResults, files: dict[str, str]) -> str:
    """report.md: the table, per-class accuracy, throughput, curve summary, figures and protocol."""
    lines = [
        f"# SFD class forgetting: class {results.forget} -> override {results.override}",
        "",
        "| model | NFE | UA | forget samples labelled as override | remain accuracy "
        "| remain FID | remain KID | images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, title in MODEL_TITLES.items():
        if key not in results.models:
            continue
        m = results.models[key]
        lines.append(
            f"| {title} | {m.nfe} | {_percent(m.ua)} | {_percent(m.forget_as_override)} "
            f"| {_percent(m.remain_accuracy)} | {_number(m.fid_remain)} "
            f"| {_number(m.kid_remain, 4)} ± {_number(m.kid_remain_std, 4)} "
            f"| {_number(m.images_per_second, 1)} |"
        )
    remain = sorted(next(iter(results.models.values())).remain_per_class)
    lines += [
        "",
        "UA = 1 − (share of forget-class samples the classifier labels as the forget class). FID and "
        "KID compare generated remain-class samples with held-out real remain-class images on the "
        "evaluation classifier's penultimate features (both sets as uint8 images, same preprocessing).",
        "",
        "## Remain accuracy per class",
        "",
        "| model | " + " | ".join(str(c) for c in remain) + " |",
        "|---|" + "---|" * len(remain),
    ]
    for key, m in results.models.items():
        cells = " | ".join(_percent(m.remain_per_class[c]) for c in remain)
        lines.append(f"| {key} | {cells} |")
    lines += ["", "## Sampling throughput (measured)", "", "| sampler | NFE | images/s | timed |"]
    lines.append("|---|---|---|---|")
    for name, t in results.throughput.items():
        lines.append(
            f"| {name} | {t['nfe']} | {_number(t['images_per_second'], 1)} "
            f"| {t['repeats']} call(s) of batch {t['batch_size']} in {t['seconds']:.2f} s |"
        )
    summary = results.curve_summary()
    first = summary["first_iteration"]
    reached = (
        f"first reached at iteration {first} of {results.iterations} "
        f"({100 * summary['first_fraction']:.0f} % of training)"
        if first is not None
        else "never reached"
    )
    lines += [
        "",
        "## Forgetting curve",
        "",
        f"UA >= {100 * UA_CURVE_THRESHOLD:.0f} %: {reached}.",
        "",
        f"![forgetting curve]({files['forgetting_curve']})",
        "",
        "## Where forget-class samples went",
        "",
        f"![histogram]({files['forget_histogram']})",
        "",
        "## Samples (rows = classes)",
        "",
        f"![samples]({files['samples']})",
        "",
        "## Protocol",
        "",
        "```json",
        json.dumps(results.protocol, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def summary_table(metrics: dict) -> str:
    """A plain-text table of the models in a metrics.json."""
    rows = [f"{'model':30s} {'NFE':>5s} {'UA %':>6s} {'remain %':>9s} {'FID':>8s} {'img/s':>9s}"]
    for key in ("teacher", "distilled_without_forgetting", "sfd"):
        if key not in metrics:
            continue
        m = metrics[key]
        rows.append(
            f"{key:30s} {m['nfe']:>5d} {_number(_scaled(m['ua'], 100), 1):>6s} "
            f"{_number(_scaled(m['remain_accuracy'], 100), 1):>9s} {_number(m['fid_remain']):>8s} "
            f"{_number(m['images_per_second'], 1):>9s}"
        )
    return "\n".join(rows)
