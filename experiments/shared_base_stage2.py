"""Stage 2 of the class digits demo as adapters (shared base), one setting changed at a time.

    python experiments/shared_base_stage2.py --output-dir runs/sb-stage2 \
        --results runs/sb-stage2/stage2.jsonl \
        "default:" "fake-lr-half:model.fake_optimizer.init_args.lr=6e-4" \
        "alpha-8r:start.alpha=128" "no-restart:demo.average-after=0" \
        -- --teacher-cache DIR --threads 1 --no-progress --eval-per-class 100 --curve-every 100 \
        --skip-full-schedule-timing --no-attack
    python experiments/shared_base_stage2.py --page-from runs/sb-stage2/stage2.jsonl

Each run is `sfd demo ... --model.adapters.rank RANK` (the shared-base row of
experiments/shared_base_benchmark.py) with the cached stage 1 reused as it is and one change to
stage 2 alone, given as `name:key=value,...`:

- `key=value`: an `sfd fit` key of stage 2 only (e.g. model.generator_optimizer.init_args.lr);
  given to `sfd demo` itself it would change stage 1 too (and retrain it);
- `demo.FLAG=value`: an `sfd demo` flag (`--FLAG value`; `demo.FLAG=`: `--FLAG`), e.g.
  demo.average-after=0 or demo.no-until-forgotten= (with trainer.max_steps=200: a fixed stage 2);
- `start.alpha=A`: stage 2 at adapter alpha A, started from the stage-1 adapters rewritten to
  compute the same function at A (each LoRA's B scaled by alpha_1 / A): Adam's step on B then
  moves the merged update A / alpha_1 times as far;
- `start.balance=c`: the generator starts from the same merged updates with its factors
  re-shaped (A times c, B over c): the stage-1 generator is its EMA, whose factors
  `low_rank_lerp` balances (|B| = |A|), while a trained LoRA has a large A and a small B; Adam's
  step on each factor moves B·A by an amount that depends on that shape.

Appends one JSON line per run to --results (UA, remain accuracy, FID ratio, the stage-1
generator's FID ratio, stage-2 seconds per iteration, the forgetting curve, the demo command);
`--page-from` writes docs/results/shared_base_stage2.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from results_page import Refusal, command_line, markdown_table, run_context, write_page
from safetensors.torch import load_file, save_file
from shared_base_benchmark import demo_row
from shared_base_stage1 import in_cache

from sfd.apps.harness import class_run, stages
from sfd.cli import main as sfd_main

PAGE = "shared_base_stage2"
LORA_KEYS = ("lora_A", "lora_B")


def parse_run(spec: str) -> tuple[str, list[str], list[str], dict[str, float]]:
    """`name:key=value,...` -> (name, stage-2 `sfd fit` options, demo flags, start changes)."""
    name, _, assignments = spec.partition(":")
    fit, demo, start = [], [], {}
    for item in filter(None, assignments.split(",")):
        key, sep, value = item.partition("=")
        if not sep:
            raise Refusal(f"{spec!r}: {item!r} is not key=value")
        if key.startswith("demo."):  # an empty value: a flag without one
            demo += [f"--{key[5:]}", value] if value else [f"--{key[5:]}"]
        elif key in ("start.alpha", "start.balance"):
            start[key[6:]] = float(value)
        elif key.startswith("start."):
            raise Refusal(f"{spec!r}: unknown {key!r}; start.alpha or start.balance")
        else:
            fit += [f"--{key}", value]
    return name, fit, demo, start


def rewritten_start(source: Path, target: Path, start: dict[str, float]) -> Path:
    """A copy of saved stage-1 LoRA adapters computing the same functions, at `start["alpha"]`
    (every B scaled by the saved alpha over it) and with the generator's factors re-shaped by
    `start["balance"]` (A times c, B over c)."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(source, target)
    record = json.loads((target / "adapters.json").read_text())
    if record["settings"]["kind"] != "lora":
        raise Refusal(f"start.* rewrites LoRA adapters only, not {record['settings']['kind']}")
    old_alpha = float(record["settings"]["alpha"])
    alpha = start.get("alpha", old_alpha)
    balance = start.get("balance", 1.0)
    for adapter in record["adapters"]:
        file = target / f"{adapter}.safetensors"
        state = load_file(str(file))
        for key, value in state.items():
            if "lora_B" in key:
                value.mul_(old_alpha / alpha)
            if adapter == "generator" and "lora_A" in key:
                value.mul_(balance)
            if adapter == "generator" and "lora_B" in key:
                value.div_(balance)
        save_file(state, str(file))
    record["settings"]["alpha"] = alpha
    (target / "adapters.json").write_text(json.dumps(record, indent=2) + "\n")
    return target


