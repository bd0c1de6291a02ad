"""What limits the text demo's one-step quality: `sfd demo-text` variants of one set-up, stage 1
beside stage 2, page docs/results/text_quality.md.

    python experiments/text_quality.py --output-dir runs/text-quality --setup digits-untuned \
        --teacher-cache /tmp/completion-cache/sfd --threads 1 \
        "steps-400=--trainer.max_steps 400 --stage1-steps 400"

Each variant `NAME=OPTIONS` is one `sfd demo-text` run of the set-up (`text_benchmark.SETUPS`) with
those extra options (into `--output-dir/NAME`; teacher, classifier and stage 1 from the cache).
`--add NAME=FOLDER` takes a finished run instead: an `sfd demo-text` report folder written by
`experiments/pairs_benchmark.py` (its command from the folder's pair.json, its date, commit and
load from the pairs.json beside it). Rows accumulate in `--output-dir/text_quality.json` (a name
given again replaces its row), each under its own command, date and commit; the page shows every
row: the completion rule's stop and EMA restart, the shipped generator's UA, remain and neighbour
accuracy, and the remain FID of the teacher (its multi-step sampler), of stage 1 (distillation
without forgetting, where stage 2 starts) and of SFD.

`--stage1-from` / `--stage2-from FILE.jsonl` add `experiments/text_sfd_sweep.py` runs (`--stage
distill` / `--stage two_stage`) as sections of their own: every average of the same iterates at
every evaluation. `--page` names the results page (kept in the record), e.g. the stage-2 knobs
from the half-lr stage 1:

    python experiments/text_quality.py --output-dir runs/text-quality-stage2b \
        --page text_quality_stage2b --stage2-from runs/text_stage2b.jsonl

    python experiments/text_quality.py --page-from runs/text-quality/text_quality.json
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import text_benchmark
from results_page import (
    Refusal,
    add_page_arguments,
    command_line,
    git_commit,
    markdown_table,
    number,
    read_record,
    run_context,
    save_record,
    write_page,
)

PAGE = "text_quality"
PAGES = {  # --page: the results page a record is written to, and its title
    PAGE: "Text demo quality: what limits the one-step FID",
    "text_quality_stage2": "Text demo quality: stage 2's learning rates",
    "text_quality_stage2b": "Text demo quality: stage 2's knobs from the half-lr stage 1",
}


def parse_named(value: str, flag: str) -> tuple[str, str]:
    """`NAME=REST` -> (NAME, REST); `Refusal` naming the flag when there is no name."""
    name, sep, rest = value.partition("=")
    if not sep or not name or "/" in name:
        raise Refusal(f"{flag} {value!r}: expected NAME=..., NAME without '/'")
    return name, rest


def sfd_settings(folder: Path) -> dict[str, Any]:
    """What a row shows of a finished run's folder: stage-2 EMA, iterations and the three FIDs."""
    metrics = json.loads((folder / "metrics.json").read_text())
    protocol = metrics["protocol"]
    model = protocol["sfd_settings"]["model"]
    two_stage = protocol["two_stage"]
    return {
        "folder": str(folder),
        "forget": metrics["class_names"][metrics["forget"]],
        "override": metrics["class_names"][metrics["override"]],
        "ema_decay": model.get("ema_decay"),
        "ema_power": model.get("ema_power"),
        "generator_lr": model["generator_optimizer"]["init_args"]["lr"],
        "fake_lr": model["fake_optimizer"]["init_args"]["lr"],
        "teacher_guidance": model.get("teacher_guidance"),
        "max_steps": two_stage["stage2_max_steps"],
        "iterations": two_stage["stage2_iterations"],
        "stage1_iterations": two_stage["stage1_iterations"],
        "stage1_folder": two_stage["stage1_folder"],
        "stage1_cached": two_stage["stage1_reused_from_cache"],
        "stage1_seconds": two_stage["stage1_training_seconds"],
        "completion": two_stage.get("stage2_completion"),
        "stage2_seconds": two_stage["stage2_training_seconds"],
        "phase_seconds": protocol["phase_seconds"],
        "models": {
            key: {
                "ua": metrics[key]["forget_train"]["ua"],
                "ua_paraphrases": metrics[key]["forget_paraphrases"]["ua"],
                "remain_accuracy": metrics[key]["remain_accuracy"],
                "neighbour_accuracy": metrics[key]["neighbour_accuracy"],
                "fid_remain": metrics[key]["fid_remain"],
            }
            for key in ("teacher", "distilled_without_forgetting", "sfd")
        },
    }


