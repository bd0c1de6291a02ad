"""Adversarial SFD settings on the text demo: each variant one `sfd demo-text` run, one table.

    python experiments/adversarial_settings.py --output-root runs/advset --stage2-steps 60 \
        --teacher-cache /tmp/benchcache/sfd --forget seven --override one \
        --paraphrases sfd/apps/demo_text/prompts/digits_paraphrases.txt \
        "s60-postw1:posterior_weight=true,weight=1.0" "s60-default:"
    python experiments/adversarial_settings.py "s60-postw1:posterior_weight=true,weight=1.0" \
        --output-root runs/advset-38 --teacher-cache /tmp/benchcache/sfd --stage2-steps 60 \
        --forget three --override eight \
        --paraphrases sfd/apps/demo_text/prompts/digits_paraphrases_b.txt \
        --include runs/advset/adversarial_settings.json
    python experiments/adversarial_settings.py --page-from runs/advset/adversarial_settings.json
    python experiments/adversarial_settings.py --page adversarial_budget --output-root runs/advset \
        --teacher-cache /tmp/benchcache/sfd --stage2-steps 60 \
        "s60-postw1-steps8:posterior_weight=true,weight=1.0,steps=8"
    python experiments/adversarial_settings.py --page adversarial_refresh \
        --output-root runs/advrefresh --teacher-cache /tmp/benchcache/sfd --stage2-steps 60 \
        --include runs/advrefresh/included-settings.json \
        --include runs/advrefresh/included-budget.json "plain:" \
        "r5-steps8:posterior_weight=true,weight=1.0,refresh_every=5,steps=8" \
        "r1-steps8:posterior_weight=true,weight=1.0,refresh_every=1,steps=8" \
        "restart025-steps8:posterior_weight=true,weight=1.0,restart_share=0.25,steps=8"
    python experiments/adversarial_settings.py --page flow_robust --family sd3 \
        --output-root runs/flow-robust --teacher-cache ~/.cache/sfd --stage2-steps 60 \
        "b-remain0.5:refresh_every=5,steps=4,share=0.5,remain_starts=0.5,posterior_weight=true"
    python experiments/adversarial_settings.py --page flow_robust_long --family sd3 \
        --output-root runs/flow-long --teacher-cache ~/.cache/sfd --stage2-steps 600 \
        "r600-remain0.5-postw:remain_starts=0.5,posterior_weight=true" "r600-default:"

Each variant is `name:key=value,...` over `model.adversarial` (empty: the defaults of
configs/adversarial.yaml; `plain` as the name: plain SFD, no `--adversarial`). It runs
`sfd demo-text --data digits --attack soft --adversarial --model.adversarial.KEY VALUE ...` into
OUTPUT_ROOT/<name> with the shared teacher cache (teacher, classifier and stage 1 reused), stage 2
capped at --stage2-steps iterations (stage 1 kept at its preset's 400, so its cache is reused), one
run at a time, and reads its metrics.json; a folder that already holds metrics.json is read, not
run again, when the command kept beside it (command.txt) is this one; otherwise the script refuses
(folders measured before command.txt was kept: `--page-from` their record). The table: UA on the training prompts and
the held-out paraphrases, remain accuracy against the teacher's, remain FID, the soft-prompt
attack's success (the demo's default budget: 16 tokens, 200 steps, 3 restarts, 64 held-out
samples, judged by the evaluation classifier) and stage 2's wall seconds (--stage2-steps is a cap:
the completion rule may stop stage 2 before it; the flow pages give its reason, e.g. "stalled":
the judged forget rate, attacked pool included, stopped falling, docs/method.md §8;
--no-until-forgotten runs the whole cap, e.g. in a call of its own that --include brings in).
Variants can be run one call at a time: a later call naming them all reads the finished folders
and writes the whole page.
`--include` adds the rows of earlier records of this script (another concept pair) to the page,
each with the command that measured it. `--page` picks the results page (default
adversarial_settings; adversarial_budget: the inner attack's budget; adversarial_refresh: how often
the pool is drawn afresh; flow_robust: the flow-matching teacher, `--family sd3`, with the remain FID
over the teacher's multi-step FID and the same run's no-forgetting generator's attack success beside
each row; flow_robust_long: the same with a longer stage 2), kept in the record so that
`--page-from` rewrites the same page.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from results_page import (
    Refusal,
    add_page_arguments,
    command_line,
    git_commit,
    markdown_table,
    measured_once,
    read_record,
    run_context,
    save_record,
    sfd_run,
    write_page,
)

STAGE1_STEPS = 400  # sfd_text_digits_stage1.yaml: passed explicitly so stage 1 stays cached
PAGES = {  # results page -> its heading
    "adversarial_settings": "Adversarial SFD: settings on the text digits demo",
    "adversarial_budget": "Adversarial SFD: the inner attack's budget on the text digits demo",
    "adversarial_refresh": "Adversarial SFD: refreshing the inner attack's pool on the text digits demo",
    "flow_robust": "Adversarial SFD on the flow-matching text teacher: the attack from any prompt",
    "flow_robust_long": "Adversarial SFD on the flow-matching text teacher: longer stage 2",
}
FLOW_PAGES = {  # the flow teacher's pages (`--family sd3`, flow_table) -> their "Earlier rows"
    "flow_robust": "Plain SFD and adversarial SFD at the defaults on the same teacher, "
    "pair and attack budget (stage 2 under the completion rule, capped at 200): "
    "[the flow-matching text demo](flow_text.md); why the attack reaches the concept from "
    "any prompt: [where the attack starts](attack_reach.md) and docs/method.md §5.",
    "flow_robust_long": "Adversarial SFD's settings on the same teacher, pair and attack budget "
    "with stage 2 capped at 60 iterations: [attacks from any prompt](flow_robust.md); plain SFD "
    "and adversarial SFD at the defaults capped at 200: [the flow-matching text "
    "demo](flow_text.md).",
}


def parse_variant(spec: str) -> tuple[str, list[tuple[str, str]]]:
    """`name:key=value,...` -> (name, [(key, value), ...])."""
    name, _, rest = spec.partition(":")
    if not name:
        raise Refusal(f"variant {spec!r}: expected name:key=value,...")
    pairs = []
    for item in filter(None, rest.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise Refusal(f"variant {spec!r}: {item!r} is not key=value")
        pairs.append((key, value))
    return name, pairs


def demo_command(args: argparse.Namespace, name: str, pairs: list[tuple[str, str]]) -> list[str]:
    """The `sfd demo-text` command of one variant."""
    command = [
        "sfd", "demo-text", "--data", "digits", "--forget", args.forget,
        "--override", args.override, "--paraphrases", args.paraphrases,
        "--output-dir", str(Path(args.output_root) / name), "--teacher-cache", args.teacher_cache,
        "--threads", "1", "--no-progress", "--attack", "soft",
    ]  # fmt: skip
    if args.family != "unet":
        command += ["--family", args.family]
    if name != "plain":
        command.append("--adversarial")
    for key, value in pairs:
        command += [f"--model.adversarial.{key}", value]
    if not args.until_forgotten:
        command.append("--no-until-forgotten")  # stage 2 runs the whole cap
    if args.stage2_steps is not None:
        command += ["--trainer.max_steps", str(args.stage2_steps)]
        command += ["--stage1-steps", str(STAGE1_STEPS)]
    return command


def row_of(name: str, pairs: list[tuple[str, str]], command: list[str], folder: Path) -> dict:
    """One variant's row from its report folder's metrics.json."""
    metrics = json.loads((folder / "metrics.json").read_text())
    sfd, teacher = metrics["sfd"], metrics["teacher"]
    phases = metrics["protocol"]["phase_seconds"]
    # the completion rule's summary (None: the rule was off; runs before it was recorded: absent)
    completion = metrics["protocol"].get("two_stage", {}).get("stage2_completion")
    return {
        "pair": f"{metrics['class_names'][metrics['forget']]} → "
        f"{metrics['class_names'][metrics['override']]}",
        "name": name,
        "settings": dict(pairs),
        "command": shlex.join(command),
        "iterations": metrics["iterations"],
        "stop_reason": None if completion is None else completion["stop_reason"],
        "ua": sfd["forget_train"]["ua"],
        "ua_paraphrases": sfd["forget_paraphrases"]["ua"],
        "remain": sfd["remain_accuracy"],
        "remain_teacher": teacher["remain_accuracy"],
        "remain_per_class": sfd["remain_per_class"],
        "fid": sfd["fid_remain"],
        "fid_teacher": teacher["fid_remain"],
        "soft_attack": metrics["attack"]["sfd"]["soft"]["success_rate"],
        "soft_attack_without_forgetting": metrics["attack"]["distilled_without_forgetting"]["soft"][
            "success_rate"
        ],
        "stage2_seconds": phases["sfd"],
        "total_seconds": phases["total"],
    }


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for spec in args.variants:
        name, pairs = parse_variant(spec)
        command = demo_command(args, name, pairs)
        folder = Path(args.output_root) / name
        measured_once(folder / "metrics.json", command, sfd_run(command))
        rows.append(row_of(name, pairs, command, folder))
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "remain_per_class"}))
    return rows


def percent(value: float) -> str:
    return f"{100 * value:.1f} %"


def flow_table(rows: list[dict[str, Any]]) -> str:
    """The flow pages' table: the targets' quantities beside each variant (FID over the teacher's
    multi-step FID, the no-forgetting generator's attack success of the same run), and why stage 2
    stopped where the record says (the completion rule's reason, e.g. "stalled" before the cap)."""
    header = [
        "pair", "variant", "model.adversarial", "iterations (stop)", "UA", "UA paraphrases",
        "remain (teacher)", "FID ÷ teacher", "soft attack", "no forgetting: soft attack",
        "stage 2 s",
    ]  # fmt: skip
    return markdown_table(
        header,
        [
            [
                row["pair"],
                row["name"],
                ", ".join(f"{k} {v}" for k, v in row["settings"].items()) or "defaults",
                f"{row['iterations']} ({row['stop_reason']})"
                if row.get("stop_reason")
                else row["iterations"],
                percent(row["ua"]),
                percent(row["ua_paraphrases"]),
                f"{percent(row['remain'])} ({percent(row['remain_teacher'])})",
                f"{row['fid'] / row['fid_teacher']:.2f}× ({row['fid']:.2f})"
                if "fid_teacher" in row
                else f"– ({row['fid']:.2f})",
                percent(row["soft_attack"]),
                percent(row["soft_attack_without_forgetting"]),
                f"{row['stage2_seconds']:.0f}",
            ]
            for row in rows
        ],
    )


def write_results_page(record: dict[str, Any], json_file: str) -> str:
    rows = [row for earlier in record.get("included", []) for row in earlier["rows"]]
    rows += record["rows"]
    name = record.get("page", "adversarial_settings")  # older records: the settings page
    header = [
        "pair", "variant", "model.adversarial", "iterations", "UA (para.)", "remain (teacher)",
        "remain FID", "soft attack", "stage 2 s",
    ]  # fmt: skip
    table = markdown_table(
        header,
        [
            [
                row["pair"],
                row["name"],
                "off (plain SFD)"
                if row["name"] == "plain"
                else ", ".join(f"{k} {v}" for k, v in row["settings"].items()) or "defaults",
                row["iterations"],
                f"{percent(row['ua'])} ({percent(row['ua_paraphrases'])})",
                f"{percent(row['remain'])} ({percent(row['remain_teacher'])})",
                f"{row['fid']:.2f}",
                percent(row["soft_attack"]),
                f"{row['stage2_seconds']:.0f}",
            ]
            for row in rows
        ],
    )
    per_class = markdown_table(
        ["pair", "variant", *(str(c) for c in range(10))],
        [
            [
                row["pair"],
                row["name"],
                *(
                    percent(row["remain_per_class"][str(c)])
                    if str(c) in row["remain_per_class"]
                    else "–"
                    for c in range(10)
                ),
            ]
            for row in rows
        ],
    )
    commands = "\n".join(f"- {row['pair']}, `{row['name']}`: `{row['command']}`" for row in rows)
    for earlier in record.get("included", []):
        commands += f"\n\nRows of {earlier['run']['command']} ({earlier['run']['date']}, "
        commands += f"commit {earlier['run']['commit']['hash']}) are included above."
    sections = {
        "What it measures": __doc__.split("\n\n", 2)[2].strip(),
        "Results": table,
        "Remain accuracy per class": per_class,
        "Commands": commands,
    }
    if name in FLOW_PAGES:
        sections["Results"] = flow_table(rows)
        sections = {**sections, "Earlier rows": FLOW_PAGES[name]}
    page = write_page(
        name,
        PAGES[name],
        record["run"]["command"],
        json_file,
        record,
        sections,
    )
    return str(page)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="adversarial_settings.py", description=__doc__)
    parser.add_argument("variants", nargs="*", help="name:key=value,... (see above)")
    parser.add_argument("--output-root", default="runs/advset")
    parser.add_argument("--forget", default="seven")
    parser.add_argument("--override", default="one")
    parser.add_argument(
        "--paraphrases", default="sfd/apps/demo_text/prompts/digits_paraphrases.txt"
    )
    parser.add_argument("--teacher-cache", default="/tmp/benchcache/sfd")
    parser.add_argument("--stage2-steps", type=int, default=None)
    parser.add_argument(
        "--until-forgotten",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stage 2 under the completion rule, --stage2-steps a cap (default); "
        "--no-until-forgotten: every variant runs the whole --stage2-steps",
    )
    parser.add_argument(
        "--family",
        choices=("unet", "sd3"),
        default="unet",
        help="the teacher: unet (default) or sd3 (sfd demo-text --family)",
    )
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="FILE.json",
        help="an earlier record of this script whose rows the page shows too (repeatable)",
    )
    parser.add_argument(
        "--json", default=None, help="default: OUTPUT_ROOT/adversarial_settings.json"
    )
    parser.add_argument("--page", choices=sorted(PAGES), default="adversarial_settings")
    add_page_arguments(parser)
    args = parser.parse_args(argv)
    if args.page_from:
        print(write_results_page(read_record(args.page_from), args.page_from))
        return
    if args.page in FLOW_PAGES and args.family != "sd3":
        parser.error(f"--page {args.page} is the flow teacher's: --family sd3 (got {args.family})")
    json_file = args.json or str(Path(args.output_root) / "adversarial_settings.json")
    load_start, commit = os.getloadavg(), git_commit()
    rows = measure(args)
    record = {
        "run": run_context(command_line(__file__, argv), load_start, 1, commit),
        "page": args.page,
        "rows": rows,
        "included": [read_record(path) for path in args.include],
    }
    save_record(record, json_file)
    if not args.no_page:
        print(write_results_page(record, json_file))


if __name__ == "__main__":
    main()
