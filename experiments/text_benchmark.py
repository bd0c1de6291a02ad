"""The text-to-image concept-forgetting benchmark (issue 11): `sfd demo-text` on four set-ups.

    python experiments/text_benchmark.py --output-dir runs/text-benchmark [--only digits] \
        [--teacher-cache DIR] [-- extra sfd demo-text options]

Set-ups: digits "seven" -> "one" with the shipped paraphrases (the pair the settings were tuned
on), digits "three" -> "eight" with the held-back paraphrase set b (not tuned on), and the same
for Fashion-MNIST: "sneaker" -> "sandal" (tuned) and "pullover" -> "coat" with set b (not tuned).
Each run is a plain `sfd demo-text` command (printed); the teacher of a data set is trained once
and cached. Writes benchmark.json and benchmark.md (targets met or missed, phase times, load
averages before and after each run, CPU seconds of the process).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from sfd.apps.demo_text.prompts import shipped_paraphrases

SETUPS = {
    "digits": ("digits", "seven", "one", ""),
    "digits-untuned": ("digits", "three", "eight", "b"),
    "fashion": ("fashion-mnist", "sneaker", "sandal", ""),
    "fashion-untuned": ("fashion-mnist", "pullover", "coat", "b"),
}


def command(name: str, output: Path, extra: list[str]) -> list[str]:
    """The `sfd demo-text` command line of one set-up."""
    data, forget, override, variant = SETUPS[name]
    return [
        sys.executable, "-m", "sfd.cli", "demo-text", "--data", data,
        "--forget", forget, "--override", override,
        "--paraphrases", str(shipped_paraphrases(data, variant)),
        "--output-dir", str(output / name), "--no-progress", *extra,
    ]  # fmt: skip


def run(name: str, output: Path, extra: list[str]) -> dict:
    """Run one set-up; its metrics' targets and timings."""
    args = command(name, output, extra)
    print("$", " ".join(args[1:]).replace("-m sfd.cli", "sfd"), flush=True)
    load_before = os.getloadavg()
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, check=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    metrics = json.loads((output / name / "metrics.json").read_text())
    return {
        "setup": name,
        "command": " ".join(args[1:]).replace("-m sfd.cli", "sfd"),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(
            (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime),
            1,
        ),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
        "phase_seconds": metrics["protocol"]["phase_seconds"],
        "teacher_cached": metrics["protocol"]["teacher"]["reused_from_cache"],
        "classifier_cached": metrics["protocol"]["classifier"]["reused_from_cache"],
        "stage1_cached": metrics["protocol"]["two_stage"]["stage1_reused_from_cache"],
        "targets": metrics["targets"],
        "models": {
            key: {
                "ua": metrics[key]["forget_train"]["ua"],
                "ua_paraphrases": metrics[key]["forget_paraphrases"]["ua"],
                "forget_as_override": metrics[key]["forget_train"]["as_override"],
                "remain_accuracy": metrics[key]["remain_accuracy"],
                "neighbour_accuracy": metrics[key]["neighbour_accuracy"],
                "fid_remain": metrics[key]["fid_remain"],
                "attack_success": metrics["attack"][key]["success_rate"],
            }
            for key in ("teacher", "distilled_without_forgetting", "sfd")
        },
    }


def markdown(results: list[dict]) -> str:
    """One table per set-up: the models' numbers, then the targets."""
    lines = ["# Text-to-image concept-forgetting benchmark", ""]
    for r in results:
        lines += [
            f"## {r['setup']}",
            "",
            f"`{r['command']}`",
            "",
            f"wall {r['wall_seconds'] / 60:.1f} min, CPU {r['cpu_seconds'] / 60:.1f} min, load "
            f"{r['load_before']} -> {r['load_after']}, cached: teacher {r['teacher_cached']}, "
            f"classifier {r['classifier_cached']}, stage 1 {r['stage1_cached']}; phases (s): "
            f"{r['phase_seconds']}",
            "",
            "| model | UA | UA paraphrases | remain acc. | neighbour acc. | FID | attack |",
            "|---|---|---|---|---|---|---|",
        ]
        for key, m in r["models"].items():
            lines.append(
                f"| {key} | {100 * m['ua']:.1f} % | {100 * m['ua_paraphrases']:.1f} % "
                f"| {100 * m['remain_accuracy']:.1f} % | {100 * m['neighbour_accuracy']:.1f} % "
                f"| {m['fid_remain']:.3f} | {100 * m['attack_success']:.1f} % |"
            )
        lines += ["", "| target | value | met |", "|---|---|---|"]
        for name, t in r["targets"].items():
            lines.append(f"| {name} | {t['value']:.3f} | {'yes' if t['met'] else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/text-benchmark"))
    parser.add_argument("--only", nargs="+", choices=sorted(SETUPS), help="set-ups to run")
    options, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    results = [run(name, options.output_dir, extra) for name in options.only or SETUPS]
    options.output_dir.mkdir(parents=True, exist_ok=True)
    (options.output_dir / "benchmark.json").write_text(json.dumps(results, indent=2) + "\n")
    (options.output_dir / "benchmark.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