def measure(name: str, options: str, setup: str, output: Path, common: list[str]) -> dict:
    """One variant: `sfd demo-text` on the set-up with `options`; its row."""
    load_start = os.getloadavg()
    commit = git_commit()  # the code the run starts with
    result = text_benchmark.run(setup, output, [*common, *shlex.split(options)], folder=name)
    row = {"name": name, "options": options, "setup": setup, "command": result["command"]}
    row["wall_seconds"] = result["wall_seconds"]
    row["run"] = run_context(result["command"], load_start, result["torch_threads"], commit)
    return row | sfd_settings(output / name)


def added(name: str, folder: Path) -> dict:
    """A finished pairs-benchmark run (`--add`): its row, under the pairs run's context."""
    pair = json.loads((folder / "pair.json").read_text())
    context = json.loads((folder.parent / "pairs.json").read_text())["run"]
    row = {"name": name, "options": None, "setup": pair.get("setup"), "command": pair["command"]}
    row["wall_seconds"] = pair["wall_seconds"]
    row["run"] = context | {"command": pair["command"]}
    return row | sfd_settings(folder)


def options_text(options: str | None) -> str:
    """A row's options: a pairs-benchmark run (None), the presets at the row's commit ("")."""
    if options is None:
        return "(pairs benchmark)"
    return f"`{options}`" if options else "(the presets at the row's commit)"


def stage1_time(row: dict[str, Any]) -> str:
    """Stage 1's training seconds where the row trained it; "cached" (or "–" for rows recorded
    before the column) where it did not."""
    if row.get("stage1_cached") is None:
        return "–"
    return "cached" if row["stage1_cached"] else f"{row['stage1_seconds']:.0f} s"


def ema_text(row: dict[str, Any]) -> str:
    power = row.get("ema_power")
    decay = row["ema_decay"]
    return f"{decay:g}" if power is None else f"power {power:g}, cap {decay:g}"


def stop_text(row: dict[str, Any]) -> str:
    done = row["completion"] or {}
    restart = done.get("averaged_from")
    after = (done.get("settings") or {}).get("average_after")
    text = f"{row['iterations']} / {row['max_steps']}, {done.get('stop_reason', 'rule off')}"
    if after is None:
        return text + "; no restart (off)"
    return text + (f"; restart at {restart}" if restart is not None else "; never restarted")


def percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def write_quality_page(record: dict[str, Any], json_file: str, page: str = PAGE) -> Path:
    """docs/results/text_quality.md from the record."""
    rows = record["rows"]
    table, runs = [], []
    for row in rows:
        models = row["models"]
        teacher, stage1, sfd = (
            models[k] for k in ("teacher", "distilled_without_forgetting", "sfd")
        )
        table.append(
            (
                row["name"],
                f"{row['forget']} → {row['override']}",
                options_text(row["options"]),
                ema_text(row),
                f"{row['generator_lr']:g} / {row['fake_lr']:g}",
                stop_text(row),
                f"{percent(sfd['ua'])} ({percent(sfd['ua_paraphrases'])})",
                f"{percent(sfd['remain_accuracy'])} ({percent(teacher['remain_accuracy'])})",
                f"{percent(sfd['neighbour_accuracy'])} ({percent(teacher['neighbour_accuracy'])})",
                number(teacher["fid_remain"]),
                f"{number(stage1['fid_remain'])} ({number(stage1['fid_remain'] / teacher['fid_remain'])}×)",
                f"{number(sfd['fid_remain'])} (**{number(sfd['fid_remain'] / teacher['fid_remain'])}×**)",
                stage1_time(row),
                f"{row['stage2_seconds']:.0f} s",
            )
        )
        context = row["run"]
        load = context["machine"]
        runs.append(
            f"- **{row['name']}** ({context['date']}, commit {context['commit']['hash']}"
            + (" + uncommitted changes" if context["commit"]["dirty"] else "")
            + f", load {load['load_average_start'][0]:.1f}–{load['load_average_end'][0]:.1f}):"
            f"\n\n  ```bash\n  {row['command']}\n  ```"
        )
    page = record.get("page", page)
    return write_page(
        page,
        PAGES[page],
        record["run"]["command"],
        json_file,
        record,
        {
            "The runs": (
                "Each row is one `sfd demo-text` run with the teacher and classifier from the "
                "cache. Rows with the same stage-1 settings share one stage-1 generator (its cache "
                "key is unchanged by stage-2 settings); a row whose stage-1 settings are new "
                "trains stage 1 once (its seconds in the table) and later rows reuse it. "
                "Commands, in the order of the table:\n\n" + "\n".join(runs)
            ),
            **(
                {"Stage-1 knobs": stage1_section(record["stage1_rows"])}
                if record.get("stage1_rows")
                else {}
            ),
            **(
                {"Stage-2 knobs": stage2_section(record["stage2_rows"])}
                if record.get("stage2_rows")
                else {}
            ),
            "Stage 1 and stage 2": (
                "EMA: the shipped generator's average in stage 2 (a constant decay, or a "
                "power-function EMA with its cap); lr: stage 2's learning rates of the generator "
                "and of the fake score. Stop: iterations used / the budget, the "
                "completion rule's reason, and where it restarted the EMA (\"EMA after "
                'forgetting", `--average-after`). UA on the training forget prompts (held-back '
                "paraphrases in brackets); remain and neighbour accuracy with the teacher's in "
                "brackets. FID: remain FID (900 samples) of the teacher's multi-step sampler, of "
                "stage 1 and of SFD, each over the teacher's in brackets. Stage 1: its training "
                'seconds where the row trained it ("cached" where it came from the cache); '
                "stage 2: its training seconds with the rule's probes and the forgetting curve; "
                "both on a shared 2-core machine.\n\n"
                + markdown_table(
                    (
                        "run",
                        "pair",
                        "options",
                        "stage-2 EMA",
                        "stage-2 lr (gen. / fake)",
                        "stop",
                        "UA (para.)",
                        "remain (teacher)",
                        "neighbour (teacher)",
                        "teacher FID",
                        "stage-1 FID",
                        "SFD FID",
                        "stage 1",
                        "stage 2",
                    ),
                    table,
                )
            ),
            "What limits it": limits_text(
                rows, record.get("stage1_rows", []), record.get("stage2_rows", [])
            ),
        },
    )


def sweep_rows(files: list[Path], stage: str, flag: str) -> list[dict[str, Any]]:
    """The runs of `experiments/text_sfd_sweep.py --stage STAGE` results files (JSON lines);
    `Refusal` naming `flag` for a run of another stage."""
    rows = [json.loads(line) for file in files for line in file.read_text().splitlines()]
    wrong = [r["name"] for r in rows if r.get("stage") != stage]
    if wrong:
        raise Refusal(f"{flag}: {', '.join(wrong)} are not --stage {stage} runs")
    return rows


def stage1_rows(files: list[Path]) -> list[dict[str, Any]]:
    """The runs of `experiments/text_sfd_sweep.py --stage distill` results files (JSON lines)."""
    return sweep_rows(files, "distill", "--stage1-from")


def trace_text(point: dict[str, Any]) -> str:
    """One evaluation of a stage-1 trace: the shipped EMA's FID ratio, extra EMAs in brackets."""
    extra = [f"{k[3:]}: {v['fid_ratio']:.2f}×" for k, v in point.items() if k.startswith("ema0")]
    return f"{point['ema']['fid_ratio']:.2f}×" + (f" ({', '.join(extra)})" if extra else "")


