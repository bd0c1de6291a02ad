"""What the report folders of `sfd demo`, `sfd demo-text` and `sfd compare` share.

Each folder holds metrics.json, PNG figures (matplotlib, no display) and report.md, written by
`write_report_folder`; the rest are the pieces their figures and tables have in common.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from sfd.eval.columns import COLUMNS, format_value
from sfd.eval.revival import REVIVAL_RESOLUTION, revival_column, revived_at
from sfd.images import tile

# Report keys of the models, in table order, with their display names.
MODEL_TITLES = {
    "teacher": "teacher (DDIM)",
    "distilled_without_forgetting": "one-step, distilled without forgetting",
    "sfd": "one-step SFD (forgetting)",
}
UA_CURVE_THRESHOLD = 0.95


def teacher_title(sampler: str) -> str:
    """The teacher row's title naming the sampler it was evaluated under: the words of the
    sampler's name before its step count ("DDIM 25 steps (…)" -> "teacher (DDIM)", "flow Euler
    28 steps (…)" -> "teacher (flow Euler)"; `sfd.eval.text_models.ddim_text_model` names them)."""
    words = sampler.split()
    kind = " ".join(words[: next((i for i, w in enumerate(words) if w.isdigit()), len(words))])
    return f"teacher ({kind or sampler})"


ADVERSARIAL_TITLE = "one-step adversarial SFD (forgetting)"


def trained_adversarial(protocol: Mapping[str, Any]) -> bool:
    """Whether the run's SFD model is adversarial SFD (`--adversarial`: the SFD settings in the
    protocol hold `adversarial`)."""
    model = (protocol.get("sfd_settings") or {}).get("model") or {}
    return model.get("adversarial") is not None


def report_titles(protocol: Mapping[str, Any]) -> dict[str, str]:
    """`MODEL_TITLES`, the SFD row named adversarial SFD where the run trained it."""
    if not trained_adversarial(protocol):
        return dict(MODEL_TITLES)
    return {**MODEL_TITLES, "sfd": ADVERSARIAL_TITLE}


def model_titles(models: Mapping[str, Any], protocol: Mapping[str, Any]) -> dict[str, str]:
    """`report_titles` with the teacher's title naming its sampler (`teacher_title`), given the
    evaluations (with a `sampler` name) per model key."""
    titles = report_titles(protocol)
    if "teacher" not in models:
        return titles
    return {**titles, "teacher": teacher_title(models["teacher"].sampler)}


# The metric columns (names in `sfd.eval.columns.COLUMNS`) of the model tables in report.md of
# `sfd demo` and `sfd compare`, in order.
REPORT_COLUMNS = [
    "nfe", "ua", "forget_as_override", "remain_accuracy", "fid_remain", "kid_remain",
    "images_per_second",
]  # fmt: skip


