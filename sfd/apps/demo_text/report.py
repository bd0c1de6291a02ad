"""The text demo's report folder: metrics.json, report.md, per-prompt sample grids, the curve.

The forgetting-curve and forget-histogram figures are the class demo's (`sfd.apps.harness.report_folder`),
drawn from the same fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from torch import Tensor

from sfd.apps.harness.report_folder import (
    MODEL_TITLES,
    UA_CURVE_THRESHOLD,
    model_table,
    model_titles,
    plot_forget_histogram,
    plot_forgetting_curve,
    protocol_section,
    remain_table,
    revival_section,
    save_figure,
    show_grid,
    trained_adversarial,
    ua_ceiling_line,
    write_report_folder,
)
from sfd.apps.harness.targets import (
    DIFFERENCE,
    ONE_SIDED,
    adversarial_targets,
    text_targets,
)
from sfd.eval.columns import format_value
from sfd.eval.concepts import ConceptEvaluation
from sfd.eval.forgetting_curve import first_iteration_reaching

MODEL_KEYS = tuple(MODEL_TITLES)  # table order: teacher, without forgetting, SFD
ADV_ATTACKS = ("soft", "discrete")  # the attacks issue 22's targets judge adversarial SFD under
PLAIN_NOTE = (
    "Adversarial SFD's remain FID against plain SFD's is not measured here: this run trained no "
    "plain SFD (`experiments/attack_suite.py --adversarial-run` measures both)."
)


@dataclass
class TextDemoResults:
    """Everything the text report shows (field names shared with the class demo's figures)."""

    num_classes: int
    forget: int
    override: int
    class_names: list[str]
    models: dict[str, ConceptEvaluation]
    attacks: dict[str, dict[str, Any]]  # model key -> attack name -> result
    forgetting_curve: list[dict[str, float]]
    baseline_curve: list[dict[str, float]]
    iterations: int
    protocol: dict[str, Any]
    grids: dict[str, Tensor]
    grid_rows: list[tuple[str, str]]
    revivals: dict[str, dict[str, Any]] = field(default_factory=dict)  # model key -> result

    def targets(self) -> dict[str, Any]:
        """The benchmark's targets (`sfd.apps.harness.targets`: issue 24's, issue 20's FID ratio
        on a flow teacher; issue 22's for adversarial SFD under --adversarial, its FID against
        plain SFD's not measured: the run trains no plain SFD) against the measured numbers."""
        # The white-box soft attack (absent under --attack-objective transfer or without soft:
        # not measured, value and met None).
        numbers = {}
        for key in ("teacher", "distilled_without_forgetting", "sfd"):
            model, soft = self.models[key], self.attacks.get(key, {}).get("soft")
            numbers[key] = {
                "ua": model.ua,
                "ua_paraphrases": model.forget_paraphrases.ua if model.forget_paraphrases else None,
                "remain_accuracy": model.remain_accuracy,
                "neighbour_accuracy": model.neighbour_accuracy,
                "fid_remain": model.fid_remain,
                "attack_success": None if soft is None else soft["success_rate"],
            }
        if trained_adversarial(self.protocol):  # issue 22's targets; no plain SFD to compare
            attacks = {name: self.attacks.get("sfd", {}).get(name) for name in ADV_ATTACKS}
            return adversarial_targets(
                numbers["sfd"],
                numbers["teacher"],
                None,
                {n: None if a is None else a["success_rate"] for n, a in attacks.items()},
            )
        family = self.protocol.get("teacher_settings", {}).get("family", "unet")
        return text_targets(numbers, family)

    def to_json(self) -> dict[str, Any]:
        """The content of metrics.json."""
        first = first_iteration_reaching(self.forgetting_curve, UA_CURVE_THRESHOLD)
        return {
            **{key: self.models[key].to_dict() for key in self.models},
            "attack": self.attacks,
            "revival": self.revivals,
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


def target_rows(targets: dict[str, Any]) -> list[str]:
    """The targets table's rows: met "yes" / "no", or "not measured" (value "—") where the run
    did not measure it (e.g. the white-box soft attack under --attack-objective transfer)."""
    rows = []
    for name, entry in targets.items():
        if entry["met"] is None:
            rows.append(f"| {name} | — | not measured |")
        else:
            met = "yes" if entry["met"] else "no"
            rows.append(f"| {name} | {format_value(entry['value'], 3)} | {met} |")
    return rows


def write_text_report(results: TextDemoResults, output_dir: str | Path) -> dict[str, Path]:
    """Write metrics.json, report.md and the figures into `output_dir`; returns their paths."""
    return write_report_folder(
        output_dir,
        results.to_json(),
        {
            "samples": partial(plot_prompt_grids, results),
            "forgetting_curve": partial(plot_forgetting_curve, results),
            "forget_histogram": partial(plot_forget_histogram, results),
        },
        partial(markdown_report, results),
    )


def plot_prompt_grids(results: TextDemoResults, path: Path) -> None:
    """Teacher, no-forgetting and SFD samples side by side, one row per prompt."""
    rows, titles = len(results.grid_rows), model_titles(results.models, results.protocol)
    figure = Figure(figsize=(3 * 3.4 + 3.2, 0.42 * rows + 1.0))
    for index, key in enumerate(MODEL_KEYS):
        axes = figure.add_subplot(1, 3, index + 1)
        labels = [f"{title}: {prompt}" if index == 0 else "" for title, prompt in results.grid_rows]
        show_grid(axes, results.grids[key], rows, titles[key], 9, labels, 6)
    figure.suptitle("one row per prompt (same noise in every panel)", fontsize=10)
    save_figure(figure, path)


def _model_cells(results: TextDemoResults, key: str) -> list[str]:
    """One model's cells of the report.md table: shares as percentages, FID, KID."""
    m = results.models[key]
    paraphrase = m.forget_paraphrases.ua if m.forget_paraphrases else None
    shares = [m.ua, paraphrase, m.forget_train.as_override, m.remain_accuracy, m.neighbour_accuracy]
    return [
        str(m.nfe),
        *(format_value(share, 1, percent=True) for share in shares),
        format_value(m.fid_remain),
        format_value(m.kid_remain, 4),
        *(
            format_value(results.attacks[key][name]["success_rate"], 1, percent=True)
            if name in results.attacks[key]
            else "—"
            for name in attack_names(results)
        ),
    ]


def attack_names(results: TextDemoResults) -> list[str]:
    """The attacks run on any model, in the suite's order (prompt attacks, then paraphrases)."""
    return list(dict.fromkeys(name for suite in results.attacks.values() for name in suite))


def markdown_report(results: TextDemoResults, files: dict[str, str]) -> str:
    """report.md: the table, attack, per-class accuracy, targets, figures and protocol."""
    names, titles = results.class_names, model_titles(results.models, results.protocol)
    lines = [
        f"# SFD concept forgetting: {names[results.forget]!r} -> {names[results.override]!r}",
        "",
        *model_table(
            ["NFE", "UA (training prompts)", "UA (paraphrases)", "forget -> override",
             "remain accuracy", "neighbour accuracy", "remain FID", "remain KID",
             *(f"{name} attack success" for name in attack_names(results))],
            {titles[key]: _model_cells(results, key) for key in MODEL_KEYS},
        ),
    ]  # fmt: skip
    neighbours = results.protocol.get("neighbours", [])
    lines += [
        "",
        "UA = 1 − share of forget-prompt samples the classifier labels as the forgotten class. "
        f"Neighbour concepts: {', '.join(names[c] for c in neighbours)}. FID / KID: remain-class "
        "samples against held-out real remain-class images on the classifier's features.",
        *ua_ceiling_line(results.protocol),
        "",
        "## Attacks",
        "",
        *attack_lines(results.attacks["sfd"]),
        *teacher_attack_line(results.attacks.get("teacher", {})),
    ]
    lines += revival_section(results.revivals, titles)
    lines += [
        "",
        "## Targets",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    lines += [*target_rows(results.targets()), "", f"{ONE_SIDED} {DIFFERENCE}"]
    if trained_adversarial(results.protocol):
        lines += ["", PLAIN_NOTE]
    classes = sorted(results.models["teacher"].remain_per_class)
    lines += [
        "",
        "## Remain accuracy per class",
        "",
        *remain_table(
            {key: results.models[key] for key in MODEL_KEYS}, classes, [names[c] for c in classes]
        ),
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
        *protocol_section(results.protocol),
    ]
    return "\n".join(lines)


def attack_lines(suite: dict[str, dict[str, Any]]) -> list[str]:
    """One paragraph per attack: its budget, objective and ASR definition (from the SFD row),
    and, where the attacker classifier read the judged images, their agreement."""
    lines = []
    for name, result in suite.items():
        budget = ", ".join(f"{k} {v}" for k, v in result["budget"].items())
        line = (
            f"- **{name}** (budget: {budget}). Objective: {result['objective']}. "
            f"Success (ASR): {result['asr_definition']}."
        )
        if "agreement_definition" in result:
            line += (
                f" Agreement {format_value(result['agreement'], 1, percent=True)}: "
                f"{result['agreement_definition']}."
            )
        lines.append(line)
    return lines


def teacher_attack_line(suite: dict[str, dict[str, Any]]) -> list[str]:
    """The teacher's restarts per attack (`TextDemoSettings.teacher_attack_restarts` caps them)."""
    budgets = [
        f"{name} {result['budget']['restarts']} restart(s)"
        for name, result in suite.items()
        if "restarts" in result.get("budget", {})
    ]
    if not budgets:
        return []
    return [
        f"- The teacher (a reference: it has forgotten nothing, no target reads its row) is "
        f"attacked with {', '.join(budgets)}, under its attack sampler."
    ]


def summary_table(metrics: dict) -> str:
    """A plain-text table of the models in a text demo's metrics.json."""
    rows = [
        f"{'model':30s} {'NFE':>4s} {'UA %':>6s} {'UA para %':>9s} {'remain %':>8s} "
        f"{'neigh %':>7s} {'FID':>7s} {'soft %':>7s} {'discr. %':>8s}"
    ]
    for key in MODEL_KEYS:
        m = metrics[key]
        para = m["forget_paraphrases"]["ua"] if m["forget_paraphrases"] else float("nan")
        neighbour = m["neighbour_accuracy"]
        rows.append(
            f"{key:30s} {m['nfe']:>4d} {100 * m['forget_train']['ua']:>6.1f} {100 * para:>9.1f} "
            f"{100 * m['remain_accuracy']:>8.1f} "
            f"{100 * (neighbour if neighbour is not None else float('nan')):>7.1f} "
            f"{m['fid_remain']:>7.2f} {_share(metrics['attack'][key], 'soft'):>7.1f} "
            f"{_share(metrics['attack'][key], 'discrete'):>8.1f}"
        )
    return "\n".join([*rows, *ua_ceiling_line(metrics.get("protocol", {}))])


def _share(suite: dict[str, Any], name: str) -> float:
    """An attack's success in percent, NaN where it was not run."""
    return 100 * suite[name]["success_rate"] if name in suite else float("nan")