def sweep_commands(rows: list[dict[str, Any]]) -> str:
    """The sweep commands of `rows` as a list, each once (a command may run several knobs),
    under the date and commit of its first run, in the order run."""
    first: dict[str, tuple[str, str]] = {}
    for r in rows:
        when = (r["run"]["date"], r["run"]["commit"]["hash"])
        first[r["command"]] = min(first.get(r["command"], when), when)
    return "\n".join(
        f"- {date}, commit {commit}:\n\n  ```bash\n  {command}\n  ```"
        for date, commit, command in sorted((*when, c) for c, when in first.items())
    )


def stage1_section(rows: list[dict[str, Any]]) -> str:
    """Stage-1 knobs: one sweep run per row, its FID ratio through training."""
    iterations = sorted({p["iteration"] for r in rows for p in r["quality_trace"]})
    table = []
    for row in rows:
        trace = {p["iteration"]: p for p in row["quality_trace"]}
        settings = row["spec"].partition(":")[2]
        load = row["run"]["machine"]
        table.append(
            (
                row["name"],
                f"`{settings}`" if settings else "(preset)",
                *(trace_text(trace[i]) if i in trace else "–" for i in iterations),
                percent(row["remain_accuracy"]),
                f"{row['train_seconds']:.0f} s",
                f"{load['load_average_start'][0]:.1f}–{load['load_average_end'][0]:.1f}",
            )
        )
    return (
        "Stage 1 alone (distillation without forgetting, the same generator for every pair), "
        "one knob at a time over the digits text preset, from the cached teacher: each row is "
        "one `experiments/text_sfd_sweep.py --stage distill` run. FID: the remain FID (900 "
        "samples, the demo's protocol and seed) of the shipped EMA generator over the teacher's "
        "multi-step FID, at each evaluated iteration (the preset ships a constant-decay EMA "
        "0.995 started at the teacher's weights; a row's settings may change it), with further "
        "constant-decay EMAs of the same iterates in brackets (decay: ratio); remain accuracy "
        "at the end; training seconds without the evaluations, on a shared 2-core machine "
        "(load average in the last column). A run's command may name further runs that were "
        "stopped before they finished; only finished runs are rows.\n\n"
        + markdown_table(
            (
                "knob",
                "settings",
                *(f"FID ratio, it. {i}" for i in iterations),
                "remain acc.",
                "train",
                "load",
            ),
            table,
        )
        + "\n\nCommands:\n\n"
        + sweep_commands(rows)
    )


AVERAGES = {"ema": "shipped (power 7, cap 0.995; no restart)"}  # a two_stage trace's averages


def average_name(key: str) -> str:
    """A quality-trace key as the page names the average: the module's own or a constant decay."""
    return AVERAGES.get(key, f"constant {key[3:]}")


def point_text(point: dict[str, Any]) -> str:
    """One evaluation of one average: FID ratio and UA (held-back paraphrases in brackets)."""
    return (
        f"{point['fid_ratio']:.2f}× · UA {percent(point['ua'])} "
        f"({percent(point['ua_paraphrases'])})"
    )


def stage2_section(rows: list[dict[str, Any]]) -> str:
    """Stage-2 knobs: one two_stage sweep run per knob, each average of its iterates a row."""
    iterations = sorted({p["iteration"] for r in rows for p in r["quality_trace"]})
    table = []
    for row in rows:
        trace = {p["iteration"]: p for p in row["quality_trace"]}
        settings = row["spec"].partition(":")[2]
        load = row["run"]["machine"]
        for key in row["quality_trace"][-1]:
            if not key.startswith("ema"):
                continue
            last = row["quality_trace"][-1][key]
            table.append(
                (
                    row["name"],
                    f"`{settings}`" if settings else "(preset)",
                    average_name(key),
                    *(point_text(trace[i][key]) if i in trace else "–" for i in iterations),
                    percent(last["remain_accuracy"]),
                    f"{row['train_seconds']:.0f} s",
                    f"{load['load_average_start'][0]:.1f}–{load['load_average_end'][0]:.1f}",
                )
            )
    stage1 = sorted({r["stage1"] for r in rows})
    return (
        "Stage 2 alone from one stage-1 generator and fake score ("
        + ", ".join(f"`{s}`" for s in stage1)
        + "), one knob at a time over the digits text preset: each run is one "
        "`experiments/text_sfd_sweep.py --stage two_stage` run of the whole budget, without the "
        "completion rule (so without its restart of the average), evaluated every few "
        "iterations with the demo's protocol (900 remain samples, its seed; UA on the training "
        "forget prompts, the shipped paraphrases in brackets). Each run is several rows: the "
        "averages of the same iterates, the module's own and constant-decay EMAs started at "
        "stage 2's start. Cells: FID over the teacher's multi-step FID · UA; remain accuracy "
        "at the end; training seconds without the evaluations, on a shared 2-core machine "
        "(load average in the last column).\n\n"
        + markdown_table(
            (
                "knob",
                "settings",
                "average",
                *(f"it. {i}" for i in iterations),
                "remain acc.",
                "train",
                "load",
            ),
            table,
        )
        + "\n\nCommands:\n\n"
        + sweep_commands(rows)
    )