@contextlib.contextmanager
def stage_two_only(fit: list[str], start: dict[str, float], folder: Path) -> Iterator[None]:
    """Within: the demo's stage 2 gets `fit` after its own options, and a shared base's stage 2
    starts from the rewritten stage-1 adapters (`start`); stage 1 (and its cache key) unchanged."""
    command_line_of = class_run.ClassRunSettings.sfd_command_line
    arguments_of = stages.StageOne.stage_two_arguments

    def sfd_command_line(self: Any, teacher_dir: str = "set-by-sfd-demo", stage: str = "sfd"):
        args = command_line_of(self, teacher_dir, stage)
        if stage != "stage2":
            return args
        alpha = ["--model.adapters.alpha", str(start["alpha"])] if "alpha" in start else []
        return [*args, *fit, *alpha]

    def stage_two_arguments(self: Any) -> list[str]:
        if not start:
            return arguments_of(self)
        if not self.adapters:
            raise Refusal("start.* needs a shared-base stage 1 (adapters)")
        rewritten = rewritten_start(self.adapters_dir, folder / "stage2_start", start)
        return ["--model.adapters.start_from", str(rewritten)]

    class_run.ClassRunSettings.sfd_command_line = sfd_command_line
    stages.StageOne.stage_two_arguments = stage_two_arguments
    try:
        yield
    finally:
        class_run.ClassRunSettings.sfd_command_line = command_line_of
        stages.StageOne.stage_two_arguments = arguments_of


def measure(options: argparse.Namespace, demo_args: list[str], argv: list[str]) -> int:
    options.results.parent.mkdir(parents=True, exist_ok=True)
    for spec in options.runs:
        name, fit, demo, start = parse_run(spec)
        folder = options.output_dir / name
        command = ["demo", "--output-dir", str(folder), *demo_args, *demo]
        command += ["--model.adapters.rank", str(options.rank)]
        load_start = os.getloadavg()
        clock = time.perf_counter()
        reused = options.reuse and (folder / "metrics.json").is_file()
        if reused:
            print(f"{name}: reusing {folder} (an earlier run of the same demo command)")
        else:
            with stage_two_only(fit, start, folder):
                status = sfd_main(command)
            if status != 0:
                print(f"{name}: sfd demo failed with status {status}", file=sys.stderr)
                return status
        row = demo_row(folder, time.perf_counter() - clock)
        metrics = json.loads((folder / "metrics.json").read_text())
        two_stage = metrics["protocol"]["two_stage"]
        record = {
            "name": name,
            "spec": spec,
            "run": run_context(command_line(__file__, argv), load_start),
            "demo_command": ["sfd", *command],
            "stage2_fit_options": fit,
            "start": start,
            "reused": reused,  # measured by an earlier run (its context is not this record's)
            **row,
            "completion": two_stage.get("stage2_completion"),
            "curve": metrics.get("forgetting_curve"),
        }
        print(
            f"{name}: FID {row['fid_ratio']:.3f}x (stage 1 {row['stage1_fid_ratio']:.3f}x) "
            f"UA {row['ua']:.3f} remain {row['remain_accuracy']:.4f} "
            f"{row['seconds_per_iteration']:.3f} s/it, {row['iterations']} iterations",
            flush=True,
        )
        with options.results.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    return 0