def write_report_folder(
    output_dir: str | Path,
    metrics: dict[str, Any],
    figures: Mapping[str, Callable[[Path], None]],
    markdown: Callable[[dict[str, str]], str],
) -> dict[str, Path]:
    """Write metrics.json, the figures and report.md into `output_dir`.

    Args:
        output_dir: the report folder (created if missing; report files are replaced).
        metrics: the content of metrics.json.
        figures: {artefact name: function drawing it into a path}; the artefact `name` is the
            file `name.png`; they are drawn in this order.
        markdown: the content of report.md from {artefact name: file name}.

    Returns:
        {artefact name: path}: "metrics", "report", then the figures in order.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": output_dir / "metrics.json", "report": output_dir / "report.md"}
    paths.update({name: output_dir / f"{name}.png" for name in figures})
    paths["metrics"].write_text(json.dumps(metrics, indent=2, allow_nan=True) + "\n")
    for name, draw in figures.items():
        draw(paths[name])
    paths["report"].write_text(markdown({name: path.name for name, path in paths.items()}))
    return paths


def model_table(columns: Sequence[str], rows: Mapping[str, Sequence[str]]) -> list[str]:
    """A markdown table with a "model" column: `columns` after it, one row of cells per model."""
    lines = ["| model | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    lines += [f"| {key} | " + " | ".join(cells) + " |" for key, cells in rows.items()]
    return lines


def printed_table(columns: Sequence[str], rows: Mapping[str, Sequence[str]]) -> str:
    """A plain-text table for the terminal: a "model" column, then `columns` right-aligned, one
    row of cells per model."""
    table = [["model", *columns], *([key, *cells] for key, cells in rows.items())]
    widths = [max(len(row[index]) for row in table) for index in range(len(table[0]))]
    lines = [
        " ".join(
            [row[0].ljust(widths[0])]
            + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        )
        for row in table
    ]
    return "\n".join(line.rstrip() for line in lines)


def remain_table(
    models: Mapping[str, Any], classes: Sequence[int], columns: Sequence[str] | None = None
) -> list[str]:
    """The per-class remain accuracy table: a row per model (with `remain_per_class`), a column
    per class of `classes`, headed by `columns` (None: the class numbers); cells are written as
    the "remain_accuracy" column writes its own."""
    share = COLUMNS["remain_accuracy"]
    rows = {
        key: [format_value(m.remain_per_class[c], share.digits, share.percent) for c in classes]
        for key, m in models.items()
    }
    return model_table([str(c) for c in classes] if columns is None else columns, rows)


def ua_ceiling_line(protocol: Mapping[str, Any]) -> list[str]:
    """The UA ceiling beside UA (one line; none where the protocol has no ceiling, e.g. a record
    written before it was measured)."""
    ceiling = protocol.get("ua_ceiling")
    if ceiling is None:
        return []
    return [
        f"UA ceiling under this classifier: {format_value(ceiling, 1, percent=True)} (1 − the "
        "share of held-out real images of the override class that it labels as the forget class: "
        "the UA of a generator that draws the override exactly; not an upper bound)."
    ]


def protocol_section(protocol: dict[str, Any]) -> list[str]:
    """The closing "## Protocol" section of report.md: the protocol as a JSON block."""
    return ["## Protocol", "", "```json", json.dumps(protocol, indent=2, default=str), "```", ""]


def show_grid(
    axes: Axes,
    grid: Tensor,
    rows: int,
    title: str,
    title_size: float,
    row_labels: Sequence[str] | None = None,
    label_size: float | None = None,
) -> None:
    """One panel of a sample figure: `grid` tiled in `rows` rows, without x ticks.

    Args:
        axes: the panel.
        grid: uint8 samples, (rows·n, C, H, W), row by row.
        rows: number of rows.
        title: the panel's title, in `title_size` points.
        row_labels: one y tick label per row, at the row's centre (None: no y ticks).
        label_size: font size of the row labels (None: the default).
    """
    canvas = tile(grid, rows, gap=1)
    gray = canvas.shape[-1] == 1
    axes.imshow(canvas[..., 0] if gray else canvas, cmap="gray" if gray else None)
    axes.set_title(title, fontsize=title_size)
    if row_labels is None:
        axes.set_yticks([])
    else:
        height = canvas.shape[0] / rows
        axes.set_yticks([height * (r + 0.5) for r in range(rows)])
        size = {} if label_size is None else {"fontsize": label_size}
        axes.set_yticklabels(row_labels, **size)
    axes.set_xticks([])


def share_bars(axes: Axes, histograms: Mapping[str, Sequence[int]], num_classes: int) -> np.ndarray:
    """Grouped bars: per class, each model's share of the forget samples labelled as it.

    Args:
        axes: where to draw.
        histograms: {model key (the bar label): count of forget samples per classifier label}.
        num_classes: number of classes K.

    Returns:
        the class positions 0..K-1 on the x axis.
    """
    width = 0.8 / max(len(histograms), 1)
    classes = np.arange(num_classes)
    for index, (key, histogram) in enumerate(histograms.items()):
        counts = np.asarray(histogram, dtype=float)
        share = counts / max(counts.sum(), 1.0)
        axes.bar(classes + (index - (len(histograms) - 1) / 2) * width, share, width, label=key)
    return classes


def finish_ua_axes(axes: Axes, threshold: float, xlabel: str, ylabel: str, legend_loc: str) -> None:
    """The dashed UA threshold, axis labels, the [0, 1] range and the legend of a curve plot."""
    axes.axhline(threshold, color="gray", linewidth=0.8, linestyle="--")
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.set_ylim(-0.02, 1.02)
    axes.legend(fontsize=7, loc=legend_loc)


def save_figure(figure: Figure, path: Path) -> None:
    """Lay the figure out and write it as a PNG at 120 dpi."""
    figure.tight_layout()
    figure.savefig(path, dpi=120)


# The figures of the two-stage demos (`sfd demo`, `sfd demo-text`): `results` has
# forgetting_curve, baseline_curve, iterations, models, num_classes, forget and override.


def class_label(results: Any, label: int) -> str:
    if label == results.forget:
        return f"{label} (forget)"
    if label == results.override:
        return f"{label} (override)"
    return str(label)


def plot_forgetting_curve(results: Any, path: Path) -> None:
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
    finish_ua_axes(axes, UA_CURVE_THRESHOLD, "SFD iteration", "share", "center right")
    axes.axvline(0.2 * results.iterations, color="gray", linewidth=0.8, linestyle=":")
    axes.set_title("swift forgetting: UA and remain accuracy during training", fontsize=10)
    save_figure(figure, path)


def plot_forget_histogram(results: Any, path: Path) -> None:
    """Where forget-class samples went: the classifier's labels of them, per model."""
    figure = Figure(figsize=(7, 3.6))
    axes = figure.add_subplot(1, 1, 1)
    histograms = {key: m.forget_histogram for key, m in results.models.items()}
    classes = share_bars(axes, histograms, results.num_classes)
    axes.set_xticks(classes, [class_label(results, int(c)) for c in classes], fontsize=7)
    axes.set_ylabel("share of forget-class samples")
    axes.set_title(
        f"classifier labels of samples generated for class {results.forget}", fontsize=10
    )
    axes.legend(fontsize=7)
    save_figure(figure, path)