def stage2_limits(
    rows: list[dict[str, Any]], demos: list[dict[str, Any]], floor: float = 0.99
) -> str:
    """The reading of the stage-2 knobs table: the lowest FID of any average at any evaluation
    with UA at least `floor`, per knob, beside the FID of the stage 1 they start from where a
    demo row (`demos`) measured it."""
    start = {  # same stage 1 and same protocol (the teacher's FID on the same remain set)
        (d["stage1_folder"], round(d["models"]["teacher"]["fid_remain"], 3)): d["models"][
            "distilled_without_forgetting"
        ]["fid_remain"]
        / d["models"]["teacher"]["fid_remain"]
        for d in demos
        if d.get("stage1_folder")
    }
    best = []
    for row in rows:
        points = [
            (value["fid_ratio"], point["iteration"], key)
            for point in row["quality_trace"]
            for key, value in point.items()
            if key.startswith("ema") and value["ua"] >= floor
        ]
        if points:
            ratio, iteration, key = min(points)
            best.append(f"{row['name']} {ratio:.2f}× ({average_name(key)}, it. {iteration})")
        else:
            best.append(f"{row['name']} never")
    keys = [(r["stage1"], round(r["teacher_fid"], 3)) for r in rows]
    starts = sorted({start[k] for k in keys if k in start})
    lowest = min(
        (v["fid_ratio"] for r in rows for p in r["quality_trace"] for k, v in p.items()
         if k.startswith("ema")),
        default=None,
    )  # fmt: skip
    text = (
        f"**Stage-2 knobs.** The lowest FID ratio with UA ≥ {100 * floor:.0f} % of any average "
        "at any evaluation, per knob: " + "; ".join(best) + "."
    )
    if starts and lowest is not None:
        text += (
            " Stage 1 starts them at "
            + " / ".join(f"{s:.2f}×" for s in starts)
            + f" (the demo rows' stage-1 FID); the lowest of any average at any evaluation, "
            f"whatever its UA, is {lowest:.2f}×."
        )
    return text


def stage1_limits(knobs: list[dict[str, Any]], preset: list[float]) -> str:
    """The reading of the stage-1 knobs table: every knob's end beside the preset's stage 1."""

    def ends(row: dict[str, Any]) -> list[float]:
        last = row["quality_trace"][-1]
        return [v["fid_ratio"] for k, v in last.items() if k.startswith("ema")]

    every = [r for row in knobs for r in ends(row)]
    best = min(knobs, key=lambda row: min(ends(row)))
    if not preset:  # no preset row on this page: each knob's averages through training
        return (
            "**Stage-1 knobs.** FID ratio through training, per average: "
            + "; ".join(
                f"{row['name']}, {average_name(key) if key != 'ema' else 'shipped'}: "
                + " → ".join(
                    f"{p[key]['fid_ratio']:.2f}× (it. {p['iteration']})"
                    for p in row["quality_trace"]
                    if key in p
                )
                for row in knobs
                for key in row["quality_trace"][-1]
                if key.startswith("ema")
            )
            + "."
        )
    gap = min(preset) - min(ends(best))
    return (
        "**Stage-1 knobs.** The preset's stage 1 ends at "
        + " / ".join(f"{s:.2f}×" for s in preset)
        + " the teacher's FID (the demo rows above). Every stage-1 knob tried ends between "
        f"{min(every):.2f}× and {max(every):.2f}× with any of the averages traced ("
        + "; ".join(
            f"{row['name']} {row['quality_trace'][-1]['ema']['fid_ratio']:.2f}×"
            + (
                f" (best average {min(ends(row)):.2f}×)"
                if min(ends(row)) < row["quality_trace"][-1]["ema"]["fid_ratio"]
                else ""
            )
            for row in knobs
        )
        + f"; lowest: {best['name']} at {min(ends(best)):.2f}×, {abs(gap):.2f} "
        + ("below" if gap > 0 else "above")
        + " the preset's). A stage-1 number alone changes no preset: stage 2, UA, the "
        "accuracies and the time of whole demo runs of both pairs decide (the demo rows above "
        "whose stage 1 was trained with a knob's settings)."
    )


