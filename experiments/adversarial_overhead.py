"""Seconds per iteration of adversarial SFD against plain SFD, on the tests' tiny teachers.

    python experiments/adversarial_overhead.py [--paths class text] [--batch-size 8 [32 ...]] \
        [--iterations 10] [--warmup 2] [--threads 1] \
        [--json runs/adversarial_overhead/adversarial_overhead.json]
    python experiments/adversarial_overhead.py --page-from runs/adversarial_overhead/adversarial_overhead.json

For each path (class: the tiny 8×8 10-class UNet, the class-embedding attack; text: the tiny
BERT-conditioned 8×8 UNet on digit captions, the soft-prompt attack) it fits `SFDModule` in a real
`lightning.Trainer` twice, without and with `adversarial=AdversarialSettings()` (the defaults of
configs/adversarial.yaml), and reports the median wall time per iteration after warm-up and their
ratio (the target is at most 2×). Writes the JSON record and docs/results/adversarial_overhead.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from iteration_time import IterationTimer
from results_page import (
    add_page_arguments,
    markdown_table,
    measure_and_write,
    write_page,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import save_tiny_teacher  # noqa: E402
from text_fixtures import save_tiny_bert, save_tiny_text_teacher  # noqa: E402

from sfd.apps.data.captions import DIGITS_VOCABULARY  # noqa: E402
from sfd.core.adversarial_settings import AdversarialSettings, adversarial_rows  # noqa: E402
from sfd.core.conditions import ClassConditions, ConditionSampler, PromptConditions  # noqa: E402
from sfd.core.module import SFDModule  # noqa: E402
from sfd.core.sigma import UniformTimestepSigma  # noqa: E402
from sfd.teachers import PretrainedVPTeacher, StableDiffusionTeacher  # noqa: E402
from sfd.teachers.base import Denoiser  # noqa: E402

PATHS = ("class", "text")
TARGET = 2.0  # adversarial SFD may cost at most twice plain SFD per iteration


def teacher_and_conditions(path: str, folder: Path) -> tuple[Denoiser, ConditionSampler]:
    """The tiny teacher of a path and its conditions (forget 0 -> 1; captions seven -> one)."""
    if path == "class":
        return PretrainedVPTeacher(str(save_tiny_teacher(folder / "teacher"))), ClassConditions(
            0, 1
        )
    teacher = save_tiny_text_teacher(folder / "teacher", save_tiny_bert(folder / "bert"))
    forget, remain = folder / "forget.txt", folder / "remain.txt"
    forget.write_text("\n".join(DIGITS_VOCABULARY.captions(7)))
    remain.write_text("\n".join(DIGITS_VOCABULARY.captions(3) + DIGITS_VOCABULARY.captions(4)))
    conditions = PromptConditions(
        DIGITS_VOCABULARY.concept_pairs(7, 1),
        forget_prompts=str(forget),
        remain_prompts=str(remain),
    )
    return StableDiffusionTeacher(str(teacher)), conditions


def seconds_per_iteration(
    path: str,
    folder: Path,
    adversarial: AdversarialSettings | None,
    batch_size: int,
    iterations: int,
    warmup: int,
) -> dict[str, Any]:
    """Fit SFD (plain or adversarial); the timing of each iteration after `warmup`."""
    teacher, conditions = teacher_and_conditions(path, folder)
    module = SFDModule(
        teacher,
        conditions,
        UniformTimestepSigma(20, 712),
        batch_size=batch_size,
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        ema_decay=0.99,
        adversarial=adversarial,
    )
    timer = IterationTimer()
    attack_times = time_attack(module) if adversarial is not None else None
    trainer = pl.Trainer(
        max_steps=warmup + iterations,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )
    trainer.fit(module)
    measured = timer.times[warmup:]
    record = {
        "teacher_params": sum(p.numel() for p in teacher.parameters()),
        "median": statistics.median(measured),
        "min": min(measured),
        "max": max(measured),
        "n": len(measured),
        "cpu_median": statistics.median(timer.cpu_times[warmup:]),
    }
    if attack_times is not None:
        record["attack_cpu_median"] = statistics.median(attack_times[warmup:])
    return record


def time_attack(module: SFDModule) -> list[float]:
    """The CPU time of the process in each call of the module's inner attack (one per
    iteration), appended to the list returned as the fit runs."""
    times: list[float] = []
    attack = module.adversarial.attack

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.process_time()
        result = attack(*args, **kwargs)
        times.append(time.process_time() - start)
        return result

    module.adversarial.attack = timed
    return times


def measure(
    paths: list[str], batch_sizes: list[int], iterations: int, warmup: int
) -> dict[str, Any]:
    settings = AdversarialSettings()
    rows = []
    for path, batch_size in ((p, b) for b in batch_sizes for p in paths):
        with tempfile.TemporaryDirectory() as tmp:
            plain = seconds_per_iteration(path, Path(tmp), None, batch_size, iterations, warmup)
        with tempfile.TemporaryDirectory() as tmp:
            attacked = seconds_per_iteration(
                path, Path(tmp), settings, batch_size, iterations, warmup
            )
        rows.append(
            {
                "path": path,
                "batch_size": batch_size,
                "attacked_rows": adversarial_rows(settings.share, batch_size),
                "teacher_params": plain["teacher_params"],
                "plain": plain,
                "adversarial": attacked,
                "ratio": attacked["median"] / plain["median"],
                "cpu_ratio": attacked["cpu_median"] / plain["cpu_median"],
            }
        )
    return {
        "batch_size": batch_sizes[0],
        "warmup": warmup,
        "adversarial_settings": asdict(settings),
        "adversarial_rows": adversarial_rows(settings.share, batch_sizes[0]),
        "paths": rows,
    }


def summary(record: dict[str, Any]) -> str:
    """The lines the script prints."""
    return "\n".join(
        f"{row['path']} (batch {row.get('batch_size', record['batch_size'])}): plain "
        f"{row['plain']['median']:.4f} s/it, adversarial "
        f"{row['adversarial']['median']:.4f} s/it, ratio {row['ratio']:.2f}× "
        f"(target ≤ {TARGET:g}×: {'yes' if row['ratio'] <= TARGET else 'no'}); CPU ratio "
        f"{cpu_ratio(row)}"
        for row in record["paths"]
    )


def cpu_ratio(row: dict[str, Any]) -> str:
    """The CPU-time ratio of a path ("–" in records written before it was measured)."""
    return "–" if "cpu_ratio" not in row else f"{row['cpu_ratio']:.2f}×"


def cpu_seconds(row: dict[str, Any]) -> str:
    if "cpu_ratio" not in row:
        return "–"
    return f"{row['plain']['cpu_median']:.4f} / {row['adversarial']['cpu_median']:.4f}"


def attack_seconds(row: dict[str, Any]) -> str:
    """The inner attack's median CPU s/iteration and its share of the added CPU time ("–" in
    records written before it was measured)."""
    if "attack_cpu_median" not in row["adversarial"]:
        return "–"
    attack = row["adversarial"]["attack_cpu_median"]
    added = row["adversarial"]["cpu_median"] - row["plain"]["cpu_median"]
    return f"{attack:.4f} ({attack / added:.0%})"


def write_results_page(
    record: dict[str, Any], json_file: str, results_dir: Path | None = None
) -> Path:
    """docs/results/adversarial_overhead.md from a record of `main`."""
    batch, attacked = record["batch_size"], record["adversarial_rows"]
    table = markdown_table(
        ("path (attack)", "batch (attacked rows)", "teacher params", "plain s/iteration",
         "adversarial s/iteration",
         "ratio", f"≤ {TARGET:g}×", "CPU s/iteration (plain / adversarial)", "CPU ratio",
         "inner attack CPU s/iteration (of the added)"),
        [(
            {"class": "class (class embedding)", "text": "text (soft prompt)"}[row["path"]],
            f"{row.get('batch_size', batch)} + {row.get('batch_size', batch)} "
            f"({row.get('attacked_rows', attacked)})",
            f"{row['teacher_params']:,}", f"{row['plain']['median']:.4f}",
            f"{row['adversarial']['median']:.4f}", f"{row['ratio']:.2f}×",
            "yes" if row["ratio"] <= TARGET else "no",
            cpu_seconds(row), cpu_ratio(row), attack_seconds(row),
        ) for row in record["paths"]],
    )  # fmt: skip
    settings = ", ".join(f"{k} {v}" for k, v in record["adversarial_settings"].items())
    timed = record["paths"][0]["plain"]["n"] if record["paths"] else 0
    return write_page(
        "adversarial_overhead",
        "Training-time overhead of adversarial SFD (tiny teachers, CPU)",
        record["run"]["command"],
        json_file,
        record,
        {
            "Wall time per iteration": (
                f"Median seconds per iteration of `SFDModule` in a real `lightning.Trainer` fit, "
                f"batch B remain + B forget, {record['warmup']} warm-up iterations, "
                f"{timed} timed; adversarial SFD with the defaults of `configs/adversarial.yaml` "
                f"({settings}: ⌈share·B⌉ attacked rows per iteration). "
                "Random-weight teachers: the time, not the forgetting, is what this measures. "
                "CPU s/iteration: the median CPU time of the process over an iteration, which "
                "other processes on a shared machine inflate less than the wall time. "
                "Inner attack: the median CPU time of `AdversarialTraining.attack` per iteration "
                "(the `steps` inner Adam steps and the attacked conditions for both SFD steps), "
                "and its share of the CPU time adversarial SFD adds to an iteration; the rest "
                "is the attacked rows in the two SFD steps. "
                "docs/method.md §9 says what the attack costs.\n\n" + table
            )
        },
        results_dir,
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS))
    parser.add_argument(
        "--batch-size",
        type=int,
        nargs="+",
        default=[8],
        help="remain and forget batch each; several: a row per batch size and path",
    )
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--json",
        default="runs/adversarial_overhead/adversarial_overhead.json",
        help="the record",
    )
    add_page_arguments(parser)
    args = parser.parse_args(argv)
    measure_and_write(
        args,
        argv,
        __file__,
        lambda: measure(args.paths, args.batch_size, args.iterations, args.warmup),
        summary,
        write_results_page,
    )


if __name__ == "__main__":
    main()
