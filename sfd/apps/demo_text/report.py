"""The text demo's report folder: metrics.json, report.md, per-prompt sample grids, the curve.

The forgetting-curve and forget-histogram figures are the class demo's (`sfd.apps.demo.report`),
drawn from the same fields.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from sfd.apps.demo.report import plot_forget_histogram, plot_forgetting_curve
from sfd.eval.concepts import ConceptEvaluation
from sfd.eval.forgetting_curve import first_iteration_reaching
from sfd.images import tile

MODEL_KEYS = ("teacher", "distilled_without_forgetting", "sfd")
MODEL_TITLES = {
    "teacher": "teacher (DDIM)",
    "distilled_without_forgetting": "one-step, distilled without forgetting",
    "sfd": "one-step SFD (forgetting)",
}
UA_CURVE_THRESHOLD = 0.95


@dataclass
class TextDemoResults:
    """Everything the text report shows (field names shared with the class demo's figures)."""

    num_classes: int
    forget: int
    override: int
    class_names: list[str]
    models: dict[str, ConceptEvaluation]
    attacks: dict[str, dict[str, Any]]
    forgetting_curve: list[dict[str, float]]
    baseline_curve: list[dict[str, float]]
    iterations: int
    protocol: dict[str, Any]
    grids: dict[str, Tensor]
    grid_rows: list[tuple[str, str]]

    def targets(self) -> dict[str, Any]:
        """The benchmark's targets (issue 11) against the measured numbers."""
        teacher, sfd = self.models["teacher"], self.models["sfd"]
        paraphrase = sfd.forget_paraphrases.ua if sfd.forget_paraphrases else float("nan")
        attack_sfd = self.attacks["sfd"]["success_rate"]
        attack_base = self.attacks["distilled_without_forgetting"]["success_rate"]
        checks = {
            "ua_train_at_least_95": (sfd.ua, sfd.ua >= 0.95),
            "ua_paraphrases_at_least_90": (paraphrase, paraphrase >= 0.90),
            "remain_accuracy_within_3_points": (
                sfd.remain_accuracy - teacher.remain_accuracy,
                teacher.remain_accuracy - sfd.remain_accuracy <= 0.03,
            ),
            "neighbour_accuracy_within_3_points": (
                (sfd.neighbour_accuracy or 0.0) - (teacher.neighbour_accuracy or 0.0),
                (teacher.neighbour_accuracy or 0.0) - (sfd.neighbour_accuracy or 0.0) <= 0.03,
            ),
            "fid_at_most_1.5x_teacher": (
                sfd.fid_remain / teacher.fid_remain,
                sfd.fid_remain <= 1.5 * teacher.fid_remain,
            ),
            "attack_at_most_half_of_no_forgetting": (
                attack_sfd / attack_base if attack_base > 0 else float("nan"),
                attack_sfd <= 0.5 * attack_base,
            ),
        }
        return {name: {"value": value, "met": bool(met)} for name, (value, met) in checks.items()}

    def to_json(self) -> dict[str, Any]:
        """The content of metrics.json."""
        first = first_iteration_reaching(self.forgetting_curve, UA_CURVE_THRESHOLD)
        return {
            **{key: self.models[key].to_dict() for key in self.models},
            "attack": self.attacks,
            "forget": self.forget,
            "override": self.override,
            "class_names": self.class_names,
            "num_classes": self.num_classes,
            "iterations": self.iterations,
            "forgetting_curve": self.forgetting_curve,
            "forgetting_curve_without_forgetting": self.baseline_curve,
            "forgetting_curve_summary": {
                "ua_threshold": UA_CURVE_THRESHOLD,
                "first_iteration": first,
            },
            "targets": self.targets(),
            "protocol": self.protocol,
        }


def write_text_report(results: TextDemoResults, output_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, report.md and the figures into `output_dir`; returns their paths."""
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
    plot_prompt_grids(results, paths["samples"])
    plot_forgetting_curve(results, paths["forgetting_curve"])
    plot_forget_histogram(results, paths["forget_histogram"])
    paths["report"].write_text(markdown_report(results, {k: p.name for k, p in paths.items()}))
    return paths


def plot_prompt_grids(results: TextDemoResults, path: Path) -> None:
    """Teacher, no-forgetting and SFD samples side by side, one row per prompt."""
    rows = len(results.grid_rows)
    figure = Figure(figsize=(3 * 3.4 + 3.2, 0.42 * rows + 1.0))
    for index, key in enumerate(MODEL_KEYS):
        axes = figure.add_subplot(1, 3, index + 1)
        canvas = tile(results.grids[key], rows, gap=1)
        gray = canvas.shape[-1] == 1
        axes.imshow(canvas[..., 0] if gray else canvas, cmap="gray" if gray else None)
        axes.set_title(MODEL_TITLES[key], fontsize=9)
        height = canvas.shape[0] / rows
        axes.set_yticks([height * (r + 0.5) for r in range(rows)])
        axes.set_yticklabels(
            [f"{title}: {prompt}" if index == 0 else "" for title, prompt in results.grid_rows],
            fontsize=6,
        )
        axes.set_xticks([])
    figure.suptitle("one row per prompt (same noise in every panel)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def _percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


def _number(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def markdown_report(results: TextDemoResults, files: dict[str, str]) -> str:
    """report.md: the table, attack, per-class accuracy, targets, figures and protocol."""
    names = results.class_names
    lines = [
        f"# SFD concept forgetting: {names[results.forget]!r} -> {names[results.override]!r}",
        "",
        "| model | NFE | UA (training prompts) | UA (paraphrases) | forget -> override "
        "| remain accuracy | neighbour accuracy | remain FID | remain KID | attack success |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in MODEL_KEYS:
        m, attack = results.models[key], results.attacks[key]
        paraphrase = m.forget_paraphrases.ua if m.forget_paraphrases else None
        lines.append(
            f"| {MODEL_TITLES[key]} | {m.nfe} | {_percent(m.ua)} | {_percent(paraphrase)} "
            f"| {_percent(m.forget_train.as_override)} | {_percent(m.remain_accuracy)} "
            f"| {_percent(m.neighbour_accuracy)} | {_number(m.fid_remain)} "
            f"| {_number(m.kid_remain, 4)} | {_percent(attack['success_rate'])} |"
        )
    neighbours = results.protocol.get("neighbours", [])
    budget = results.attacks["sfd"]["budget"]
    lines += [
        "",
        "UA = 1 − share of forget-prompt samples the classifier labels as the forgotten class. "
        f"Neighbour concepts: {', '.join(names[c] for c in neighbours)}. FID / KID: remain-class "
        "samples against held-out real remain-class images on the classifier's features. Attack: "
        f"{budget['num_tokens']} learned tokens appended to a forget prompt, {budget['steps']} Adam "
        f"steps (lr {budget['lr']}, batch {budget['batch_size']}), success = share of "
        f"{budget['eval_samples']} held-out-noise samples labelled as the forgotten class.",
        "",
        "## Targets",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    for name, entry in results.targets().items():
        lines.append(
            f"| {name} | {_number(entry['value'], 3)} | {'yes' if entry['met'] else 'no'} |"
        )
    classes = sorted(results.models["teacher"].remain_per_class)
    lines += [
        "",
        "## Remain accuracy per class",
        "",
        "| model | " + " | ".join(names[c] for c in classes) + " |",
        "|---|" + "---|" * len(classes),
    ]
    for key in MODEL_KEYS:
        per_class = results.models[key].remain_per_class
        lines.append(f"| {key} | " + " | ".join(_percent(per_class[c]) for c in classes) + " |")
    lines += [
        "",
        "## Forgetting curve",
        "",
        f"![forgetting curve]({files['forgetting_curve']})",
        "",
        "## Where forget-prompt samples went",
        "",
        f"![histogram]({files['forget_histogram']})",
        "",
        "## Samples (one row per prompt)",
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


def summary_table(metrics: dict) -> str:
    """A plain-text table of the models in a text demo's metrics.json."""
    rows = [
        f"{'model':30s} {'NFE':>4s} {'UA %':>6s} {'UA para %':>9s} {'remain %':>8s} "
        f"{'neigh %':>7s} {'FID':>7s} {'attack %':>8s}"
    ]
    for key in MODEL_KEYS:
        m = metrics[key]
        para = m["forget_paraphrases"]["ua"] if m["forget_paraphrases"] else float("nan")
        neighbour = m["neighbour_accuracy"]
        rows.append(
            f"{key:30s} {m['nfe']:>4d} {100 * m['forget_train']['ua']:>6.1f} {100 * para:>9.1f} "
            f"{100 * m['remain_accuracy']:>8.1f} "
            f"{100 * (neighbour if neighbour is not None else float('nan')):>7.1f} "
            f"{m['fid_remain']:>7.2f} {100 * metrics['attack'][key]['success_rate']:>8.1f}"
        )
    return "\n".join(rows)