def limits_text(
    rows: list[dict[str, Any]],
    knobs: list[dict[str, Any]],
    stage2: list[dict[str, Any]] | None = None,
) -> str:
    """The reading of the tables, its numbers from the record."""

    def ratio(row: dict[str, Any], key: str = "sfd") -> float:
        models = row["models"]
        return models[key]["fid_remain"] / models["teacher"]["fid_remain"]

    preset = sorted(
        {round(ratio(r, "distilled_without_forgetting"), 2) for r in rows if r["options"] is None}
    )
    lines = []
    if rows:
        best = min(rows, key=ratio)
        better = [r for r in rows if ratio(r) < ratio(r, "distilled_without_forgetting")]
        lines.append(
            "**Stage 1.** Stage 1 → the shipped SFD generator, over the teacher's FID: "
            + ", ".join(
                f"{r['name']} {ratio(r, 'distilled_without_forgetting'):.2f}× → {ratio(r):.2f}×"
                for r in rows
            )
            + f". Stage 2 lowers the FID in {len(better)} of {len(rows)} rows. The best here is "
            f"**{best['name']}** at **{ratio(best):.2f}×** ({ema_text(best)}; {stop_text(best)})."
        )
    by_name = {r["name"]: r for r in rows}
    before, power = by_name.get("before"), by_name.get("power-ema")
    if before and power:
        lines.append(
            f"**EMA.** With the constant decay {before['ema_decay']:g} the shipped generator is a "
            "~50-iteration average whatever the rule does: EMA after forgetting restarts it as a "
            "mean, but the cap β ≤ decay turns that mean back into the same EMA ~50 iterations "
            "after the restart (so at this cap the restart alone changes little at the stop; not "
            "run separately). The "
            f"power-function EMA (γ {power['ema_power']:g}) capped at {power['ema_decay']:g} "
            f"follows the raw generator while the concept moves and, restarted at the rule's "
            f"first forgotten probe ({stop_text(power)}), ships the plain mean of every iterate "
            f"after it: {ratio(before):.2f}× → {ratio(power):.2f}×, UA "
            f"{percent(power['models']['sfd']['ua'])}. The average helps, but it cannot remove "
            "what the iterates themselves have not learned."
        )
    budget = by_name.get("budget-400")
    if budget and power:
        lines.append(
            f"**Iterations.** With a budget of {budget['max_steps']} the rule can finish: "
            f"{stop_text(budget)}, {ratio(budget):.2f}× against {ratio(power):.2f}× at the "
            f"{power['max_steps']}-iteration budget."
        )
    if not budget and power:
        lines.append(
            "**Iterations.** Not varied here: no row sets stage 2's budget itself (the rows "
            "recorded before the 600-iteration cap ran the 200-iteration budget whole, the "
            "restarted mean unable to hold its 150 iterations before it). Whether a longer budget closes more of stage 1's gap, and by how much per "
            "iteration, is the next measurement (`--trainer.max_steps 400 --stage1-steps 400`, "
            "which keeps stage 1's cache)."
        )
    if knobs:
        lines.append(stage1_limits(knobs, preset))
    if stage2:
        lines.append(stage2_limits(stage2, rows))
    guidance = (
        "**Not varied here.** The guidance scale (the demo evaluates the teacher at the guidance "
        "SFD trains with, so changing it moves the reference too; the presets' comments say why "
        "1.25)"
    )
    if stage2:
        lines.append(guidance + ".")
    else:
        lines.append(
            guidance + ", the learning rates and the fake score's learning rate (its update "
            "ratio: one fake update per generator update, faster or slower only through its "
            "rate) were swept for stage 1 on [one-step quality](one_step_quality.md), "
            "sections 1–2."
        )
    return "\n\n".join(lines)