def revival_lines(
    revivals: Mapping[str, Mapping[str, Any]], titles: Mapping[str, str]
) -> list[str]:
    """The revival table of `sfd demo` and `sfd demo-text`: UA after each checkpoint and the
    first checkpoint with UA < 50 %, per model (rows titled by `titles`, keys where a model has
    no title), and the fine-tune's budget and loss."""
    first = next(iter(revivals.values()))
    header = " | ".join(f"UA after {s} steps" for s in first["steps"])
    lines = [
        f"| model | {header} | {revival_column(first['threshold'])} |",
        "|---|" + "---|" * (len(first["steps"]) + 1),
    ]
    for key, result in revivals.items():
        cells = " | ".join(format_value(u, 1, percent=True) for u in result["ua"])
        lines.append(f"| {titles.get(key, key)} | {cells} | {revived_at(result)} |")
    budget = first["budget"]
    lines += [
        "",
        f"Fine-tune of a copy on {budget['images']} held-out real images of the forgotten class "
        f"paired with {first['condition']}, {budget['steps']} Adam steps (lr {budget['lr']}, "
        f"batch {budget['batch_size']}, seed {budget['seed']}). Loss: {first['objective']} "
        f"(a teacher: multi-step loss and sampler). {REVIVAL_RESOLUTION}.",
    ]
    return lines


def revival_section(
    revivals: Mapping[str, Mapping[str, Any]], titles: Mapping[str, str]
) -> list[str]:
    """report.md's "Revival" section (`revival_lines` under its heading); none without a test."""
    return ["", "## Revival", "", *revival_lines(revivals, titles)] if revivals else []


def revival_summary(key: str, result: Mapping[str, Any]) -> str:
    """The line the demos say when a model's revival test is done (UA in % per checkpoint)."""
    return (
        f"revival of {key}: UA {[round(100 * u, 1) for u in result['ua']]} % after "
        f"{result['steps']} steps"
    )
