"""White-box against transfer attacks: how much of an attack's success the judge alone sees.

    python experiments/attack_judge.py --output-root runs/judge --cache /tmp/benchcache/sfd \
        "SFD=runs/advset/plain/generator" \
        "adversarial SFD=runs/advset/s60-postw1/generator" \
        "no forgetting=runs/advset/s60-postw1/generator_without_forgetting" \
        --report runs/advset/s60-postw1
    python experiments/attack_judge.py --output-root runs/judge-class --class-report \
        runs/digits-fresh "SFD=runs/digits-fresh/generator" --include runs/judge/attack_judge.json
    python experiments/attack_judge.py --page-from runs/judge/attack_judge.json

The prompt attacks optimise CE(classifier(images), forgotten class) and are judged by the
evaluation classifier. When the objective's classifier is the judge itself (white-box, the
default of `sfd eval-text --attack`), part of the success can be images the judge calls the
forgotten class without being it: adversarial examples of that classifier, not the concept coming
back. Each MODEL (`name=folder`: an exported one-step generator) is measured with
`sfd eval-text MODEL --classifier REPORT/classifier --attack ATTACKS --attack-objective both`
(one subprocess each, its metrics.json kept under OUTPUT_ROOT/<name>), the prompts, classes and
classifier of REPORT (an `sfd demo-text` output folder). Per model and attack:

- white-box ASR: the objective differentiates the judge (the evaluation classifier);
- agreement: the share of those successful images that the attacker classifier (the judge's
  architecture and training recipe on the same training split, another seed and data order,
  never seen by the white-box attack) also labels as the forgotten class; ASR × agreement is the
  share of images both classifiers read as the forgotten class;
- transfer ASR: the objective differentiates the attacker classifier; the judge only judges.

Budgets, noise and prompt are `sfd eval-text`'s (16 tokens, 200 steps, 3 restarts by default; the
first training forget prompt; 64 held-out samples). With `--class-report` (an `sfd demo` output
folder) the models are class-conditional generators and the attack is the class-embedding attack,
measured with `sfd eval MODEL --attack --attack-objective both` (200 steps, 3 restarts, 64 held-out
samples by default). A model whose metrics file exists is read, not measured again, when the
command that wrote it (kept beside it, command.txt) is this one; otherwise the script refuses.
`--include` adds the rows of an earlier record of this script.
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

TITLE = "Attacks: white-box against transfer (who holds the judge)"


def parse_model(spec: str) -> tuple[str, str]:
    """`name=folder` -> (name, folder)."""
    name, sep, folder = spec.partition("=")
    if not sep or not name or not folder:
        raise Refusal(f"model {spec!r}: expected name=folder")
    return name, folder


def eval_command(args: argparse.Namespace, name: str, folder: str) -> list[str]:
    """The `sfd eval-text` (`sfd eval` for a class report) command of one model."""
    if args.class_report:
        report = Path(args.class_report)
        metrics = json.loads((report / "metrics.json").read_text())
        return [
            "sfd", "eval", folder, "--classifier", str(report / "classifier"),
            "--forget", str(metrics["forget"]), "--override", str(metrics["override"]),
            "--attack", "--attack-objective", "both", "--cache", args.cache,
            "--output", str(result_file(args, name)), "--no-progress",
        ]  # fmt: skip
    report = Path(args.report)
    prompts = report / "prompts"
    metrics = json.loads((report / "metrics.json").read_text())
    return [
        "sfd", "eval-text", folder, "--classifier", str(report / "classifier"),
        "--forget-prompts", str(prompts / "forget_prompts.txt"),
        "--remain-prompts", str(prompts / "remain_prompts.csv"),
        "--paraphrases", str(prompts / "forget_paraphrases.txt"),
        "--forget", str(metrics["forget"]), "--override", str(metrics["override"]),
        "--output-dir", str(Path(args.output_root) / slug(name)),
        "--attack", *args.attacks, "--attack-objective", "both", "--cache", args.cache,
        "--no-progress",
    ]  # fmt: skip


def slug(name: str) -> str:
    return name.replace(" ", "-")


def result_file(args: argparse.Namespace, name: str) -> Path:
    """Where one model's metrics go: OUTPUT_ROOT/<name>/metrics.json (eval-text writes the name,
    `sfd eval --output` takes it)."""
    return Path(args.output_root) / slug(name) / "metrics.json"


def row_of(name: str, command: list[str], file: Path) -> dict[str, Any]:
    """One model's row from its metrics file (`sfd eval-text`'s or `sfd eval`'s)."""
    metrics = json.loads(file.read_text())
    attacks = metrics["attacks"]
    row: dict[str, Any] = {
        "name": name,
        "model": metrics["model"],
        "model_sha256": metrics.get("model_sha256"),
        "command": shlex.join(command),
        "ua": metrics["evaluation"]["forget_train"]["ua"] if "evaluation" in metrics else None,
        "attacker_classifier": metrics["protocol"]["attacker_classifier"],
        "attacks": {},
    }
    for attack in (k for k in attacks if k != "paraphrases" and not k.endswith("-transfer")):
        white, transfer = attacks[attack], attacks[f"{attack}-transfer"]
        row["attacks"][attack] = {
            "white_box": white["success_rate"],
            "agreement": white["agreement"],
            "both_read": white["success_rate"] * (white["agreement"] or 0.0),
            "attacker_reads_white_box": white["second_classifier_success_rate"],
            "transfer": transfer["success_rate"],
            "attacker_reads_transfer": transfer["second_classifier_success_rate"],
            "without_attack": white["success_rate_without_attack"],
            "budget": white["budget"],
            "objective_white_box": white["objective"],
            "objective_transfer": transfer["objective"],
            "asr_definition": white["asr_definition"],
            "transfer_asr_definition": transfer["asr_definition"],
            "agreement_definition": white["agreement_definition"],
        }
    return row