def replaced(rows: list[dict[str, Any]], fresh: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`rows` then `fresh`, a name given again in `fresh` replacing its earlier row."""
    names = {r["name"] for r in fresh}
    return [r for r in rows if r["name"] not in names] + fresh


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/text-quality"))
    parser.add_argument("--setup", choices=list(text_benchmark.SETUPS), default="digits-untuned")
    parser.add_argument("--teacher-cache", help="the demo's --teacher-cache")
    parser.add_argument("--threads", type=int, help="the demo's --threads")
    parser.add_argument(
        "--add", nargs="+", default=[], metavar="NAME=FOLDER", help="finished pairs-benchmark runs"
    )
    parser.add_argument(
        "--stage1-from",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE.jsonl",
        help="experiments/text_sfd_sweep.py --stage distill results: the stage-1 knobs table",
    )
    parser.add_argument(
        "--stage2-from",
        nargs="+",
        type=Path,
        default=[],
        metavar="FILE.jsonl",
        help="experiments/text_sfd_sweep.py --stage two_stage results: the stage-2 knobs table",
    )
    parser.add_argument("variants", nargs="*", metavar="NAME=OPTIONS", help="runs to measure")
    parser.add_argument(
        "--page",
        choices=sorted(PAGES),
        default=PAGE,
        help="the results page (kept in the record; for --page-from, a record without one)",
    )
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if options.page_from:
        record = read_record(options.page_from)
        print(write_quality_page(record, options.page_from, options.page))
        return 0
    variants = [parse_named(v, "variant") for v in options.variants]
    additions = [parse_named(a, "--add") for a in options.add]
    if not variants and not additions and not options.stage1_from and not options.stage2_from:
        parser.error(
            "give at least one NAME=OPTIONS variant, --add NAME=FOLDER, --stage1-from FILE or "
            "--stage2-from FILE (or --page-from)"
        )
    for _, folder in additions:
        if not (Path(folder) / "pair.json").is_file():
            raise Refusal(f"--add {folder}: no pair.json (not a pairs-benchmark run folder)")
    json_file = options.output_dir / "text_quality.json"
    earlier = read_record(json_file) if json_file.is_file() else {}
    rows = earlier.get("rows", [])
    stage1 = replaced(earlier.get("stage1_rows", []), stage1_rows(options.stage1_from))
    stage2 = replaced(
        earlier.get("stage2_rows", []),
        sweep_rows(options.stage2_from, "two_stage", "--stage2-from"),
    )
    common: list[str] = []
    if options.teacher_cache:
        common += ["--teacher-cache", options.teacher_cache]
    if options.threads is not None:
        common += ["--threads", str(options.threads)]

    def keep(row: dict[str, Any]) -> None:
        names = [r["name"] for r in rows]
        if row["name"] in names:  # the same place in the table
            rows[names.index(row["name"])] = row
        else:
            rows.append(row)
        context = run_context(command_line(__file__, argv), load_start, options.threads)
        save(context)

    def save(context: dict[str, Any]) -> None:
        record = {"run": context, "rows": rows, "stage1_rows": stage1, "page": options.page}
        if stage2:
            record["stage2_rows"] = stage2
        save_record(record, json_file)  # after every run: a later failure keeps the earlier

    load_start = os.getloadavg()
    save(run_context(command_line(__file__, argv), load_start, options.threads))
    for name, folder in additions:
        keep(added(name, Path(folder)))
    for name, extra in variants:
        keep(measure(name, extra, options.setup, options.output_dir, common))
    record = read_record(json_file)
    if not options.no_page:
        print(write_quality_page(record, str(json_file)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
