"""The report of `sfd compare`: metrics.json, report.md, forgetting curves, histogram, samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from sfd.apps.harness.curve import UA_THRESHOLD
from sfd.apps.harness.report_folder import (
    REPORT_COLUMNS,
    finish_ua_axes,
    model_table,
    printed_table,
    protocol_section,
    remain_table,
    save_figure,
    share_bars,
    show_grid,
    ua_ceiling_line,
    write_report_folder,
)
from sfd.eval.columns import column_titles, row_cells
from sfd.eval.evaluate import ModelEvaluation

# The printed summary's metric columns; the training columns after them are the comparison's own.
SUMMARY_COLUMNS = ["nfe", "ua", "remain_accuracy", "fid_remain"]


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
    return write_report_folder(
        output_dir,
        results.to_json(),
        {
            "forgetting_curves": partial(plot_curves, results),
            "forget_histogram": partial(plot_histogram, results),
            "samples": partial(plot_samples, results),
        },
        partial(markdown, results),
    )


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
        finish_ua_axes(axes, UA_THRESHOLD, label, "UA", "lower right")
    figure.suptitle(
        f"forgetting curves: class {results.forget} (UA {100 * UA_THRESHOLD:.0f} % dashed)",
        fontsize=10,
    )
    save_figure(figure, path)


def plot_histogram(results: CompareResults, path: Path) -> None:
    """Where forget-class samples went: share per predicted class, per model."""
    figure = Figure(figsize=(9, 3.8))
    axes = figure.add_subplot(1, 1, 1)
    histograms = {key: m.forget_histogram for key, m in all_models(results).items()}
    classes = share_bars(axes, histograms, results.num_classes)
    axes.set_xticks(classes, [str(c) for c in classes])
    axes.set_xlabel("classifier label of samples generated for the forget class")
    axes.set_ylabel("share")
    axes.legend(fontsize=7)
    save_figure(figure, path)


def plot_samples(results: CompareResults, path: Path) -> None:
    """One sample grid per model (rows = classes), side by side."""
    keys = list(results.grids)
    figure = Figure(figsize=(1.9 * len(keys), 4.2))
    for index, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), index + 1)
        show_grid(axes, results.grids[key], results.num_classes, key, 8)
    figure.suptitle(f"rows = classes 0..{results.num_classes - 1}; forget {results.forget}")
    save_figure(figure, path)


def all_models(results: CompareResults) -> dict[str, ModelEvaluation]:
    """The teacher's and every method's evaluation, by key."""
    return {"teacher": results.teacher, **{k: r.evaluation for k, r in results.methods.items()}}


def _reached(report: MethodReport) -> str:
    if not report.curve:
        return "not traced"
    if report.ua95.get("iteration") is None:
        return "never"
    return f"it. {report.ua95['iteration']} / {report.ua95['seconds']:.0f} s"


def _training_time(report: MethodReport) -> str:
    seconds = f"{report.train_seconds:.0f} s" + (" (cached)" if report.cached else "")
    if "stage1_seconds" in report.extra:
        seconds += f" + stage 1 {report.extra['stage1_seconds']:.0f} s"
    return seconds


def table_rows(results: CompareResults) -> list[str]:
    """The main table in markdown: one row for the teacher and one per method."""
    rows = {TEACHER_TITLE: [*row_cells(results.teacher, REPORT_COLUMNS), "", "", ""]}
    for report in results.methods.values():
        training = [str(report.iterations), _training_time(report), _reached(report)]
        rows[report.title] = [*row_cells(report.evaluation, REPORT_COLUMNS), *training]
    titles = column_titles(REPORT_COLUMNS) + ["iterations", "training time", "UA ≥ 95 % at"]
    return model_table(titles, rows)


TEACHER_TITLE = "teacher (DDIM)"


def markdown(results: CompareResults, files: dict[str, str]) -> str:
    """report.md: the table, per-class accuracy, where forget samples went, figures, protocol."""
    models = all_models(results)
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
        *remain_table(models, remain),
        "",
        f"## Where samples generated for class {results.forget} went (classifier labels)",
        "",
        *model_table(
            [str(c) for c in range(results.num_classes)],
            {key: [str(n) for n in m.forget_histogram] for key, m in models.items()},
        ),
        "",
        f"![forgetting curves]({files['forgetting_curves']})",
        "",
        f"![where forget samples went]({files['forget_histogram']})",
        "",
        f"![samples]({files['samples']})",
        "",
        *protocol_section(results.protocol),
    ]
    return "\n".join(lines)


def summary_table(metrics: dict[str, Any]) -> str:
    """A plain-text table of a compare metrics.json (printed at the end of `sfd compare`)."""
    teacher = ModelEvaluation.from_dict(metrics["teacher"])
    rows = {"teacher": [*row_cells(teacher, SUMMARY_COLUMNS), "", ""]}
    for key, method in metrics["methods"].items():
        ua95 = method["ua95"].get("seconds")
        rows[key] = [
            *row_cells(ModelEvaluation.from_dict(method), SUMMARY_COLUMNS),
            f"{method['train_seconds']:.0f}",
            "" if ua95 is None else f"{ua95:.0f}",
        ]
    table = printed_table([*column_titles(SUMMARY_COLUMNS), "train s", "UA95 s"], rows)
    return "\n".join([table, *ua_ceiling_line(metrics.get("protocol", {}))])
