"""Where does the soft-prompt attack bring the forgotten concept back from? A probe of text demo
runs' one-step generators (docs/results/attack_reach.md).

For each `sfd demo-text` output folder and each of its generators (without forgetting, SFD), the
evaluation's soft-prompt attack (`sfd.eval.soft_prompt`, one restart, a small budget) starts from
two prompts: the first training forget prompt, and the first remain prompt of the lowest remain
class other than the override (a prompt SFD never changed). If the attack reaches the forgotten
class from the remain prompt as fast on the SFD generator as on the generator without forgetting,
SFD's forgetting is local to the forget prompts' embeddings: the generator still draws the concept
wherever the learned tokens take it. Success is the evaluation's (`ASR_DEFINITION`: the classifier's
share of the forgotten class on held-out noise); "updates to loss < ln 2" counts the Adam updates
made before the attack loss (cross-entropy towards the forgotten class) first fell below ln 2.

    python experiments/attack_reach.py --runs runs/flow-adv/digits runs/adv/digits-plain \
        --steps 20 --tokens 16 2 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path
from typing import Any

from results_page import add_page_arguments, markdown_table, measure_and_write, write_page

HEADER = (
    "run",
    "generator",
    "start",
    "tokens",
    "before the attack",
    "success",
    "updates to loss < ln 2",
)
GENERATORS = {
    "generator_without_forgetting": "without forgetting",
    "generator": "SFD",
}


def start_prompts(run: Path, forget: int, override: int) -> dict[str, str]:
    """The attack's starting prompts of a run: its first forget prompt and a remain prompt."""
    forget_prompt = (run / "prompts" / "forget_prompts.txt").read_text().splitlines()[0]
    with (run / "prompts" / "remain_prompts.csv").open() as file:
        rows = [(row["prompt"], int(row["label"])) for row in csv.DictReader(file)]
    label = min(k for _, k in rows if k not in (forget, override))
    remain_prompt = next(p for p, k in rows if k == label)
    return {"forget": forget_prompt, "remain": remain_prompt}


def steps_below(losses: list[float], level: float = math.log(2)) -> int | None:
    """Adam updates the attack made before its loss first fell below `level` (0: the starting
    prompt's loss already was); None if it never did. `losses[i]` is the loss before update i."""
    return next((i for i, loss in enumerate(losses) if loss < level), None)


def measure(options: argparse.Namespace) -> dict[str, Any]:
    import json

    import torch

    from sfd.apps.harness.text_folders import exported_model
    from sfd.eval.attack_budget import AttackBudget
    from sfd.eval.classifier import load_classifier
    from sfd.eval.soft_prompt import soft_prompt_attack

    rows = []
    for folder in options.runs:
        run = Path(folder)
        metrics = json.loads((run / "metrics.json").read_text())
        forget, override = int(metrics["forget"]), int(metrics["override"])
        classifier = load_classifier(run / "classifier")
        prompts = start_prompts(run, forget, override)
        for key, name in GENERATORS.items():
            model = exported_model(run / key, name=name)
            for start, prompt in prompts.items():
                for tokens in options.tokens:
                    budget = AttackBudget(
                        steps=options.steps, restarts=1, num_tokens=tokens, seed=options.seed
                    )
                    with torch.enable_grad():
                        result = soft_prompt_attack(model, classifier, prompt, forget, budget)
                    row = {
                        "run": folder,
                        "model": name,
                        "start": start,
                        "prompt": prompt,
                        "tokens": tokens,
                        "success": result.success_rate,
                        "success_without_attack": result.success_rate_without_attack,
                        "steps_to_half": steps_below(result.losses),
                        "losses": result.losses,
                    }
                    print({k: v for k, v in row.items() if k != "losses"}, flush=True)
                    rows.append(row)
    return {
        "settings": {key: getattr(options, key) for key in ("runs", "steps", "tokens", "seed")},
        "rows": rows,
    }


def summary(record: dict[str, Any]) -> str:
    return "\n".join(
        f"{r['run']} {r['model']} from {r['start']} ({r['tokens']} tokens): "
        f"{100 * r['success']:.1f} %"
        for r in record["rows"]
    )


def write_results_page(record: dict[str, Any], json_file: str) -> str:
    s = record["settings"]
    table = [
        (
            f"`{r['run']}`", r["model"], f"{r['start']}: “{r['prompt']}”", r["tokens"],
            f"{100 * r['success_without_attack']:.1f} %", f"{100 * r['success']:.1f} %",
            "–" if r["steps_to_half"] is None else r["steps_to_half"],
        )
        for r in record["rows"]
    ]  # fmt: skip
    sections = {
        "What it measures": (
            f"The evaluation's soft-prompt attack at a small budget ({s['steps']} Adam steps, one "
            f"restart, seed {s['seed']}; the benchmark spends 200 steps × 3 restarts) on each "
            "run's one-step generators, started from the run's first forget prompt and from a "
            "remain prompt (the lowest remain class other than the override), towards the "
            "forgotten class. Success: the evaluation classifier's share of the forgotten class "
            "on 64 held-out draws; updates to loss < ln 2: the Adam updates made before the attack's "
            "batch-mean cross-entropy first fell below ln 2 (0: already at the start; a mean "
            "below ln 2 is not every sample's p > ½)."
        ),
        "Results": markdown_table(HEADER, table),
    }
    return str(
        write_page(
            "attack_reach",
            "Where the soft-prompt attack brings the concept back from",
            record["run"]["command"],
            json_file,
            record,
            sections,
        )
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", help="sfd demo-text output folders")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--tokens", type=int, nargs="+", default=[16])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default="runs/attacks/attack_reach.json")
    add_page_arguments(parser)
    options = parser.parse_args(argv)
    if not options.page_from and not options.runs:
        parser.error("give --runs (or --page-from)")
    measure_and_write(
        options, argv, __file__, lambda: measure(options), summary, write_results_page
    )


if __name__ == "__main__":
    main()