def write_results_page(files: list[Path], argv: list[str]) -> Path:
    """docs/results/shared_base_stage2.md from --results files (the last run's context)."""
    rows = [json.loads(line) for f in files for line in f.read_text().splitlines() if line]
    table = [
        (
            row["name"],
            f"`{row['spec'].partition(':')[2] or 'as the demo'}`",
            f"{row['stage1_fid_ratio']:.2f}",
            f"**{row['fid_ratio']:.2f}**",
            f"{100 * row['ua']:.1f} %",
            f"{100 * row['remain_accuracy']:.2f} %",
            row["iterations"],
            f"{row['seconds_per_iteration']:.2f}",
            f"{row['run']['machine']['load_average_start'][0]:.1f}",
        )
        for row in rows
    ]
    header = (
        "run", "stage-2 change", "stage-1 FID ratio", "FID ratio", "UA", "remain accuracy",
        "iterations", "s / iteration", "load",
    )  # fmt: skip
    runs = "\n\n".join(
        f"`{row['name']}` ({row['run']['date']}, commit {row['run']['commit']['hash']}"
        f"{' + uncommitted changes' if row['run']['commit']['dirty'] else ''}):\n\n"
        f"```bash\n{in_cache(row['run']['command'])}\n```\n\nran "
        f"`{in_cache(shlex.join(row['demo_command']))}`"
        + (
            f" with stage 2 alone given `{shlex.join(row['stage2_fit_options'])}`"
            if row["stage2_fit_options"]
            else ""
        )
        + (
            f", started from the stage-1 adapters rewritten by {row['start']}"
            if row["start"]
            else ""
        )
        + "."
        + (
            " Its numbers are that demo command's, run before and read by `--reuse` (the "
            "load column is the reading's)."
            if row.get("reused")
            else ""
        )
        for row in rows
    )
    sections = {
        "Stage 2 as adapters": (
            "The shared-base row of docs/results/shared_base.md (`sfd demo ... --model.adapters."
            "rank 16`, the cached stage 1 reused), with one change to stage 2 alone per run, "
            "measured before its stage 2 composed sfd_digits_stage2_shared_base.yaml (the "
            "fake score's lr 1.2e-3 there, as full copies'; the overlay sets fake-lr-double's "
            "2.4e-3). "
            "FID ratio: the shipped generator's remain FID over the teacher's DDIM-50 remain FID "
            "(the demo's evaluation); the stage-1 column is the generator stage 2 starts from, "
            "on the same evaluation. Seconds per iteration: stage-2 training on a shared machine "
            "(read them with the load average at the start). Runs named `-200` stop stage 2 at "
            "200 iterations without the completion rule (`trainer.max_steps=200,demo.no-until-"
            "forgotten=`, no EMA restart): their reference is the demo's stage 2 up to iteration "
            "200, which the completion rule does not change (it restarts the EMA at 200 at the "
            "earliest): the baseline's forgetting curve at 100 and 200 iterations is that of the "
            "shared-base row of docs/results/shared_base.md as of commit 7fadd67 (run at 29d6dae), when "
            "stage 2 ran 200 iterations (FID ratio 1.53, remain accuracy 96.1 %).\n\n"
            + markdown_table(header, table)
        ),
        "Runs": "CACHE/sfd: the demos' teacher cache (`sfd demo --teacher-cache`), which holds the "
        "teacher, the classifier and the shared-base stage 1 every run reuses. A command that "
        "names more runs than it has rows here was stopped after those rows.\n\n" + runs,
    }
    names = ", ".join(str(f) for f in files)
    title = "Shared base, stage 2: one change at a time"
    return write_page(PAGE, title, command_line(__file__, argv), names, rows[-1], sections)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    own, demo_args = argv[:split], argv[split + 1 :]
    parser = argparse.ArgumentParser(
        prog="shared_base_stage2.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--output-dir", type=Path, default=Path("runs/sb-stage2"))
    parser.add_argument("--results", type=Path, default=Path("runs/sb-stage2/stage2.jsonl"))
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read a run whose folder already holds a finished demo instead of running it again",
    )
    parser.add_argument("--page-from", nargs="+", type=Path, metavar="FILE.jsonl")
    parser.add_argument("runs", nargs="*", help="name:key=value,... (see above)")
    options = parser.parse_args(own)
    if options.page_from:
        print(write_results_page(options.page_from, argv))
        return 0
    if not options.runs:
        parser.error("give at least one name:key=value,... run")
    return measure(options, demo_args, argv)


if __name__ == "__main__":
    sys.exit(main())
