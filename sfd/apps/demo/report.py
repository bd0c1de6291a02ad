"""The demo's report folder: metrics.json, report.md, sample grids and plots (matplotlib, no display)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from sfd.apps.harness.report_folder import (
    MODEL_TITLES,
    REPORT_COLUMNS,
    UA_CURVE_THRESHOLD,
    class_label,
    model_table,
    plot_forget_histogram,
    plot_forgetting_curve,
    printed_table,
    protocol_section,
    remain_table,
    report_titles,
    revival_section,
    save_figure,
    show_grid,
    ua_ceiling_line,
    write_report_folder,
)
from sfd.eval.attack_outcome import AGREEMENT_DEFINITION
from sfd.eval.columns import column_titles, format_value, row_cells
from sfd.eval.evaluate import ModelEvaluation
from sfd.eval.forgetting_curve import first_iteration_reaching

# The printed summary's metric columns (names in `sfd.eval.columns.COLUMNS`), in order.
SUMMARY_COLUMNS = ["nfe", "ua", "remain_accuracy", "fid_remain", "images_per_second"]


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
        attacks: model key -> {"class_embedding": its result} (empty: not run).
        revivals: model key -> its revival test (`RevivalResult.to_dict()`; empty: not run).
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
    attacks: dict[str, dict[str, Any]] = field(default_factory=dict)
    revivals: dict[str, dict[str, Any]] = field(default_factory=dict)

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
            attack=self.attacks,
            revival=self.revivals,
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
    return write_report_folder(
        output_dir,
        results.to_json(),
        {
            "samples": partial(plot_sample_grids, results),
            "forgetting_curve": partial(plot_forgetting_curve, results),
            "forget_histogram": partial(plot_forget_histogram, results),
        },
        partial(markdown_report, results),
    )


def plot_sample_grids(results: DemoResults, path: Path) -> None:
    """Teacher, no-forgetting and SFD sample grids side by side (rows = classes)."""
    keys = [key for key in MODEL_TITLES if key in results.grids]
    n, _, height, width = results.grids[keys[0]].shape
    aspect = (n // results.num_classes) * width / (results.num_classes * height)
    figure = Figure(figsize=(len(keys) * (1.2 + 3.6 * aspect), 4.6))
    labels = [class_label(results, c) for c in range(results.num_classes)]
    titles = report_titles(results.protocol)
    for index, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), index + 1)
        show_grid(axes, results.grids[key], results.num_classes, titles[key], 9, labels)
    figure.suptitle(
        f"rows = classes; forget {results.forget} -> override {results.override}", fontsize=10
    )
    save_figure(figure, path)


def markdown_report(results: DemoResults, files: dict[str, str]) -> str:
    """report.md: the table, per-class accuracy, attack, revival, throughput, curve summary,
    figures and protocol."""
    titles = report_titles(results.protocol)
    lines = [
        f"# SFD class forgetting: class {results.forget} -> override {results.override}",
        "",
        *model_table(
            column_titles(REPORT_COLUMNS),
            {
                title: row_cells(results.models[key], REPORT_COLUMNS)
                for key, title in titles.items()
                if key in results.models
            },
        ),
    ]
    remain = sorted(next(iter(results.models.values())).remain_per_class)
    lines += [
        "",
        "UA = 1 − (share of forget-class samples the classifier labels as the forget class). FID and "
        "KID compare generated remain-class samples with held-out real remain-class images on the "
        "evaluation classifier's penultimate features (both sets as uint8 images, same preprocessing).",
        *ua_ceiling_line(results.protocol),
        "",
        "## Remain accuracy per class",
        "",
        *remain_table(results.models, remain),
    ]
    if results.attacks:
        lines += ["", "## Class-embedding attack", "", *attack_table(results.attacks, titles)]
    lines += revival_section(results.revivals, titles)
    lines += ["", "## Sampling throughput (measured)", "", "| sampler | NFE | images/s | timed |"]
    lines.append("|---|---|---|---|")
    for name, t in results.throughput.items():
        lines.append(
            f"| {name} | {t['nfe']} | {format_value(t['images_per_second'], 1)} "
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
        *protocol_section(results.protocol),
    ]
    return "\n".join(lines)


def attack_table(attacks: dict[str, dict[str, Any]], titles: dict[str, str]) -> list[str]:
    """The class-embedding attacks' success per model and objective (white-box, transfer), with
    the attacker classifier's agreement where it read the images; each attack's budget,
    objective and ASR definition."""
    lines = [
        "| model | attack | success | without attack | agreement | sampler |",
        "|---|---|---|---|---|---|",
    ]
    for key, entry in attacks.items():
        for name, result in entry.items():
            lines.append(
                f"| {titles.get(key, key)} | {name}"
                f" | {format_value(result['success_rate'], 1, percent=True)}"
                f" | {format_value(result['success_rate_without_attack'], 1, percent=True)}"
                f" | {format_value(result.get('agreement'), 1, percent=True)}"
                f" | {result['sampler']} |"
            )
    lines.append("")
    for name, first in next(iter(attacks.values())).items():
        budget = ", ".join(f"{k} {v}" for k, v in first["budget"].items())
        lines.append(f"- **{name}** (budget: {budget}). Objective: {first['objective']}. "
                     f"Success (ASR): {first['asr_definition']}.")  # fmt: skip
    if any(r.get("second_classifier_success_rate") is not None
           for entry in attacks.values() for r in entry.values()):  # fmt: skip
        lines.append(f"- Agreement: {AGREEMENT_DEFINITION}.")
    return lines


def summary_table(metrics: dict) -> str:
    """A plain-text table of the models in a metrics.json."""
    rows = {
        key: row_cells(ModelEvaluation.from_dict(metrics[key]), SUMMARY_COLUMNS)
        for key in MODEL_TITLES
        if key in metrics
    }
    table = printed_table(column_titles(SUMMARY_COLUMNS), rows)
    return "\n".join([table, *ua_ceiling_line(metrics.get("protocol", {}))])