def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for spec in args.models:
        name, folder = parse_model(spec)
        command = eval_command(args, name, folder)
        file = result_file(args, name)

        file.parent.mkdir(parents=True, exist_ok=True)
        measured_once(file, command, sfd_run(command, quiet=True))
        rows.append(row_of(name, command, file))
        print(
            json.dumps({k: row[k] for row in rows[-1:] for k in ("name", "attacks")}, default=str)
        )
    return rows


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def write_results_page(record: dict[str, Any], json_file: str) -> str:
    rows = [row for earlier in record.get("included", []) for row in earlier["rows"]]
    rows += record["rows"]
    table = markdown_table(
        ["model", "attack", "white-box ASR", "agreement", "both classifiers read it",
         "transfer ASR", "attacker classifier reads (transfer)", "without attack"],
        [
            [row["name"], attack, percent(a["white_box"]), percent(a["agreement"]),
             percent(a["both_read"]), percent(a["transfer"]),
             percent(a["attacker_reads_transfer"]), percent(a["without_attack"])]
            for row in rows
            for attack, a in row["attacks"].items()
        ],
    )  # fmt: skip
    lines = []
    for attack in dict.fromkeys(a for row in rows for a in row["attacks"]):
        first = next(row["attacks"][attack] for row in rows if attack in row["attacks"])
        lines += [
            f"- **{attack}**: budget {', '.join(f'{k} {v}' for k, v in first['budget'].items())}.",
            f"  White-box objective: {first['objective_white_box']}.",
            f"  Transfer objective: {first['objective_transfer']}.",
            f"  ASR: {first['asr_definition']}.",
            f"  Agreement: {first['agreement_definition']}.",
        ]
    lines.append("- Both classifiers read it: white-box ASR × agreement.")
    attackers: dict[str, list[str]] = {}
    for row in rows:
        attackers.setdefault(row["attacker_classifier"]["folder"], []).append(row["name"])
    for folder, names in attackers.items():
        entry = next(
            r["attacker_classifier"] for r in rows if r["attacker_classifier"]["folder"] == folder
        )
        lines.append(
            f"- Attacker classifier of {', '.join(names)}: `{folder}`, held-out accuracy "
            f"{percent(entry['heldout_accuracy'])}; recipe {entry['recipe']}."
        )
    definitions = "\n".join(lines)
    commands = "\n".join(
        f"- {row['name']} (`{row['model']}`"
        + (f", sha256 {row['model_sha256']}" if row["model_sha256"] else "")
        + f"): `{row['command']}`"
        for row in rows
    )
    for earlier in record.get("included", []):
        commands += f"\n\nRows of {earlier['run']['command']} ({earlier['run']['date']}, "
        commands += f"commit {earlier['run']['commit']['hash']}) are included above."
    sections = {
        "What it measures": __doc__.split("\n\n", 2)[2].strip(),
        "Results": table,
        "Definitions": definitions,
        "Commands": commands,
    }
    extra = record.get("notes")
    if extra:
        sections["Notes"] = extra
    page = write_page("attack_judge", TITLE, record["run"]["command"], json_file, record, sections)
    return str(page)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="attack_judge.py", description=__doc__)
    parser.add_argument("models", nargs="*", help="name=folder (an exported generator)")
    parser.add_argument("--report", help="the sfd demo-text output folder (classifier, prompts)")
    parser.add_argument("--class-report", help="an sfd demo output folder (class generators)")
    parser.add_argument("--include", action="append", default=[], metavar="FILE.json",
                        help="an earlier record of this script whose rows the page shows too")  # fmt: skip
    parser.add_argument("--output-root", default="runs/judge")
    parser.add_argument("--cache", default="/tmp/benchcache/sfd")
    parser.add_argument("--attacks", nargs="+", default=["soft"], choices=["soft", "discrete"])
    parser.add_argument("--notes", help="a paragraph the page shows under Notes")
    parser.add_argument("--json", default=None, help="default: OUTPUT_ROOT/attack_judge.json")
    add_page_arguments(parser)
    args = parser.parse_args(argv)
    if args.page_from:
        print(write_results_page(read_record(args.page_from), args.page_from))
        return
    if not args.models or bool(args.report) == bool(args.class_report):
        parser.error(
            "give models (name=folder) and one of --report, --class-report (or --page-from)"
        )
    json_file = args.json or str(Path(args.output_root) / "attack_judge.json")
    load_start, commit = os.getloadavg(), git_commit()
    rows = measure(args)
    record = {
        "run": run_context(command_line(__file__, argv), load_start, 1, commit),
        "rows": rows,
        "notes": args.notes,
        "included": [read_record(path, "--include") for path in args.include],
    }
    save_record(record, json_file)
    if not args.no_page:
        print(write_results_page(record, json_file))


if __name__ == "__main__":
    main()
