"""The results pages in docs/results/: written by experiments/ scripts from their JSON records.

Each benchmark script re-writes its page from a record (`--page-from`); these tests build a minimal
record, run the script's real entry point on it and read the page back.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))  # the scripts import results_page as a neighbour
results_page = importlib.import_module("results_page")

WRITTEN_BY = re.compile(
    r"^Written by `python (experiments/[\w-]+\.py)` from `([^`]+)`; do not edit by hand\.$",
    re.MULTILINE,
)


def run_section(command: str) -> dict[str, Any]:
    """A "run" section as `results_page.run_context` writes it, with fixed values."""
    return {
        "command": command,
        "date": "2026-01-02 03:04 UTC",
        "commit": {"hash": "abc1234", "dirty": True},
        "machine": {
            "cpu_count": 2,
            "torch_threads": 1,
            "load_average_start": [1.5, 1.0, 0.5],
            "load_average_end": [2.5, 1.25, 0.75],
            "platform": "Linux",
            "processor": "x86_64",
        },
        "libraries": {"python": "3.11.0", "torch": "2.5.0"},
    }


def model(nfe: int, ua: float, remain: float, fid: float, speed: float) -> dict[str, Any]:
    return {
        "nfe": nfe,
        "ua": ua,
        "forget_as_override": ua,
        "remain_accuracy": remain,
        "fid_remain": fid,
        "images_per_second": speed,
    }


def digits_record(command: str) -> dict[str, Any]:
    module = importlib.import_module("digits_benchmark")
    metrics = {
        "teacher": model(50, 0.01, 0.98, 3.0, 40.0),
        "distilled_without_forgetting": model(1, 0.02, 0.975, 3.1, 5000.0),
        "sfd": model(1, 0.995, 0.97, 3.3, 5100.0),
        "iterations": 400,
        "forgetting_curve_summary": {
            "ua_threshold": 0.95,
            "first_iteration": 40,
            "first_fraction": 0.1,
        },
        "protocol": {
            "phase_seconds": {"teacher": 0.5, "sfd": 200.0, "total": 420.0},
            "teacher": {"reused_from_cache": True},
            "classifier": {"reused_from_cache": True},
            "two_stage": {"stage1_reused_from_cache": False},
        },
    }
    demo = ["sfd", "demo", "--output-dir", "runs/demo", "--threads", "1"]
    return {"run": run_section(command), **module.benchmark_record(metrics, demo, 420.0)}


def compare_record(command: str) -> dict[str, Any]:
    module = importlib.import_module("compare_benchmark")

    def method(title: str, ua: float, seconds: float | None, **extra: Any) -> dict[str, Any]:
        return {
            "title": title,
            **model(1 if title.startswith("SFD") else 50, ua, 0.97, 3.2, 900.0),
            "iterations": 300,
            "train_seconds": 120.0,
            "cached": False,
            "ua95": {"iteration": None if seconds is None else 30, "seconds": seconds},
            "curve": [{"iteration": 30, "seconds": 12.0, "ua": ua}],
            "extra": extra,
        }

    metrics = {
        "forget": 3,
        "override": 5,
        "teacher": model(50, 0.01, 0.98, 3.0, 40.0),
        "methods": {
            "sfd": method("SFD", 0.99, 12.0),
            "esd": method("ESD", 0.9, None),
        },
        "protocol": {"phase_seconds": {"sfd": 130.0, "esd": 140.0}},
    }
    return {
        "run": run_section(command),
        "command": ["sfd", "compare", "--output-dir", "runs/compare"],
        "wall_seconds": 600.0,
        "phase_seconds": metrics["protocol"]["phase_seconds"],
        "targets": [
            {"target": n, "measured": m, "met": ok} for n, m, ok in module.targets(metrics)
        ],
        "forget": 3,
        "override": 5,
        "models": module.models(metrics),
    }


def attacks_record(command: str) -> dict[str, Any]:
    revival = {
        "steps": [0, 10, 20, 40], "ua": [1.0, 0.6, 0.4, 0.1], "steps_to_revival": 20,
        "objective": "eps-MSE at sigma_init", "condition": "the forget prompt 'seven'",
    }  # fmt: skip

    def model(soft: float) -> dict[str, Any]:
        attacks = {name: {"success_rate": soft} for name in ("soft", "discrete", "paraphrases")}
        return {
            "attacks": attacks,
            "seconds": {"soft": 60.0, "discrete": 180.0},
            "revival": revival,
        }

    return {
        "run": run_section(command),
        "run_folder": "runs/demo-text",
        "forget": 7,
        "override": 1,
        "models": {"sfd": model(0.5), "distilled_without_forgetting": model(1.0)},
        "budgets": {"soft": {"num_tokens": 16}, "discrete": {"num_tokens": 16}},
        "revival_budget": {"steps": 40},
        "ua_images": 200,
    }


def attacks_adversarial_record(command: str) -> dict[str, Any]:
    """A text record with adversarial SFD and the report folders' summary."""
    record = attacks_record(command)
    model = record["models"]["sfd"]
    record["models"]["adversarial_sfd"] = {
        **model,
        "attacks": {**model["attacks"], "soft": {"success_rate": 0.04},
                    "discrete": {"success_rate": 0.0625}},
        "revival": {**model["revival"], "steps_to_revival": None},
    }  # fmt: skip
    record["adversarial_run_folder"] = "runs/demo-text-adversarial"
    del record["models"]["distilled_without_forgetting"]  # not measured (`--only`)
    record["reused"] = {
        "record": "runs/attacks/adv.json",
        "command": "python x --only adversarial_sfd",
        "date": "2026-01-01 00:00 UTC",
        "models": ["adversarial_sfd"],
    }

    def scores(ua: float, remain: float, fid: float, seconds: float | None) -> dict[str, Any]:
        return {"ua": ua, "ua_paraphrases": 0.96, "remain_accuracy": remain,
                "neighbour_accuracy": 0.98, "fid_remain": fid,
                "training_seconds": seconds}  # fmt: skip

    record["summary"] = {
        "teacher": scores(0.0, 0.99, 4.0, None),
        "sfd": scores(1.0, 0.98, 5.0, 100.0),
        "adversarial_sfd": scores(0.995, 0.96, 5.6, 150.0),
        "distilled_without_forgetting": scores(0.01, 0.99, 6.0, None),
        "adversarial_settings": {"steps": 2},
    }
    return record


def attacks_class_record(command: str) -> dict[str, Any]:
    revival = {
        "steps": [0, 1, 2], "ua": [1.0, 0.6, 0.4], "steps_to_revival": 2,
        "objective": "eps-MSE at sigma_init", "condition": "the class label 0",
    }  # fmt: skip
    attack = {"success_rate": 0.25, "success_rate_without_attack": 0.0, "objective": "CE",
              "asr_definition": "share"}  # fmt: skip
    base = {**revival, "ua": [0.0, 0.0, 0.0], "steps_to_revival": 0}
    return {
        "run": run_section(command),
        "run_folder": "runs/demo",
        "forget": 0,
        "models": {
            "sfd": {"attack": attack, "seconds": 80.0, "revival": revival},
            "distilled_without_forgetting": {"attack": attack, "seconds": 81.0, "revival": base},
        },
        "budget": {"steps": 200},
        "revival_budget": {"steps": 2},
        "ua_images": 200,
    }


def text_record(command: str) -> dict[str, Any]:
    scores = {
        "ua": 0.99,
        "ua_paraphrases": 0.97,
        "forget_as_override": 0.9,
        "remain_accuracy": 0.96,
        "neighbour_accuracy": 0.95,
        "fid_remain": 0.123,
        "attack_success": 0.02,
    }
    setup = {
        "setup": "digits",
        "command": "sfd demo-text --data digits --forget seven --override one",
        "wall_seconds": 600.0,
        "cpu_seconds": 1100.0,
        "load_before": [1.0, 1.0, 1.0],
        "load_after": [2.0, 2.0, 2.0],
        "phase_seconds": {"total": 600.0},
        "teacher_cached": True,
        "classifier_cached": True,
        "stage1_cached": False,
        "torch_threads": 1,
        "targets": {"ua": {"value": 0.99, "met": True}},  # stored: an older issue's; not shown
        "models": {
            "teacher": {
                **scores,
                "ua": 0.0,
                "remain_accuracy": 0.97,
                "fid_remain": 0.1,
                "attack_success": 0.9,
            },
            "distilled_without_forgetting": {**scores, "ua": 0.0, "attack_success": 0.8},
            "sfd": scores,
        },
    }
    return {"run": run_section(command), "setups": [setup]}


def flow_text_record(command: str) -> dict[str, Any]:
    """The flow teacher's benchmark with `--adversarial`: targets of SFD and adversarial SFD."""
    record = text_record(command)
    record["run"]["family"] = "sd3"
    setup = record["setups"][0]
    sfd = setup["models"]["sfd"]
    setup["models"] = {
        "teacher": {**sfd, "fid_remain": 0.1, "attack_success": 0.9},
        "distilled_without_forgetting": {**sfd, "attack_success": 0.8},
        "sfd": {**sfd, "attack_success": 0.6},
        "adversarial_sfd": {**sfd, "attack_success": 0.3},
    }
    setup["targets"] = {"attack": {"value": 0.6, "met": False}}
    adversarial = {key: setup[key] for key in ("wall_seconds", "cpu_seconds", "load_before",
                   "load_after", "phase_seconds", "teacher_cached", "classifier_cached",
                   "stage1_cached")}  # fmt: skip
    adversarial["command"] = setup["command"] + " --adversarial"
    adversarial["targets"] = {"attack": {"value": 0.3, "met": True}}
    setup["adversarial"] = adversarial
    return record


def cli_startup_record(command: str) -> dict[str, Any]:
    row = {
        "command": "sfd fit --help",
        "median_seconds": 8.29,
        "fastest_seconds": 8.09,
        "heavy_modules": ["torch", "lightning"],
    }
    return {"run": run_section(command), "repeats": 5, "commands": [row]}


def iteration_time_record(command: str) -> dict[str, Any]:
    timing = {"median": 0.1234, "min": 0.1, "max": 0.2, "n": 3}
    return {
        "run": run_section(command),
        "teacher_params": 12345,
        "batch_size": 8,
        "warmup": 5,
        "seconds_per_iteration": timing,
        "iteration_seconds": [0.1, 0.1234, 0.2],
    }


def adversarial_overhead_record(command: str) -> dict[str, Any]:
    def timing(median: float) -> dict[str, Any]:
        return {"teacher_params": 1234, "median": median, "min": median, "max": median, "n": 3}

    return {
        "run": run_section(command),
        "batch_size": 8,
        "warmup": 2,
        "adversarial_settings": {"steps": 4, "share": 0.25},
        "adversarial_rows": 2,
        "paths": [
            {"path": "class", "batch_size": 32, "attacked_rows": 8, "teacher_params": 1234,
             "plain": {**timing(0.1), "cpu_median": 0.09},
             "adversarial": {**timing(0.15), "cpu_median": 0.162, "attack_cpu_median": 0.054},
             "ratio": 1.5,
             "cpu_ratio": 1.8},
            {"path": "text", "teacher_params": 5678, "plain": timing(0.2),
             "adversarial": timing(0.5), "ratio": 2.5},
        ],
    }  # fmt: skip


def adversarial_settings_record(command: str) -> dict[str, Any]:
    def row(pair: str, name: str, settings: dict, remain: float, attack: float) -> dict:
        return {
            "pair": pair,
            "name": name,
            "settings": settings,
            "command": f"sfd demo-text {name}",
            "iterations": 60,
            "ua": 1.0,
            "ua_paraphrases": 0.99,
            "remain": remain,
            "remain_teacher": 0.994,
            "remain_per_class": {"0": 0.99, "3": remain},
            "fid": 8.5,
            "soft_attack": attack,
            "soft_attack_without_forgetting": 1.0,
            "stage2_seconds": 600.4,
            "total_seconds": 1000.0,
        }

    earlier = {
        "run": run_section("python experiments/adversarial_settings.py a:"),
        "rows": [row("seven → one", "a", {}, 0.967, 0.4375)],
    }
    return {
        "run": run_section(command),
        "rows": [row("three → eight", "b", {"weight": "1.0"}, 0.978, 0.25)],
        "included": [earlier],
    }  # fmt: skip


def adversarial_budget_record(command: str) -> dict[str, Any]:
    return {**adversarial_settings_record(command), "page": "adversarial_budget"}


def flow_robust_record(command: str) -> dict[str, Any]:
    record = {**adversarial_settings_record(command), "page": "flow_robust"}
    record["rows"] = [{**row, "fid_teacher": 5.0} for row in record["rows"]]
    return record  # the included row has no teacher FID (an older record)


def flow_robust_long_record(command: str) -> dict[str, Any]:
    record = {**flow_robust_record(command), "page": "flow_robust_long"}
    record["rows"] = [
        {**row, "iterations": 390, "stop_reason": "stalled"} for row in record["rows"]
    ]
    return record  # the included row has no stop reason (an older record): its count alone


def adversarial_diagnosis_record(command: str) -> dict[str, Any]:
    def point(step: int, classifier: float, judged: float, labels: list[int], among=None):
        values = {"step": step, "classifier_forget": classifier, "judged_forget": judged}
        among = {} if among is None else {"judged_forget_among": among}  # older records: none
        return {**values, **among, "labels": labels, **({"objective": 0.05} if step else {})}

    return {
        "run": run_section(command),
        "settings": {"run": "runs/adv/p", "teacher": "teacher", "data": "digits", "steps": 25,
                     "every": 25, "rows": 8, "samples": 8, "scale": 100.0},
        "forget": 2,
        "class_names": ["zero", "one", "two"],
        "adversarial": {"tokens": 16, "lr": 0.05},
        "objectives": {
            "inner": [point(0, 0.0, 0.05, [1, 7, 0], 0.0), point(25, 0.5, 0.85, [4, 0, 4], 0.5)],
            "margin": [point(0, 0.0, 0.05, [1, 7, 0]), point(25, 0.0, 0.85, [8, 0, 0])],
            "classifier": [point(0, 0.0, 0.05, [1, 7, 0]), point(25, 0.25, 0.5, [0, 6, 2])],
        },
    }  # fmt: skip


def flow_adversarial_diagnosis_record(command: str) -> dict[str, Any]:
    record = adversarial_diagnosis_record(command)
    record["settings"]["family"] = "sd3"
    return record


def attack_reach_record(command: str) -> dict[str, Any]:
    def row(model: str, start: str, success: float, steps: int | None) -> dict[str, Any]:
        return {"run": "runs/f/digits", "model": model,
                "start": start, "prompt": f"a {start} prompt", "tokens": 16,
                "success": success, "success_without_attack": 0.0,
                "steps_to_half": steps, "losses": [3.0, 0.5]}  # fmt: skip

    return {
        "run": run_section(command),
        "settings": {"runs": ["runs/f/digits"], "steps": 20, "tokens": [16], "seed": 0},
        "rows": [row("SFD", "forget", 1.0, 2), row("SFD", "remain", 0.015625, None)],
    }


def shared_base_record(command: str) -> dict[str, Any]:
    def mode(ua: float, seconds: float, weights: int) -> dict[str, Any]:
        return {
            "ua": ua,
            "remain_accuracy": 0.95,
            "teacher_remain_accuracy": 0.97,
            "fid_remain": 3.3,
            "teacher_fid_remain": 3.0,
            "fid_ratio": 1.1,
            "iterations": 200,
            "seconds_per_iteration": seconds,
            "trained_weights": weights,
            "wall_seconds": 600.0,
        }

    return {
        "run": run_section(command),
        "rank": 16,
        "commands": {"full copies": ["sfd", "demo"], "shared base": ["sfd", "demo", "-x"]},
        "modes": {"full copies": mode(1.0, 0.5, 1400000), "shared base": mode(0.99, 0.4, 98765)},
    }


def shared_base_text_record(command: str) -> dict[str, Any]:
    record = shared_base_record(command)
    record["benchmark"] = "text"
    for mode in record["modes"].values():
        mode["ua_paraphrases"] = 0.97
    record["modes"]["shared base"]["adapters"] = {
        "kind": "lora",
        "rank": 16,
        "alpha": 64.0,
        "targets": ["to_q", "conv1"],
    }
    return record


def hot_path_record(command: str) -> dict[str, Any]:
    pairs = [
        {"module": 0.21, "plain": 0.2, "ratio": 1.05},  # a record from before the CPU times
        {"module": 0.19, "plain": 0.2, "ratio": 0.95, "module_cpu": 0.0693, "plain_cpu": 0.07,
         "cpu_ratio": 0.99},
    ]  # fmt: skip
    return {
        "run": run_section(command),
        "teacher_params": 12345,
        "batch_size": 8,
        "warmup": 5,
        "block": 10,
        "pairs": pairs,
        "median_ratio": 1.0,
        "total_ratio": 1.0,
        "median_module_seconds": 0.2,
        "median_plain_seconds": 0.2,
        "median_module_cpu_seconds": 0.0693,
        "median_plain_cpu_seconds": 0.07,
        "median_cpu_ratio": 0.99,
        "total_cpu_ratio": 0.995,
    }


def completion_record(command: str) -> dict[str, Any]:
    row = {
        "iteration": 10,
        "ua_ema": 0.5,
        "ua_raw": 1.0,
        "remain_accuracy_ema": 0.98,
        "judge_forget_rate_ema": 0.75,
        "judge_forget_rate_raw": 0.0,
        "drift": 0.0123,
    }
    stop = {
        "threshold": 0.05,
        "patience": 3,
        "iteration": None,
        "ua_ema": None,
        "judge_forget_rate": None,
        "remain_accuracy_ema": None,
    }
    return {
        "run": run_section(command),
        "pair": {"forget": 0, "override": 1},
        "iterations": 200,
        "every": 10,
        "stage2_seconds": 90.0,
        "curve_seconds": 20.0,
        "probe_seconds": 8.0,
        "probes": 21,
        "ema_decay": 0.99,
        "judge": {"num_samples": 64, "sigmas": [0.4, 0.8, 1.6], "draws": 2},
        "rows": [row],
        "stops": [stop],
    }


def stage2_speed_record(command: str) -> dict[str, Any]:
    module = importlib.import_module("stage2_speed")

    def row(ua: float, fid: float, at: int | None, seconds: float, iterations: int) -> dict:
        return {
            "ua": ua, "remain_accuracy": 0.985, "fid_remain": fid, "iterations": iterations,
            "remain_per_class": {"1": 0.99, "2": 0.98}, "train_seconds": seconds,
            "ua95": {"iteration": at, "seconds": None if at is None else seconds / 2},
        }  # fmt: skip

    pair = {
        "forget": 0, "override": 1, "wall_seconds": 300.0, "max_steps": 200,
        "command": ["sfd", "compare", "--output-dir", "runs/s2/pair-0-1", "--until-forgotten"],
        "ema": {"ema_decay": 0.99, "ema_power": 7.0}, "stage1_seconds": 400.0,
        "stage1_cached": True,
        "models": {
            "teacher": {"ua": 0.02, "remain_accuracy": 0.98, "fid_remain": 3.0,
                        "remain_per_class": {"1": 1.0, "2": 0.97}},
            "sfd_two_stage": row(1.0, 3.3, 20, 16.0, 40),
            "sfd_two_stage_raw": row(1.0, 3.6, 10, 16.0, 40),
            "salun": row(1.0, 10.5, 50, 36.0, 200),
        },
        "completion": {
            "stop_reason": "forgotten", "iterations": 40, "probe_seconds": 10.0,
            "last_probe": {"iteration": 40, "forget_rate": 0.02, "classifier_ua": 1.0},
            "averaged_from": 20, "average_after": 20,
        },
        "fid_curve": [{"iteration": 20, "ua": 1.0, "fid_remain": 5.25, "fid_remain_raw": 5.5}],
    }  # fmt: skip
    pair["targets"] = [{"target": n, "measured": m, "met": ok} for n, m, ok in module.targets(pair)]
    return {"run": run_section(command), "pairs": [pair]}


def pairs_record(command: str) -> dict[str, Any]:
    """A class pair that meets every target and a text pair stopped by the budget."""

    def models(ua: float, paraphrases: float | None, remain: float, neighbour: float) -> dict:
        teacher = {
            "ua": 0.01,
            "ua_paraphrases": None if paraphrases is None else 0.02,
            "remain_accuracy": 0.98,
            "neighbour_accuracy": 0.99,
            "fid_remain": 4.0,
        }
        sfd = {
            "ua": ua,
            "ua_paraphrases": paraphrases,
            "remain_accuracy": remain,
            "neighbour_accuracy": neighbour,
            "fid_remain": 5.0,
        }
        return {"teacher": teacher, "sfd": sfd}  # fmt: skip

    def row(name: str, kind: str, forget: str, override: str, **extra: Any) -> dict[str, Any]:
        return {
            "name": name, "data": "digits", "kind": kind, "forget": forget, "override": override,
            "tuned": kind == "class", "wall_seconds": 240.0, "stage2_seconds": 30.0,
            "max_steps": 200, "command": f"sfd demo --output-dir runs/p/{name}", "curve_samples": 32,
            "cached": {"teacher": True, "classifier": True, "stage1": True}, **extra,
        }  # fmt: skip

    pairs = {
        "digits-0-1": row(
            "digits-0-1", "class", "0", "1", iterations=70, neighbours="class 1 (the override)",
            models=models(1.0, None, 0.975, 0.98), override_read_as_forget=0.03,
            judge_real_override=0.0,
            agreement={"samples": 256, "judge": 0.125, "classifier": 0.25, "both": 0.0625},
            completion={"stop_reason": "forgotten", "iterations": 70,
                        "last_probe": {"iteration": 70, "forget_rate": 0.0, "classifier_ua": 0.97,
                                       "override_rate": 0.015625}},
        ),
        "text-digits-three-eight": row(
            "text-digits-three-eight", "text", "three", "eight", iterations=200,
            neighbours="five, nine", models=models(0.9, 0.8, 0.95, 0.99),
            override_read_as_forget=0.125,
            completion={"stop_reason": "stalled", "iterations": 200,
                        "last_probe": {"iteration": 200, "forget_rate": 0.25}},
        ),
    }  # fmt: skip
    return {"run": run_section(command), "pairs": pairs}


def judge_levels_record(command: str) -> dict[str, Any]:
    def reading(classifier_forget: float, judged: float, count: int, both: int) -> dict[str, Any]:
        return {
            "n": 200,
            "classifier_forget": classifier_forget,
            "classifier_override": 0.85,
            "judged_forget": judged,
            "judged_forget_per_level": {"0.4": 0.04, "0.8": 0.08, "1.6": 0.115},
            "classifier_forget_count": count,
            "classifier_forget_judged_forget": both,
        }

    case = {
        "name": "Fashion-MNIST sneaker → sandal",
        "teacher": "cache/text-teacher-abc",
        "teacher_given": "runs/p/fashion",  # a demo run folder standing for its teacher
        "family": "sd3",
        "classifier": "cache/text-classifier-def",  # a record without "classifier_given"
        "forget": "sneaker",
        "override": "sandal",
        "guidance": 1.25,
        "sets": {
            "teacher (28 steps), override prompts": reading(0.105, 0.015, 21, 3),
            "generator runs/g, forget prompts": reading(0.115, 0.015, 23, 1),
        },
    }
    return {"run": run_section(command), "cases": [case]}


def override_guidance_record(command: str) -> dict[str, Any]:
    def row(guidance: float, forget: float, override: float) -> dict[str, Any]:
        return {"guidance": guidance, "read_as_forget": forget, "read_as_override": override,
                "histogram": [0] * 10}  # fmt: skip

    case = {
        "name": "Fashion-MNIST sneaker → sandal, flow (SD3) teacher",
        "teacher": "cache/text-teacher-abc",
        "teacher_given": "runs/p/fashion",
        "classifier_given": "runs/p/fashion",
        "family": "sd3",
        "steps": 28,
        "samples": 200,
        "forget": "sneaker",
        "override": "sandal",
        "real_ceiling": 0.976,
        "rows": [row(1.25, 0.115, 0.86), row(4.5, 0.0, 1.0)],
    }
    return {"run": run_section(command), "cases": [case]}


def classifier_record(command: str) -> dict[str, Any]:
    def row(recipe: str, steps: int, accuracy: float, read: float, seconds: float | None) -> dict:
        return {
            "data": "fashion-mnist 8×8 (sfd demo)", "recipe": recipe, "max_steps": steps,
            "train_images": 9600, "heldout_images": 2400, "accuracy": accuracy,
            "folder": "cache/classifier-abc", "reused": seconds is None, "seconds": seconds,
            "pairs": [{"forget": "sneaker", "override": "sandal", "override_read_as_forget": read,
                       "forget_read_as_override": 0.05}],
        }  # fmt: skip

    rows = [
        row("800 steps (before)", 800, 0.733, 0.158, None),  # a record from before the costs
        row("demos' default", 3000, 0.817, 0.05, 61.0)
        | {"width": 32, "cpu_seconds": 50.0, "cpu_seconds_per_step": 0.02},
        row("width 16, 6000 steps", 6000, 0.85, 0.005, None)
        | {"width": 16, "cpu_seconds": None, "cpu_seconds_per_step": 0.005},
    ]
    return {"run": run_section(command), "classifiers": rows}


def stall_replay_record(command: str) -> dict[str, Any]:
    settings = {"stall_window": 15, "stall_drop": 0.1, "stall_margin": 0.02}
    runs = [
        {"name": "digits 3 → 5", "log": "runs/a/metrics.csv", "override_floor": True,
         "probes": 58, "last_iteration": 570, "last_rate": 0.0, "stalled_at": None,
         "rate_at_stall": None, "settings": settings},
        {"name": "Fashion sneaker → sandal", "log": "runs/b/metrics.csv", "override_floor": True,
         "probes": 61, "last_iteration": 600, "last_rate": 11 / 64, "stalled_at": 360,
         "rate_at_stall": 8 / 64, "settings": settings},
    ]  # fmt: skip
    return {"run": run_section(command), "runs": runs}


def memory_record(command: str) -> dict[str, Any]:
    gib = 1024**3

    def mode(name: str, weights: float, trainable: int, act: float, total: float) -> dict[str, Any]:
        return {
            "mode": name, "shards": 1, "weights": int(weights * gib), "gradients": 0,
            "optimizer": 0, "trainable_bytes": trainable,
            "no_checkpointing": {"activations": int(2 * act * gib), "total": int(2 * total * gib),
                                 "largest_batch": 0, "batch1_total": int(total * gib)},
            "checkpointing": {"activations": int(act * gib), "total": int(total * gib),
                              "largest_batch": 5, "batch1_total": int(total / 2 * gib)},
        }  # fmt: skip

    flux = {
        "family": "Flux.1-dev", "network": "FluxTransformer2DModel", "resolution": 1024,
        "latent": [128, 128], "published": "12 B", "classifier_free_guidance": False,
        "params": 11_901_408_320, "buffers": 0, "lora_targets": 266,
        "lora_params": 18_000_000, "peft_lora_params": 18_000_000, "shipped_lora_layers": 500,
        "shipped_lora_params": 30_000_000, "seconds": 1.0,
        "modes": [
            mode("full copies", 177.3, 1000 * 2**20, 50.0, 400.0),
            mode("shared base + LoRA r16", 22.2, 10 * 2**20, 40.0, 70.25),
            mode("full copies, FSDP over 8", 22.2, 125_000_000, 40.0, 90.0),
        ],
    }  # fmt: skip
    return {"run": run_section(command), "batch": 8, "families": [flux]}


# script, page, record builder, the script's command line, lines the page must hold
def text_quality_record(command: str) -> dict[str, Any]:
    """Two stage-2 variants on one cached stage 1: a constant EMA and a restarted one."""

    def model(ua: float, fid: float) -> dict[str, float]:
        return {"ua": ua, "ua_paraphrases": ua - 0.01, "remain_accuracy": 0.99,
                "neighbour_accuracy": 0.975, "fid_remain": fid}  # fmt: skip

    def row(name: str, options: str | None, decay: float, power: float | None, fid: float,
            completion: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
        return {
            "name": name, "options": options, "setup": "digits-untuned",
            "command": f"sfd demo-text --output-dir runs/q/{name}", "wall_seconds": 400.0,
            "run": run_section(f"sfd demo-text --output-dir runs/q/{name}"),
            "folder": f"runs/q/{name}", "forget": "three", "override": "eight",
            "ema_decay": decay, "ema_power": power, "generator_lr": 1e-4, "fake_lr": 2e-4,
            "teacher_guidance": 1.25, "max_steps": 200, "iterations": 200,
            "stage1_iterations": 400, "completion": completion, "stage2_seconds": 140.0,
            "phase_seconds": {"sfd": 140.0},
            "models": {"teacher": model(0.01, 4.0), "distilled_without_forgetting": model(0.02, 8.0),
                       "sfd": model(1.0, fid)},
        }  # fmt: skip

    restarted = {"stop_reason": "max_steps", "iterations": 200, "averaged_from": 60,
                 "settings": {"average_after": 150}}  # fmt: skip
    rows = [
        row("constant", None, 0.98, None, 6.0, {"stop_reason": "max_steps", "iterations": 200,
                                                 "averaged_from": None, "settings": {}}),
        row("restarted", "--average-after 150", 0.995, 7.0, 5.0, restarted),
    ]  # fmt: skip

    def knob(name: str, spec: str, ratios: list[dict[str, float]]) -> dict[str, Any]:
        trace = [{"iteration": 200 * (k + 1)} | {key: {"fid_ratio": v} for key, v in r.items()}
                 for k, r in enumerate(ratios)]  # fmt: skip
        command = f"python experiments/text_sfd_sweep.py --stage distill {spec}"
        return {"spec": spec, "command": command, "run": run_section(command), "name": name,
                "stage": "distill", "remain_accuracy": 0.995, "train_seconds": 600.0,
                "quality_trace": trace}  # fmt: skip

    knobs = [
        knob("trange", "trange:model.x=1", [{"ema": 3.0, "ema0.98": 2.5}, {"ema": 2.0, "ema0.98": 1.9}]),
        knob("power", "power:model.ema_power=7.0", [{"ema": 2.2, "ema0.99": 2.1}]),
    ]  # fmt: skip
    return {"run": run_section(command), "rows": rows, "stage1_rows": knobs}


def text_quality_stage2b_record(command: str) -> dict[str, Any]:
    """The stage-2 knobs page: one demo row, a stage-1 trace without a preset row, and two
    two_stage sweep runs with a constant EMA beside the module's own."""
    record = text_quality_record(command)
    record["rows"] = record["rows"][1:]  # no preset (pairs benchmark) row
    record["rows"][0]["stage1_folder"] = "cache/stage1-x"  # the sweeps' stage 1
    other = copy.deepcopy(record["rows"][0])  # another pair's protocol: not the sweeps' start
    other["name"] = "other-pair"
    other["models"]["teacher"]["fid_remain"] = 5.0
    other["models"]["sfd"]["fid_remain"] = 10.0
    record["rows"].append(other)
    record["page"] = "text_quality_stage2b"
    first, second = record["stage1_rows"]
    record["stage1_rows"] = [first]

    def point(ua: float, ratio: float) -> dict[str, float]:
        return {"ua": ua, "ua_paraphrases": ua, "remain_accuracy": 0.99, "fid_ratio": ratio}

    def run(name: str, spec: str, trace: list[dict[str, Any]]) -> dict[str, Any]:
        command = f"python experiments/text_sfd_sweep.py --stage two_stage {spec}"
        return {"spec": spec, "command": command, "run": run_section(command), "name": name,
                "stage": "two_stage", "stage1": "cache/stage1-x", "train_seconds": 300.0,
                "teacher_fid": 4.0,
                "quality_trace": trace}  # fmt: skip

    record["stage2_rows"] = [
        run("preset", "preset:trainer.max_steps=180", [
            {"iteration": 90, "ema": point(1.0, 2.1), "ema0.995": point(0.3, 1.4)},
            {"iteration": 180, "ema": point(1.0, 1.6), "ema0.995": point(0.995, 1.3)},
        ]),
        run("glr-half", "glr-half:model.x=5e-5", [
            {"iteration": 180, "ema": point(0.98, 1.5), "ema0.995": point(0.5, 1.2)},
        ]),
    ]  # fmt: skip
    return record


CASES = [
    (
        "adversarial_overhead",
        "adversarial_overhead",
        adversarial_overhead_record,
        "python experiments/adversarial_overhead.py --threads 1",
        [
            "| class (class embedding) | 32 + 32 (8) | 1,234 | 0.1000 | 0.1500 | 1.50× | yes "
            "| 0.0900 / 0.1620 | 1.80× | 0.0540 (75%) |",
            "| text (soft prompt) | 8 + 8 (2) | 5,678 | 0.2000 | 0.5000 | 2.50× | no | – | – | – |",
            "(steps 4, share 0.25: ⌈share·B⌉ attacked rows per iteration)",
        ],
    ),
    (
        "adversarial_settings",
        "adversarial_settings",
        adversarial_settings_record,
        "python experiments/adversarial_settings.py b:weight=1.0 --include runs/a.json",
        [
            "| seven → one | a | defaults | 60 | 100.0 % (99.0 %) | 96.7 % (99.4 %) | 8.50 "
            "| 43.8 % | 600 |",
            "| three → eight | b | weight 1.0 | 60 | 100.0 % (99.0 %) | 97.8 % (99.4 %) | 8.50 "
            "| 25.0 % | 600 |",
            "| seven → one | a | 99.0 % | – | – | 96.7 % | – | – | – | – | – | – |",
            "- three → eight, `b`: `sfd demo-text b`",
        ],
    ),
    (
        "adversarial_settings",
        "adversarial_budget",
        adversarial_budget_record,
        "python experiments/adversarial_settings.py --page adversarial_budget b:steps=8",
        [
            "# Adversarial SFD: the inner attack's budget on the text digits demo",
            "| three → eight | b | weight 1.0 | 60 | 100.0 % (99.0 %) | 97.8 % (99.4 %) | 8.50 "
            "| 25.0 % | 600 |",
        ],
    ),
    (
        "adversarial_settings",
        "flow_robust",
        flow_robust_record,
        "python experiments/adversarial_settings.py --page flow_robust --family sd3 b:weight=1.0",
        [
            "# Adversarial SFD on the flow-matching text teacher: the attack from any prompt",
            "| three → eight | b | weight 1.0 | 60 | 100.0 % | 99.0 % | 97.8 % (99.4 %) "
            "| 1.70× (8.50) | 25.0 % | 100.0 % | 600 |",
            "| seven → one | a | defaults | 60 | 100.0 % | 99.0 % | 96.7 % (99.4 %) "
            "| – (8.50) | 43.8 % | 100.0 % | 600 |",
        ],
    ),
    (
        "adversarial_settings",
        "flow_robust_long",
        flow_robust_long_record,
        "python experiments/adversarial_settings.py --page flow_robust_long --family sd3 b:",
        [
            "# Adversarial SFD on the flow-matching text teacher: longer stage 2",
            "| three → eight | b | weight 1.0 | 390 (stalled) | 100.0 % | 99.0 % | 97.8 % (99.4 %) "
            "| 1.70× (8.50) | 25.0 % | 100.0 % | 600 |",
            "| seven → one | a | defaults | 60 | 100.0 % | 99.0 % | 96.7 % (99.4 %) "
            "| – (8.50) | 43.8 % | 100.0 % | 600 |",
            "capped at 60 iterations: [attacks from any prompt](flow_robust.md)",
        ],
    ),
    (
        "adversarial_diagnosis",
        "adversarial_diagnosis",
        adversarial_diagnosis_record,
        "python experiments/adversarial_diagnosis.py --run runs/adv/p --teacher teacher",
        [
            "| inner | 25 | 0.0500 | 50.0 % | 85.0 % | 50.0 % | zero 4, two 4 |",
            "| margin | 25 | 0.0500 | 0.0 % | 85.0 % | – | zero 8 |",
            "| classifier | 25 | 0.0500 | 25.0 % | 50.0 % | – | one 6, two 2 |",
            "| inner | 0 | – | 0.0 % | 5.0 % | 0.0 % | zero 1, one 7 |",
        ],
    ),
    (
        "adversarial_diagnosis",
        "flow_adversarial_diagnosis",
        flow_adversarial_diagnosis_record,
        "python experiments/adversarial_diagnosis.py --run runs/f --teacher t --family sd3",
        [
            "# Adversarial SFD: what the inner attack finds on the flow-matching teacher",
            "| inner | 25 | 0.0500 | 50.0 % | 85.0 % | 50.0 % | zero 4, two 4 |",
        ],
    ),
    (
        "attack_reach",
        "attack_reach",
        attack_reach_record,
        "python experiments/attack_reach.py --runs runs/f/digits --steps 20",
        [
            "| `runs/f/digits` | SFD | forget: “a forget prompt” | 16 | 0.0 % | 100.0 % | 2 |",
            "| `runs/f/digits` | SFD | remain: “a remain prompt” | 16 | 0.0 % | 1.6 % | – |",
        ],
    ),
    (
        "digits_benchmark",
        "digits",
        digits_record,
        "python experiments/digits_benchmark.py --output-dir runs/demo -- --threads 1",
        [
            "| teacher (DDIM) | 50 | 1.00 % | 98.00 % | 3.00 | 40.0 |",
            "| one-step SFD (forgetting) | 1 | 99.50 % | 97.00 % | 3.30 | 5100.0 |",
            "UA >= 95 %: first reached at iteration 40 of 400 (10 % of stage 2).",
            "| SFD UA >= 99 % | 99.50 % | yes |",
            "The remain / neighbour accuracy targets are one-sided: met when SFD's accuracy is no "
            "more than the stated points below the teacher's, however far above it.",
            "| wall time < 20 min (fresh) | 7.0 min | yes |",
            "| total | 420.0 |",
            "From the cache: teacher yes, classifier yes, stage 1 no.",
            "sfd demo --output-dir runs/demo --threads 1",
        ],
    ),
    (
        "compare_benchmark",
        "compare",
        compare_record,
        "python experiments/compare_benchmark.py --output-dir runs/compare",
        [
            "# Forgetting class 3 (override 5): methods compared",
            "| teacher (DDIM) | 50 | 1.0 % | 1.0 % | 98.0 % | 3.00 | 40.0 | – | – | – |",
            "| SFD | 1 | 99.0 % | 99.0 % | 97.0 % | 3.20 | 900.0 | 300 | 120 s | it. 30 / 12 s |",
            "| ESD | 50 | 90.0 % | 90.0 % | 97.0 % | 3.20 | 900.0 | 300 | 120 s | never |",
            "| sfd reaches UA >= 95 % sooner than esd | 12 s vs never | yes |",
        ],
    ),
    (
        "text_benchmark",
        "text",
        text_record,
        "python experiments/text_benchmark.py --output-dir runs/text --only digits",
        [
            "## digits",
            "| sfd | 99.0 % | 97.0 % | 96.0 % | 95.0 % | 0.123 | 2.0 % |",
            "| ua_train_at_least_99 | 0.990 | yes |",
            "| remain_accuracy_at_most_2_points_below_teacher | -0.010 | yes |",
            "| fid_at_most_1.2x_teacher | 1.230 | no |",
            "The remain / neighbour accuracy targets are one-sided: met when SFD's accuracy is no "
            "more than the stated points below the teacher's, however far above it. Their value "
            "is SFD's accuracy minus the teacher's.",
        ],
    ),
    (
        "text_benchmark",
        "flow_text",
        flow_text_record,
        "python experiments/text_benchmark.py --family sd3 --only digits --adversarial",
        [
            "| adversarial_sfd | 99.0 % | 97.0 % | 96.0 % | 95.0 % | 0.123 | 30.0 % |",
            "| soft_attack_at_most_half_of_no_forgetting | 0.750 | no |",
            "| fid_at_most_1.5x_teacher | 1.230 | yes |",
            "`sfd demo-text --data digits --forget seven --override one --adversarial`",
            "| soft_attack_at_most_half_of_no_forgetting | 0.375 | yes |",
        ],
    ),
    (
        "attack_suite",
        "attacks",
        attacks_record,
        "python experiments/attack_suite.py --run runs/demo-text --revival 40",
        [
            "| one-step SFD | 50.0 % | 50.0 % | 50.0 % | 60 / 180 |",
            "| one-step, no forgetting | 100.0 % | 60.0 % | 40.0 % | 10.0 % | 20 |",
            "| model | UA after 0 steps | UA after 10 steps | UA after 20 steps | UA after 40 steps "
            "| first checkpoint with UA < 50 % |",
            "UA is measured only after 0, N/4, N/2 and N steps: the column is the first of these "
            "checkpoints with UA below the threshold, not the step UA fell below it",
        ],
    ),
    (
        "attack_suite",
        "attacks_adversarial",
        attacks_adversarial_record,
        "python experiments/attack_suite.py --run runs/demo-text --adversarial-run "
        "runs/demo-text-adversarial --revival 40",
        [
            "| one-step adversarial SFD | 99.5 % | 96.0 % | 96.0 % | 98.0 % | 5.600 | 4.0 % "
            "| 6.2 % | not within 40 | 150 |",
            "| soft success | discrete success | revival: first checkpoint with UA < 50 % | training s |",
            "| teacher | 0.0 % | 96.0 % | 99.0 % | 98.0 % | 4.000 | – | – | – | – |",
            "| one-step, no forgetting | 1.0 % | 96.0 % | 99.0 % | 98.0 % | 6.000 | – | – | – | – |",
            "# Adversarial SFD: attack suite and revival test (text digits)",
            "Adversarial SFD settings: {'steps': 2}.",
            "| adversarial SFD soft success ≤ 5 % | 4.0 % | yes |",
            "| adversarial SFD discrete success ≤ 5 % | 6.2 % | no |",
            "| UA (training prompts / class) ≥ 99 % | 99.5 % | yes |",
            "| remain accuracy no more than 2 points below the teacher's | -3.0 points | no |",
            "| remain FID ≤ 1.1× plain SFD's | 1.12× | no |",
            " one-step adversarial SFD: measured by `python x --only adversarial_sfd` (2026-01-01 "
            "00:00 UTC, record `runs/attacks/adv.json`, the same report folders and budgets)",
        ],
    ),
    (
        "attack_suite",
        "attacks_class",
        attacks_class_record,
        "python experiments/attack_suite.py --class-run runs/demo --revival 2",
        [
            "| one-step SFD | 25.0 % | 0.0 % | 80 |",
            "| one-step SFD | 100.0 % | 60.0 % | 40.0 % | 2 |",
            "| one-step, no forgetting | 0.0 % | 0.0 % | 0.0 % | 0 |",
        ],
    ),
    (
        "cli_startup",
        "cli_startup",
        cli_startup_record,
        "python experiments/cli_startup.py --repeats 5",
        ["| `sfd fit --help` | 8.29 | 8.09 | torch,lightning |"],
    ),
    (
        "iteration_time",
        "iteration_time",
        iteration_time_record,
        "python experiments/iteration_time.py --threads 1",
        ["| 12,345 | 8 + 8 | 5 | 3 | 0.1234 | 0.1000 | 0.2000 |"],
    ),
    (
        "shared_base_benchmark",
        "shared_base",
        shared_base_record,
        "python experiments/shared_base_benchmark.py --output-dir runs/sb --rank 16",
        [
            "| shared base | 99.00 % | 95.00 % (97.00 %) | 3.30 (3.00) | 1.10 | 0.400 | 200 | 98,765 |",
            "LoRA rank 16",
        ],
    ),
    (
        "shared_base_benchmark",
        "shared_base_text",
        shared_base_text_record,
        "python experiments/shared_base_benchmark.py --benchmark text --output-dir runs/sbt",
        [
            "| shared base | 99.00 % | 97.00 % | 95.00 % (97.00 %) | 3.30 (3.00) | 1.10 | 0.400 "
            "| 200 | 98,765 |",
            "LoRA rank 16, alpha 64, adapted layers to_q, conv1",
        ],
    ),
    (
        "hot_path",
        "hot_path",
        hot_path_record,
        "python experiments/hot_path.py --threads 1",
        [
            "Teacher 12,345 parameters, batch 8 remain + 8 forget, 10 iterations per block, "
            "2 block pairs.",
            "| wall | 0.2000 | 0.2000 | 1.000× | 1.000× | ≤ 1.0× |",
            "| CPU time of the process | 0.0693 | 0.0700 | 0.990× | 0.995× | ≤ 1.0× |",
            "| 1 | 0.2100 | 0.2000 | 1.050× | – | – | – |",
            "| 2 | 0.1900 | 0.2000 | 0.950× | 0.0693 | 0.0700 | 0.990× |",
        ],
    ),
    (
        "completion_curves",
        "completion",
        completion_record,
        "python experiments/completion_curves.py --threads 1",
        [
            "| 10 | 50.0 % | 100.0 % | 75.0 % | 0.0 % | 98.0 % | 0.0123 |",
            "| 0.05 | 3 | never | – | – | – |",
        ],
    ),
    (
        "stage2_speed",
        "stage2_speed",
        stage2_speed_record,
        "python experiments/stage2_speed.py --output-dir runs/s2 -- --threads 1",
        [
            "| 0 → 1 | SFD stage 2, EMA (shipped) | it. 20 / 8 s | 100.0 % | 98.5 % | 3.30 | 40 | 16 s |",
            "| 0 → 1 | SalUn | it. 50 / 18 s | 100.0 % | 98.5 % | 10.50 | 200 | 36 s |",
            "| 0 → 1 | 40 | forgotten | it. 20 | 100.0 % | 100.0 % | 98.0 % | 98.5 % (teacher 98.0 %) "
            "| 1.10 | 16 s | 5.0 min |",
            "| 0 → 1: EMA reaches UA ≥ 95 % sooner than SalUn | 8 s vs 18 s | yes |",
            "| 0 → 1: neighbour (class 1) accuracy no more than 2 points below the teacher's "
            "| 99.0 % vs 100.0 % | yes |",
            "sfd compare --output-dir runs/s2/pair-0-1 --until-forgotten",
            "| 0 → 1: EMA remain FID ≤ 1× the teacher's (DDIM) at the stop | 3.30 vs 3.00 | no |",
            "| 0 → 1 | 20 | 100.0 % | 5.25 | 5.50 |",
        ],
    ),
    (
        "text_quality",
        "text_quality",
        text_quality_record,
        "python experiments/text_quality.py --output-dir runs/q --threads 1",
        [
            "| constant | three → eight | (pairs benchmark) | 0.98 | 0.0001 / 0.0002 | 200 / 200, "
            "max_steps; no "
            "restart (off) | 100.0 % (99.0 %) | 99.0 % (99.0 %) | 97.5 % (97.5 %) | 4.00 "
            "| 8.00 (2.00×) | 6.00 (**1.50×**) | – | 140 s |",
            "| restarted | three → eight | `--average-after 150` | power 7, cap 0.995 | 0.0001 / "
            "0.0002 | 200 / 200, "
            "max_steps; restart at 60 | 100.0 % (99.0 %) | 99.0 % (99.0 %) | 97.5 % (97.5 %) "
            "| 4.00 | 8.00 (2.00×) | 5.00 (**1.25×**) | – | 140 s |",
            "| trange | `model.x=1` | 3.00× (0.98: 2.50×) | 2.00× (0.98: 1.90×) | 99.5 % | 600 s "
            "| 1.5–2.5 |",
            "| power | `model.ema_power=7.0` | 2.20× (0.99: 2.10×) | – | 99.5 % | 600 s | 1.5–2.5 |",
            "python experiments/text_sfd_sweep.py --stage distill power:model.ema_power=7.0",
            "ends between 1.90× and 2.20×",
            "lowest: trange at 1.90×, 0.10 below the preset's",
            "sfd demo-text --output-dir runs/q/restarted",
            "The best here is **restarted** at **1.25×**",
        ],
    ),
    (
        "text_quality",
        "text_quality_stage2b",
        text_quality_stage2b_record,
        "python experiments/text_quality.py --output-dir runs/q --page text_quality_stage2b",
        [
            "# Text demo quality: stage 2's knobs from the half-lr stage 1",
            "| preset | `trainer.max_steps=180` | shipped (power 7, cap 0.995; no restart) "
            "| 2.10× · UA 100.0 % (100.0 %) | 1.60× · UA 100.0 % (100.0 %) | 99.0 % | 300 s "
            "| 1.5–2.5 |",
            "| preset | `trainer.max_steps=180` | constant 0.995 | 1.40× · UA 30.0 % (30.0 %) "
            "| 1.30× · UA 99.5 % (99.5 %) | 99.0 % | 300 s | 1.5–2.5 |",
            "| glr-half | `model.x=5e-5` | constant 0.995 | – | 1.20× · UA 50.0 % (50.0 %) "
            "| 99.0 % | 300 s | 1.5–2.5 |",
            "python experiments/text_sfd_sweep.py --stage two_stage glr-half:model.x=5e-5",
            "per knob: preset 1.30× (constant 0.995, it. 180); glr-half never. Stage 1 starts "
            "them at 2.00× (the demo rows' stage-1 FID); the lowest of any average at any "
            "evaluation, whatever its UA, is 1.20×.",
            "trange, shipped: 3.00× (it. 200) → 2.00× (it. 400); "
            "trange, constant 0.98: 2.50× (it. 200) → 1.90× (it. 400).",
            "The best here is **restarted** at **1.25×**",
        ],
    ),
    (
        "pairs_benchmark",
        "pairs",
        pairs_record,
        "python experiments/pairs_benchmark.py --output-dir runs/p --threads 1",
        [
            "| digits | class | 0 → 1 | yes | 70 / 200 | forgotten "
            "| 100.0 % vs 100.0 % (curve, 32 samples: 97.0 %) | 100.0 % "
            "| – | 97.5 % (98.0 %) | 98.0 % (99.0 %; class 1 (the override)) | 1.25 "
            "| 1.6 % / 97.0 % | 4.0 min (stage 2 30 s) |",
            "| digits | text | three → eight | no | 200 / 200 | stalled "
            "| 75.0 % vs 90.0 % (curve, 32 samples: –) | 90.0 % "
            "| 80.0 % | 95.0 % (98.0 %) | 99.0 % (99.0 %; five, nine) | 1.25 "
            "| – / 87.5 % | 4.0 min (stage 2 30 s) |",
            "| 0 → 1 (class) | yes | yes | yes | yes | yes |",
            "| three → eight (text) | no | no | yes | no | no |",
            "| pair | UA ≥ 99 % | remain ≤ 2 points below the teacher's "
            "| neighbour ≤ 2 points below the teacher's | stopped as forgotten ",
            "sfd demo --output-dir runs/p/text-digits-three-eight",
            "pairs already measured are kept): `digits-4-9`, `digits-7-2`,",
            "| 0 → 1 (class) | 3.0 % | 0.0 % | 97.0 % | 12.5 % / 25.0 % / 6.2 % |",
        ],
    ),
    (
        "judge_levels",
        "judge_levels",
        judge_levels_record,
        "python experiments/judge_levels.py --case fashion cache/t cache/c sneaker sandal runs/g",
        [
            "## Fashion-MNIST sneaker → sandal",
            "| teacher (28 steps), override prompts | 10.5 % | 85.0 % | 1.5 % | 4.0 % | 8.0 % "
            "| 11.5 % | 3 of 21 |",
            "| generator runs/g, forget prompts | 11.5 % | 85.0 % | 1.5 % | 4.0 % | 8.0 % "
            "| 11.5 % | 1 of 23 |",
            "sd3 teacher of the run `runs/p/fashion`, classifier `cache/text-classifier-def`;",
            "The classifier's floor: it reads 10.5 % of the teacher's own sandal samples as "
            "sneaker (the judge: 1.5 %).",
            "gets UA 89.5 % from the classifier",
            "and 98.5 % from the judge: 9.0 points apart, more than the 5 points issue 24 allows",
        ],
    ),
    (
        "override_guidance",
        "override_guidance",
        override_guidance_record,
        "python experiments/override_guidance.py --case fashion runs/p/fashion runs/p/fashion "
        "sneaker sandal",
        [
            "## Fashion-MNIST sneaker → sandal, flow (SD3) teacher",
            "| guidance | read as sneaker | read as sandal "
            "| UA of a generator that draws exactly these sandals |",
            "| 1.25 | 11.5 % | 86.0 % | 88.5 % |",
            "| 4.5 | 0.0 % | 100.0 % | 100.0 % |",
            "On real sandal images the classifier's UA ceiling is 97.6 % (the run "
            "`runs/p/fashion`'s metrics.json).",
        ],
    ),
    (
        "classifier_strength",
        "classifier",
        classifier_record,
        "python experiments/classifier_strength.py --cache cache --threads 1",
        [
            "| fashion-mnist 8×8 (sfd demo) | 800 steps (before) | 32 | 800 | – | – | 73.3 % "
            "| sneaker → sandal | 15.8 % | 84.2 % | no | 5.0 % | cache |",
            "| fashion-mnist 8×8 (sfd demo) | demos' default | 32 | 3000 | 0.020 s | 1.00× "
            "| 81.7 % | sneaker → sandal | 5.0 % | 95.0 % | no | 5.0 % | 61 s (CPU 50 s) |",
            "| fashion-mnist 8×8 (sfd demo) | width 16, 6000 steps | 16 | 6000 | 0.005 s | 0.50× "
            "| 85.0 % | sneaker → sandal | 0.5 % | 99.5 % | yes | 5.0 % | cache |",
        ],
    ),
    (
        "stall_replay",
        "stall_replay",
        stall_replay_record,
        "python experiments/stall_replay.py 'digits 3 → 5=runs/a/metrics.csv'",
        [
            "| digits 3 → 5 | 58 | 570 (0 of 64) | never | yes |",
            "| Fashion sneaker → sandal | 61 | 600 (11 of 64) | 360 (8 of 64) | yes |",
            "stall_window 15, stall_drop 0.1, stall_margin 0.02",
        ],
    ),
    (
        "memory_table",
        "memory",
        memory_record,
        "python experiments/memory_table.py",
        [
            "| Flux.1-dev | shared base + LoRA r16 | 22.2 | 0.0 | 0.0 | 80.0 | 40.0 | 140.5 "
            "| 70.2 | 0 / 5 |",
            "| 266 | 18.0 M | 18.0 M | 500 | 30.0 M |",
            "| Flux.1-dev: shared-base trainable bytes ≤ 5 % of full copies' "
            "| 10 MiB vs 1,000 MiB = 1.00 % | yes |",
            "| Flux.1-dev shared base, bf16 base, checkpointing, 1024²: fits one 80 GB GPU "
            "| at 1 + 1: 35.1 GiB; largest batch that fits: 5 + 5; at the preset's 8 + 8: "
            "70.2 GiB (fits) | yes, at batch 1 + 1 to 5 + 5 |",
        ],
    ),
]


@pytest.fixture
def results_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Pages go to tmp_path/results; the scripts run from tmp_path as if it were the repo root
    (so the README's results blocks are looked for there, never in the real README)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(results_page, "RESULTS_DIR", tmp_path / "results")
    monkeypatch.setattr(results_page, "REPO", tmp_path)
    return tmp_path / "results"


def test_text_quality_writes_the_page_its_record_names(results_dir) -> None:
    """A record saved with `--page text_quality_stage2` is rewritten to that page; one without a
    page goes to the page `--page` names, and to text_quality by default."""
    import text_quality

    command = "python experiments/text_quality.py --output-dir runs/q --page text_quality_stage2"
    named = {**text_quality_record(command), "page": "text_quality_stage2"}
    results_page.save_record(named, "runs/q/named.json")
    text_quality.main(["--page-from", "runs/q/named.json"])
    assert sorted(p.name for p in results_dir.iterdir()) == ["text_quality_stage2.md"]
    assert (
        (results_dir / "text_quality_stage2.md")
        .read_text()
        .startswith("# Text demo quality: stage 2's learning rates")
    )
    plain = text_quality_record("python experiments/text_quality.py --output-dir runs/q")
    results_page.save_record(plain, "runs/q/plain.json")
    text_quality.main(["--page-from", "runs/q/plain.json"])
    assert (results_dir / "text_quality.md").is_file()


@pytest.mark.parametrize(
    ("two_stage", "reason"),
    [
        ({"stage2_completion": {"stop_reason": "stalled", "iterations": 390}}, "stalled"),
        ({"stage2_completion": None}, None),  # the rule off: the fixed cap
        (None, None),  # a run from before metrics.json recorded the rule
    ],
)
def test_a_row_says_why_stage_2_stopped(tmp_path, two_stage, reason) -> None:
    """A variant's row carries the completion rule's stop reason from its metrics.json."""
    import adversarial_settings

    def scores(ua: float) -> dict[str, Any]:
        return {
            "forget_train": {"ua": ua},
            "forget_paraphrases": {"ua": ua},
            "remain_accuracy": 0.97,
            "remain_per_class": {"0": 0.97},
            "fid_remain": 5.0,
        }

    protocol = {"phase_seconds": {"sfd": 10.0, "total": 20.0}}
    if two_stage is not None:
        protocol["two_stage"] = two_stage
    metrics = {
        "class_names": ["zero", "one", "seven"], "forget": 2, "override": 1, "iterations": 390,
        "sfd": scores(1.0), "teacher": scores(0.0), "protocol": protocol,
        "attack": {"sfd": {"soft": {"success_rate": 0.98}},
                   "distilled_without_forgetting": {"soft": {"success_rate": 1.0}}},
    }  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    row = adversarial_settings.row_of("a", [], ["sfd", "demo-text"], tmp_path)
    assert row["stop_reason"] == reason and row["iterations"] == 390
    cells = adversarial_settings.flow_table([row]).splitlines()[-1].split(" | ")
    assert cells[3] == ("390 (stalled)" if reason else "390")


@pytest.mark.parametrize(("flag", "whole_cap"), [([], False), (["--no-until-forgotten"], True)])
def test_no_until_forgotten_runs_the_whole_cap(monkeypatch, flag, whole_cap) -> None:
    """`--no-until-forgotten` reaches each variant's `sfd demo-text` command (the rule off, stage 2
    runs all of --stage2-steps); by default the rule is on and the cap only a cap."""
    import adversarial_settings

    commands = []

    def measure(args: argparse.Namespace) -> list:
        commands.append(adversarial_settings.demo_command(args, "a", []))
        raise SystemExit("measured")

    monkeypatch.setattr(adversarial_settings, "measure", measure)
    with pytest.raises(SystemExit, match="measured"):
        adversarial_settings.main(["--stage2-steps", "600", *flag, "a:"])
    (command,) = commands
    assert ("--no-until-forgotten" in command) == whole_cap
    assert command[command.index("--trainer.max_steps") + 1] == "600"


@pytest.mark.parametrize("page", ["flow_robust", "flow_robust_long"])
def test_a_flow_teachers_page_refuses_the_unet_teacher(results_dir, tmp_path, capsys, page) -> None:
    """The flow pages' rows are the flow teacher's: `--family unet` is refused in one line, exit
    status 2, before any run and with nothing written."""
    import adversarial_settings

    with pytest.raises(SystemExit) as stop:
        adversarial_settings.main(["--page", page, "--output-root", "runs/f", "a:"])
    assert stop.value.code == 2
    assert (
        f"--page {page} is the flow teacher's: --family sd3 (got unet)" in capsys.readouterr().err
    )
    assert not (tmp_path / "runs").exists() and not results_dir.exists()


@pytest.mark.parametrize(("script", "page", "build", "command", "expected"), CASES)
def test_page_from_record(results_dir, tmp_path, script, page, build, command, expected) -> None:
    readme = (REPO / "README.md").read_text()
    record = build(command)
    json_file = f"runs/{page}/record.json"
    results_page.save_record(record, json_file)
    importlib.import_module(script).main(["--page-from", json_file])
    text = (results_dir / f"{page}.md").read_text()
    lines = text.splitlines()
    written_by = WRITTEN_BY.search(text)
    assert written_by is not None
    assert written_by.groups() == (f"experiments/{script}.py", json_file)
    assert lines[lines.index("```bash") + 1] == command
    assert "| commit | abc1234 + uncommitted changes |" in lines
    assert "| load average (1, 5, 15 min) | 1.50 / 1.00 / 0.50 at the start, " in text
    for line in expected:
        assert line in lines or line in text, line
    assert str(tmp_path) not in text and "/tmp/" not in text
    assert sorted(p.name for p in results_dir.iterdir()) == [f"{page}.md"]  # no staging file left
    assert (REPO / "README.md").read_text() == readme  # the real README's blocks untouched


def test_temporary_path_not_on_the_command_line_is_refused(results_dir) -> None:
    record = iteration_time_record("python experiments/iteration_time.py")
    with pytest.raises(ValueError, match="temporary"):
        results_page.write_page(
            "x", "x", record["run"]["command"], "runs/x.json", record, {"a": "/tmp/run/teacher"}
        )
    assert not results_dir.exists() or not any(results_dir.iterdir())


def test_temporary_path_given_on_the_command_line_is_shown(results_dir) -> None:
    record = iteration_time_record("python experiments/iteration_time.py --json /tmp/r.json")
    page = results_page.write_page(
        "x", "x", record["run"]["command"], "/tmp/r.json", record, {"a": "see /tmp/r.json"}
    )
    assert "from `/tmp/r.json`" in page.read_text()


def test_command_must_name_an_experiments_script(results_dir) -> None:
    record = iteration_time_record("sfd demo")
    with pytest.raises(ValueError, match="python experiments/"):
        results_page.write_page("x", "x", "sfd demo", "r.json", record, {})


def test_record_without_run_section_is_refused(tmp_path: Path) -> None:
    (tmp_path / "old.json").write_text("[]")
    with pytest.raises(SystemExit, match="no 'run' section"):
        results_page.read_record(tmp_path / "old.json")


def test_page_from_and_no_page_exclude_each_other(results_dir) -> None:
    with pytest.raises(SystemExit):
        importlib.import_module("cli_startup").main(["--page-from", "r.json", "--no-page"])


def demo_folder(root: Path, stage1: bytes, forget: int = 7) -> Path:
    """A report folder with what `attack_suite.check_same_base` reads."""
    (root / "generator_without_forgetting").mkdir(parents=True)
    (root / "generator_without_forgetting" / "unet.safetensors").write_bytes(stage1)
    (root / "generator_without_forgetting" / "README.md").write_text(str(root))  # may differ
    (root / "metrics.json").write_text(f'{{"forget": {forget}, "override": 1}}')
    return root


@pytest.mark.parametrize(
    ("stage1", "forget", "message"), [(b"b", 7, "not the same stage 1"), (b"a", 3, "forget 7")]
)
def test_adversarial_run_of_another_base_is_refused(
    results_dir, tmp_path, capsys, stage1, forget, message
) -> None:
    plain = demo_folder(tmp_path / "plain", b"a")
    other = demo_folder(tmp_path / "adversarial", stage1, forget)
    script = importlib.import_module("attack_suite")
    with pytest.raises(SystemExit) as stop:
        script.main(["--run", str(plain), "--adversarial-run", str(other), "--json", "r.json"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--adversarial-run" in error and message in error
    assert not (tmp_path / "r.json").exists() and not results_dir.exists()
    assert script.check_same_base(plain, demo_folder(tmp_path / "same", b"a")) is None


def test_reuse_of_other_folders_or_budgets_is_refused(results_dir, tmp_path, capsys) -> None:
    plain = demo_folder(tmp_path / "plain", b"a")
    script = importlib.import_module("attack_suite")
    settings = {name: None for name in script.SAME_SETTINGS}
    settings.update(run=str(plain), tokens=16, steps=200, discrete_steps=200, restarts=3,
                    revival=40, ua_images=200)  # fmt: skip
    record = {"run": run_section("python x"), "models": {}, "settings": settings}
    results_page.save_record(record, "old.json")
    with pytest.raises(SystemExit) as stop:
        script.main(["--run", str(plain), "--reuse", "old.json", "--steps", "100"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--reuse old.json" in error and "steps=200, not 100" in error
    assert not results_dir.exists()


def test_reuse_ignores_the_adversarial_run_only_for_models_of_the_plain_run(tmp_path) -> None:
    """Plain SFD and stage 1 come from --run alone: a record of them measured without
    --adversarial-run is reusable with one; a record holding adversarial SFD is not, elsewhere."""
    script = importlib.import_module("attack_suite")
    settings = {name: None for name in script.SAME_SETTINGS}
    settings.update(run="plain", tokens=16, steps=200, revival=40)
    options = argparse.Namespace(**{**settings, "adversarial_run": "adv", "reuse": "old.json"})
    for models, refused in (({"sfd": {}}, False), ({"sfd": {}, "adversarial_sfd": {}}, True)):
        record = {"run": run_section("python x"), "models": models, "settings": settings}
        results_page.save_record(record, str(tmp_path / "old.json"))
        options.reuse = str(tmp_path / "old.json")
        reason = script.check_reuse(options)
        assert (reason == "it was measured with adversarial_run=None, not 'adv'") is refused


def test_included_pairs_show_each_table_under_its_own_command(results_dir, capsys) -> None:
    """`--pair` puts another concept pair's tables on the page, headed by its name and with
    the command that measured it; the page names the command that combined them; a class
    record is refused in one line, exit 2, nothing written."""
    script = importlib.import_module("attack_suite")
    digits = attacks_adversarial_record("python experiments/attack_suite.py --run runs/d")
    fashion = attacks_adversarial_record("python experiments/attack_suite.py --run runs/f")
    fashion.update(data="fashion-mnist", forget=7, override=5,
                   class_names=[f"c{i}" for i in range(5)] + ["sandal", "x", "sneaker"])  # fmt: skip
    fashion["models"]["adversarial_sfd"]["attacks"]["soft"] = {"success_rate": 0.375}
    results_page.save_record(digits, "runs/d.json")
    results_page.save_record(fashion, "runs/f.json")
    argv = ["--page-from", "runs/d.json", "--pair", "runs/f.json", "--page", "pairs"]
    script.main(argv)
    text = (results_dir / "pairs.md").read_text()
    assert text.startswith("# Adversarial SFD: attack suite and revival test (text digits and "
                           "fashion-mnist)\n")  # fmt: skip
    lines = text.splitlines()
    assert lines[lines.index("```bash") + 1] == "python experiments/attack_suite.py --run runs/d"
    assert "## digits 7 → 1: Targets (adversarial SFD)" in lines
    assert "## fashion-mnist sneaker → sandal: Targets (adversarial SFD)" in lines
    targets = text.split("## fashion-mnist sneaker → sandal: Targets")[1]
    assert "| adversarial SFD soft success ≤ 5 % | 37.5 % | no |" in targets
    assert (
        "- fashion-mnist sneaker → sandal: `python experiments/attack_suite.py --run runs/f`"
        in text
    )
    assert "This page: `python experiments/attack_suite.py --page-from runs/d.json --pair " in text
    assert "## What limits adversarial SFD" in lines
    results_page.save_record(attacks_class_record("python x"), "runs/c.json")
    with pytest.raises(SystemExit) as stop:
        script.main(["--page-from", "runs/d.json", "--pair", "runs/c.json", "--page", "other"])
    assert stop.value.code == 2
    assert "--pair runs/c.json" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (results_dir / "other.md").exists()


def test_an_attack_not_run_shows_as_such(results_dir) -> None:
    """A record measured with `--attacks soft` shows – for the discrete attack and its target as
    not measured, never a number or a pass."""
    script = importlib.import_module("attack_suite")
    record = attacks_adversarial_record("python experiments/attack_suite.py --attacks soft")
    for entry in record["models"].values():
        entry["attacks"].pop("discrete", None), entry["seconds"].pop("discrete", None)
    del record["budgets"]["discrete"]
    results_page.save_record(record, "runs/soft.json")
    script.main(["--page-from", "runs/soft.json"])
    lines = (results_dir / "attacks_adversarial.md").read_text().splitlines()
    assert "| adversarial SFD discrete success ≤ 5 % | not measured | – |" in lines
    assert "| one-step SFD | 50.0 % | – | 50.0 % | 60 / – |" in lines
    assert "| adversarial SFD soft success ≤ 5 % | 4.0 % | yes |" in lines


def test_a_stage_2_stopped_at_a_cap_below_the_preset_is_named(results_dir) -> None:
    """Each SFD model's stage-2 iterations and stop reason are shown; a model stopped at a cap
    below the preset's is named as such, and none is when both stopped by the completion rule."""
    script = importlib.import_module("attack_suite")
    record = attacks_adversarial_record("python experiments/attack_suite.py --run runs/f")
    results_page.save_record(record, "runs/old.json")  # written before stage 2's stop was kept
    script.main(["--page-from", "runs/old.json"])
    text = (results_dir / "attacks_adversarial.md").read_text()
    assert "stage-2 iterations" not in text.lower() and "| not within 40 | 150 |\n" in text
    summary = record["summary"]
    summary["stage2_preset_cap"] = 600
    summary["sfd"].update(stage2_iterations=250, stage2_stop="forgotten", stage2_cap=600)
    summary["adversarial_sfd"].update(stage2_iterations=150, stage2_stop="max_steps",
                                      stage2_cap=150)  # fmt: skip
    results_page.save_record(record, "runs/capped.json")
    script.main(["--page-from", "runs/capped.json"])
    text = (results_dir / "attacks_adversarial.md").read_text()
    assert "| not within 40 | 150 | 150 (max_steps) |" in text
    assert "| 20 | 100 | 250 (forgotten) |" in text
    assert "| teacher | 0.0 % | 96.0 % | 99.0 % | 98.0 % | 4.000 | – | – | – | – | – |" in text
    assert (
        " one-step adversarial SFD: stage 2 capped at 150 iterations by its configuration to "
        "shorten the run (the packaged preset's cap is 600,"
    ) in text
    summary["adversarial_sfd"].update(stage2_iterations=260, stage2_stop="forgotten",
                                      stage2_cap=600)  # fmt: skip
    results_page.save_record(record, "runs/full.json")
    script.main(["--page-from", "runs/full.json"])
    text = (results_dir / "attacks_adversarial.md").read_text()
    assert "| not within 40 | 150 | 260 (forgotten) |" in text and "capped at" not in text


@pytest.mark.parametrize(
    ("data", "family", "preset"),
    [("fashion-mnist", "unet", "sfd_text_fashion.yaml"),
     ("fashion-mnist", "sd3", "sfd_text_fashion_sd3.yaml"),
     ("digits", "unet", "sfd_text_digits.yaml"), ("digits", "sd3", "sfd_text_digits_sd3.yaml")],
)  # fmt: skip
def test_the_stage_2_cap_is_read_from_the_reports_own_preset(
    tmp_path, monkeypatch, data, family, preset
) -> None:
    """run_summary keeps a text report's stage-2 iterations, stop reason and cap; preset_cap is
    the packaged preset of its data set and teacher family: each preset is given its own cap here,
    so the cap read names the file picked."""
    script = importlib.import_module("attack_suite")
    scores = {"ua": 0.9, "remain_accuracy": 0.8}
    two_stage = {"stage2_max_steps": 150, "stage2_iterations": 150,
                 "stage2_completion": {"stop_reason": "max_steps", "iterations": 150}}  # fmt: skip
    metrics = {
        "teacher": scores, "sfd": scores, "distilled_without_forgetting": scores,
        "protocol": {"data": f"{data}/sha256-0", "two_stage": two_stage,
                     "teacher_settings": {"family": family}},
    }  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    summary = script.run_summary(tmp_path, None)
    assert summary["sfd"]["stage2_stop"] == "max_steps"
    assert (summary["sfd"]["stage2_iterations"], summary["sfd"]["stage2_cap"]) == (150, 150)
    assert "stage2_stop" not in summary["distilled_without_forgetting"]
    presets = ["sfd_text_fashion.yaml", "sfd_text_fashion_sd3.yaml", "sfd_text_digits.yaml",
               "sfd_text_digits_sd3.yaml"]  # fmt: skip
    caps = {name: 1000 + i for i, name in enumerate(presets)}
    monkeypatch.setattr(script, "max_steps_of", lambda path: caps[Path(path).name])
    assert script.preset_cap(metrics) == caps[preset]


def test_max_steps_of_reads_the_presets_trainer_cap(tmp_path) -> None:
    script = importlib.import_module("attack_suite")
    (tmp_path / "a.yaml").write_text("trainer:\n  max_steps: 123\nmodel: {}\n")
    (tmp_path / "b.yaml").write_text("model: {}\n")
    assert script.max_steps_of(tmp_path / "a.yaml") == 123
    assert script.max_steps_of(tmp_path / "b.yaml") is None


def test_the_class_stage_2_cap_is_the_stage_2_overlays(monkeypatch) -> None:
    """A class report's preset cap is the demo's stage-2 overlay's, composed after the SFD
    preset (whose own cap counts only where the overlay sets none)."""
    script = importlib.import_module("attack_suite")
    caps = {"sfd_digits.yaml": 200, "sfd_digits_stage2.yaml": 700}
    monkeypatch.setattr(script, "max_steps_of", lambda path: caps[Path(path).name])
    assert script.class_preset_cap() == 700
    caps["sfd_digits_stage2.yaml"] = None
    assert script.class_preset_cap() == 200


def test_a_stage_2_without_the_completion_rule_stopped_at_its_cap(results_dir) -> None:
    """A report run without the completion rule (its record null beside the cap) stopped at
    max_steps: the cell says so, and a cap below the preset's is named."""
    script = importlib.import_module("attack_suite")
    record = attacks_adversarial_record("python experiments/attack_suite.py --run runs/f")
    record["summary"]["stage2_preset_cap"] = 600
    for key in ("sfd", "adversarial_sfd"):
        record["summary"][key].update(stage2_iterations=150, stage2_stop="max_steps",
                                      stage2_cap=150)  # fmt: skip
    results_page.save_record(record, "runs/r.json")
    script.main(["--page-from", "runs/r.json"])
    text = (results_dir / "attacks_adversarial.md").read_text()
    assert "150 (not recorded)" not in text and "150 (max_steps)" in text
    assert "stage 2 capped at 150 iterations" in text


def test_run_summary_reads_no_completion_rule_as_a_stop_at_the_cap(tmp_path) -> None:
    script = importlib.import_module("attack_suite")
    scores = {"ua": 0.9, "remain_accuracy": 0.8}
    two_stage = {"stage2_max_steps": 150, "stage2_iterations": 150, "stage2_completion": None}
    metrics = {"teacher": scores, "sfd": scores, "distilled_without_forgetting": scores,
               "protocol": {"two_stage": two_stage}}  # fmt: skip
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert script.run_summary(tmp_path, None)["sfd"]["stage2_stop"] == "max_steps"
    del two_stage["stage2_max_steps"]  # a record before the cap was kept: not known
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    assert script.run_summary(tmp_path, None)["sfd"]["stage2_stop"] is None


def test_a_reused_model_names_the_command_that_measured_it() -> None:
    """A record that reused a record that itself reused names each model under its own command."""
    script = importlib.import_module("attack_suite")
    first = {"record": "a.json", "command": "python a", "date": "d1", "models": ["adversarial_sfd"]}
    second = {"record": "b.json", "command": "python b", "date": "d2",
              "models": ["sfd", "adversarial_sfd"], "reused": first}  # fmt: skip
    note = script.reuse_note({"reused": second})
    assert " one-step SFD: measured by `python b` (d2," in note
    assert " one-step adversarial SFD: measured by `python a` (d1," in note
    assert note.count("measured by") == 2


def test_a_model_reused_through_a_chain_names_its_command_from_the_kept_record(
    tmp_path: Path, monkeypatch
) -> None:
    """A kept record names each model under the command that measured it, whatever the files
    of the earlier records now hold: C reused B, which reused A; A's file has since been
    replaced by another measurement that itself reused a model (the page is rebuilt elsewhere,
    from the kept records)."""
    script = importlib.import_module("attack_suite")
    monkeypatch.chdir(tmp_path)
    a = {"record": "a.json", "command": "python a", "date": "d1", "models": ["adversarial_sfd"],
         "reused": None}  # A measured its model itself  # fmt: skip
    b = {"record": "b.json", "command": "python b", "date": "d2",
         "models": ["sfd", "adversarial_sfd"], "reused": a}  # fmt: skip
    later = {"run": run_section("python z-later"), "models": {"adversarial_sfd": {}},
             "reused": {"record": "z.json", "command": "python z", "date": "d0",
                        "models": ["adversarial_sfd"], "reused": None}}  # fmt: skip
    results_page.save_record(later, "a.json")  # a.json now holds another measurement
    # B as kept: it says A reused nothing, so a.json is not read again
    kept_b = {"run": {"command": "python b", "date": "d2"}, "models": {"sfd": {}, "adversarial_sfd": {}},
              "reused": {**a, "reused": None}}  # fmt: skip
    note = script.reuse_note({**kept_b, "reused": a})
    assert (
        note.count("measured by") == 1
        and " one-step adversarial SFD: measured by `python a`" in note
    )
    # C as written now: the command per model is in the record itself
    c_run = {"command": "python c", "date": "d3"}
    c = {"run": c_run, "models": {"sfd": {}, "adversarial_sfd": {}, "distilled_without_forgetting": {}},
         "reused": b,
         "measured_by": {"sfd": {"command": "python b", "date": "d2", "record": "b.json"},
                         "adversarial_sfd": {"command": "python a", "date": "d1", "record": "a.json"},
                         "distilled_without_forgetting": {**c_run, "record": "c.json"}}}  # fmt: skip
    assert script.measurers(c) == c["measured_by"]
    note = script.reuse_note(c)
    assert " one-step SFD: measured by `python b` (d2, record `b.json`" in note
    assert " one-step adversarial SFD: measured by `python a` (d1, record `a.json`" in note
    assert "python z" not in note and "python c" not in note and note.count("measured by") == 2


def test_run_context_is_taken_after_measuring(monkeypatch, tmp_path: Path) -> None:
    """The page's "at the end" load is read after the measurement, "at the start" before it."""
    measured: list[bool] = []
    monkeypatch.setattr(
        results_page.os, "getloadavg", lambda: (9.0, 8.0, 7.0) if measured else (1.0, 2.0, 3.0)
    )

    def measure() -> dict[str, Any]:
        measured.append(True)
        return {"value": 3}

    args = argparse.Namespace(
        page_from=None, threads=None, json=str(tmp_path / "r.json"), no_page=True
    )
    results_page.measure_and_write(args, [], "experiments/x.py", measure, str, None)
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["value"] == 3
    assert record["run"]["machine"]["load_average_start"] == [1.0, 2.0, 3.0]
    assert record["run"]["machine"]["load_average_end"] == [9.0, 8.0, 7.0]


def test_markdown_table() -> None:
    table = results_page.markdown_table(("a", "b"), [(1, None), ("x|y", 2.5)])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | – |", "| x\\|y | 2.5 |"]


def test_command_line_is_what_the_user_types() -> None:
    command = results_page.command_line(
        "/anywhere/experiments/compare_benchmark.py",
        ["--output-dir", "a b", "--", "--threads", "1"],
    )
    assert command == "python experiments/compare_benchmark.py --output-dir 'a b' -- --threads 1"


def test_every_results_page_names_an_existing_script() -> None:
    pages = sorted(p for p in (REPO / "docs" / "results").glob("*.md") if p.name != "index.md")
    assert pages, "docs/results/ holds no pages"
    for page in pages:
        written_by = WRITTEN_BY.search(page.read_text())
        assert written_by is not None, f"{page.name} has no 'Written by ...' line"
        assert (REPO / written_by[1]).is_file(), f"{page.name} names {written_by[1]}, missing"


def test_marked_block_is_replaced_and_the_rest_kept(tmp_path: Path) -> None:
    results_page = importlib.import_module("results_page")
    page = tmp_path / "README.md"
    page.write_text("intro\n<!-- results:digits -->\nold\n<!-- /results:digits -->\nend\n")
    assert results_page.fill_marked_block("digits", "| a |\n|---|", page)
    assert page.read_text() == (
        "intro\n<!-- results:digits -->\n| a |\n|---|\n<!-- /results:digits -->\nend\n"
    )
    assert not results_page.fill_marked_block("compare", "x", page)  # no such block: unchanged
    assert not results_page.fill_marked_block("digits", "x", tmp_path / "missing.md")  # no page
    assert "| a |" in page.read_text()


def test_readme_holds_the_digits_block() -> None:
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- results:digits -->", 1)[1].split("<!-- /results:digits -->", 1)[0]
    assert "python experiments/digits_benchmark.py" in block and "| model |" in block


def sweep_line(command: str, name: str, fid: float, trace: list[dict[str, Any]]) -> str:
    """One --results line of the SFD sweeps (text_sfd_sweep.py / digits_sfd_sweep.py)."""
    row = {
        "spec": f"{name}:trainer.max_steps=400",
        "command": command,
        "run": run_section(command),
        "name": name,
        "stage": "distill",
        "stage1": None,
        "settings": {"iterations": 400, "model": {"ema_decay": 0.995}},
        "ua": 0.5,
        "remain_accuracy": 0.985,
        "fid_remain": fid,
        "teacher_fid": 4.0,
        "train_seconds": 123.4,
        "quality_trace": trace,
    }
    return json.dumps(row) + "\n"


def test_sweep_page_from_results_lines(results_dir) -> None:
    point = {"ema": {"fid_remain": 6.0}, "ema0.98": {"fid_remain": 8.0}}
    text_command = "python experiments/text_sfd_sweep.py --demo runs/d a:trainer.max_steps=400"
    digits_command = "python experiments/digits_sfd_sweep.py --teacher t b:trainer.max_steps=400"
    Path("runs").mkdir()
    Path("runs/text.jsonl").write_text(
        sweep_line(text_command, "a", 5.0, [{"iteration": 200, **point}, {"iteration": 400}])
    )
    Path("runs/digits.jsonl").write_text(sweep_line(digits_command, "b", 2.0, []))
    importlib.import_module("text_sfd_sweep").main(
        ["--page-from", "runs/text.jsonl", "runs/digits.jsonl"]
    )
    text = (results_dir / "one_step_quality.md").read_text()
    lines = text.splitlines()
    assert WRITTEN_BY.search(text).groups() == (
        "experiments/text_sfd_sweep.py",
        "runs/text.jsonl, runs/digits.jsonl",
    )
    page_command = (
        "python experiments/text_sfd_sweep.py --page-from runs/text.jsonl runs/digits.jsonl"
    )
    assert lines[lines.index("```bash") + 1] == page_command
    assert text_command in lines and digits_command in lines  # each run under its own command
    assert (
        "| a | `trainer.max_steps=400` | 400 | 50.0 % | 98.5 % | 5.00 | 1.25 | 123 | 1.5–2.5 |"
        in lines
    )
    assert (
        "| b | `trainer.max_steps=400` | 400 | 50.0 % | 98.5 % | 2.00 | 0.50 | 123 | 1.5–2.5 |"
        in lines
    )
    assert (
        "| a | 200 | 0.995 | 1.50 | 2.00 |" in lines
    )  # FID / teacher's FID, shipped and extra EMA
    assert "| a | 400 | 0.995 | – | – |" in lines


def test_adversarial_settings_reach_the_adversarial_run_only() -> None:
    module = importlib.import_module("text_benchmark")
    settings = ["steps=4", "weight=2", "trainer.max_steps=200", "baseline-iterations=400"]
    assert module.adversarial_options(settings) == [
        "--adversarial", "--model.adversarial.steps", "4", "--model.adversarial.weight", "2",
        "--trainer.max_steps", "200", "--baseline-iterations", "400",
    ]  # fmt: skip
    with pytest.raises(SystemExit):
        module.main(["--adversarial-set", "steps", "--no-page"])


def test_merged_set_ups_show_under_the_command_that_measured_them(results_dir) -> None:
    """`--merge`: a set-up measured by another command joins the page under that command; a
    record of another family, or a set-up already on the page, is refused."""
    module = importlib.import_module("text_benchmark")
    first = flow_text_record("python experiments/text_benchmark.py --family sd3 --only digits")
    second = flow_text_record("python experiments/text_benchmark.py --family sd3 --only fashion")
    second["run"]["date"] = "2026-01-03 04:05 UTC"
    second["setups"][0]["setup"] = "fashion"
    results_page.save_record(first, "runs/a.json")
    results_page.save_record(second, "runs/b.json")
    module.main(["--page-from", "runs/a.json", "--merge", "runs/b.json"])
    text = (results_dir / "flow_text.md").read_text()
    assert "## digits" in text and "## fashion" in text
    fashion = text[text.index("## fashion") :]
    assert fashion.startswith(
        "## fashion\n\nMeasured by `python experiments/text_benchmark.py --family sd3 --only "
        "fashion` (2026-01-03 04:05 UTC, commit abc1234 + uncommitted changes, load "
        "[1.5, 1.0, 0.5] -> [2.5, 1.25, 0.75]; record `runs/b.json`)."
    )
    assert "Measured by" not in text[: text.index("## fashion")]  # this run's own set-up
    with pytest.raises(SystemExit, match="already on the page"):
        module.main(["--page-from", "runs/a.json", "--merge", "runs/a.json"])
    results_page.save_record(text_record("python experiments/text_benchmark.py"), "runs/c.json")
    with pytest.raises(SystemExit, match="--family unet record"):
        module.main(["--page-from", "runs/a.json", "--merge", "runs/c.json"])
    with pytest.raises(SystemExit, match="already on the page"):  # before anything runs
        module.main(["--family", "sd3", "--only", "digits", "--merge", "runs/a.json"])


def test_a_set_up_measured_again_replaces_its_section_in_place(results_dir) -> None:
    """`--replace`: a newer record's set-up takes the place of the same set-up on the page (a
    merged one too), under the command that measured it; one not on the page is refused."""
    module = importlib.import_module("text_benchmark")
    first = flow_text_record("python experiments/text_benchmark.py --family sd3 --only digits")
    fashion = flow_text_record("python experiments/text_benchmark.py --family sd3 --only fashion")
    fashion["setups"][0]["setup"] = "fashion"
    again = copy.deepcopy(fashion)
    again["run"]["command"] += " --again"
    again["run"]["date"] = "2026-01-03 04:05 UTC"
    again["setups"][0]["models"]["sfd"]["ua"] = 0.5
    results_page.save_record(fashion, "runs/b.json")
    first["setups"] += module.merged_setups(first, ["runs/b.json"])  # as a run with --merge
    first["setups"].append({**first["setups"][0], "setup": "digits-untuned"})
    results_page.save_record(first, "runs/a.json")
    results_page.save_record(again, "runs/c.json")
    module.main(["--page-from", "runs/a.json", "--replace", "runs/c.json"])
    text = (results_dir / "flow_text.md").read_text()
    assert text.index("## digits\n") < text.index("## fashion") < text.index("## digits-untuned")
    fashion_section = text[text.index("## fashion") : text.index("## digits-untuned")]
    assert "--only fashion --again` (2026-01-03 04:05 UTC" in fashion_section
    assert "record `runs/c.json`" in fashion_section and "runs/b.json" not in text
    assert "| sfd | 50.0 % |" in fashion_section
    assert "| sfd | 99.0 % |" in text[: text.index("## fashion")]  # the others as they were
    with pytest.raises(SystemExit, match="'digits' is not on the page; --merge adds it"):
        module.main(["--page-from", "runs/c.json", "--replace", "runs/a.json"])
    with pytest.raises(SystemExit):
        module.main(["--replace", "runs/c.json", "--no-page"])


def test_flow_page_opens_with_every_targets_verdict_and_what_was_tried(results_dir) -> None:
    """The flow page's first section: each set-up's targets per SFD model (tuned on or not),
    checked on the recorded numbers, the missed ones listed with the pages of what was tried; the
    command that put a merged page together is on it. The UNet page has no such section."""
    module = importlib.import_module("text_benchmark")
    digits = flow_text_record("python experiments/text_benchmark.py --family sd3 --only digits")
    untuned = flow_text_record("python experiments/text_benchmark.py --family sd3 --only u")
    untuned["setups"][0]["setup"] = "digits-untuned"
    del untuned["setups"][0]["adversarial"]
    del untuned["setups"][0]["models"]["adversarial_sfd"]
    untuned["setups"][0]["models"]["sfd"]["ua"] = 0.88
    untuned["setups"][0]["models"]["sfd"]["fid_remain"] = 0.2  # 2x the teacher's
    results_page.save_record(digits, "runs/a.json")
    results_page.save_record(untuned, "runs/b.json")
    module.main(["--page-from", "runs/a.json", "--merge", "runs/b.json"])
    text = (results_dir / "flow_text.md").read_text()
    summary = text[text.index("## Issue 20's targets") : text.index("## digits\n")]
    assert (
        "This page was put together by `python experiments/text_benchmark.py --page-from "
        "runs/a.json --merge runs/b.json`" in summary
    )
    assert "| set-up | tuned on | model | ua_train_at_least_99 | ua_paraphrases_at_least_95 |" in (
        summary
    )
    rows = [line for line in summary.splitlines() if line.startswith("| digits")]
    assert rows[0].startswith("| digits | yes | sfd | yes (0.990) | yes (0.970) |")
    assert rows[0].endswith("| yes (1.230) | **no** (0.750) |")  # FID 1.23x; attack 0.6 / 0.8
    assert rows[1].startswith("| digits | yes | adversarial_sfd | yes (0.990) |")
    assert rows[1].endswith("| yes (0.375) |")
    assert rows[2].startswith("| digits-untuned | no | sfd | **no** (0.880) |")
    assert rows[2].endswith("| **no** (2.000) | **no** (0.750) |")
    missed = summary[summary.index("Missed:") :]
    assert "- soft_attack_at_most_half_of_no_forgetting: digits (sfd), digits-untuned (sfd). " in (
        missed
    )
    assert "(flow_robust.md)" in missed and "(flow_adversarial_diagnosis.md)" in missed
    assert "- ua_train_at_least_99: digits-untuned (sfd). Tried:" in missed
    assert "(judge_levels.md)" in missed and "(classifier.md)" in missed
    assert "- fid_at_most_1.5x_teacher: digits-untuned (sfd). Tried:" in missed
    module.main(["--page-from", "runs/a.json"])  # the record's own page: its own command
    assert "put together" not in (results_dir / "flow_text.md").read_text()
    results_page.save_record(text_record("python experiments/text_benchmark.py"), "runs/c.json")
    module.main(["--page-from", "runs/c.json"])
    assert "Issue 20's targets" not in (results_dir / "text.md").read_text()


def test_a_fresh_run_is_shown_with_issue_20s_wall_time_target(results_dir) -> None:
    """`--fresh`: a run with fresh caches joins the flow page in a section of its own under the
    command and commit that measured it, its wall time judged against ≤ 25 minutes in the
    targets summary (25 minutes exactly met, 25.1 missed); a run that reused a cache is refused."""
    module = importlib.import_module("text_benchmark")
    from sfd.apps.harness.targets import fresh_wall_target

    name = "digits_fresh_wall_at_most_25_minutes"
    assert fresh_wall_target("digits", 1500.0) == {name: {"value": 25.0, "met": True}}
    assert not fresh_wall_target("digits", 1506.0)[name]["met"]
    assert fresh_wall_target("fashion", 60.0) == {}
    page = flow_text_record("python experiments/text_benchmark.py --family sd3 --only digits")
    fresh = flow_text_record("python experiments/text_benchmark.py --family sd3 --fresh-run")
    fresh["run"]["commit"] = {"hash": "d2eca7a", "dirty": False}
    del fresh["setups"][0]["adversarial"], fresh["setups"][0]["models"]["adversarial_sfd"]
    fresh["setups"][0].update(
        teacher_cached=False, classifier_cached=False, stage1_cached=False, wall_seconds=830.9
    )
    results_page.save_record(page, "runs/a.json")
    results_page.save_record(fresh, "runs/fresh.json")
    module.main(["--page-from", "runs/a.json", "--fresh", "runs/fresh.json"])
    text = (results_dir / "flow_text.md").read_text()
    summary = text[text.index("## Issue 20's targets") : text.index("## digits\n")]
    header = next(line for line in summary.splitlines() if line.startswith("| set-up"))
    assert header.endswith(f"| {name} |")
    rows = [line for line in summary.splitlines() if line.startswith("| digits")]
    assert rows[0].endswith("| – |") and rows[1].endswith("| – |")  # not fresh: not judged
    assert rows[2].startswith("| digits, fresh caches | yes | sfd |")
    assert rows[2].endswith("| yes (13.848) |")
    section = text[text.index("## digits, fresh caches") :]
    assert "--fresh-run` (" in section and "commit d2eca7a," in section
    assert f"{name} 13.8 min: met." in section
    fresh["setups"][0]["stage1_cached"] = True
    results_page.save_record(fresh, "runs/cached.json")
    with pytest.raises(SystemExit, match="reused the cached stage1"):
        module.main(["--page-from", "runs/a.json", "--fresh", "runs/cached.json"])
    with pytest.raises(SystemExit):
        module.main(["--fresh", "runs/fresh.json", "--no-page"])


def test_run_context_keeps_the_commit_taken_before_measuring() -> None:
    """A long run records the commit its subprocesses started with, not the one at its end."""
    started = {"hash": "0123abc", "dirty": False}
    context = results_page.run_context("python experiments/x.py", [0.0, 0.0, 0.0], 1, started)
    assert context["commit"] == started
    now = results_page.run_context("python experiments/x.py", [0.0, 0.0, 0.0], 1)["commit"]
    assert now == results_page.git_commit() and now != started


def test_shared_base_stage1_page_from_results_lines(results_dir) -> None:
    command = "python experiments/shared_base_stage1.py --teacher t --classifier c default:"
    fid = {"remain_accuracy": 0.99, "fid_remain": 8.0}
    row = {
        "name": "default",
        "spec": "default:",
        "command": command,
        "run": run_section(command),
        "iterations": 600,
        "teacher_fid": 4.0,
        "train_seconds": 700.0,
        "points": [
            {"iteration": 200, "raw": fid, "ema": fid, "merged_ema": fid, "low_rank_ema": fid},
            {"iteration": 400, "raw": fid, "ema": fid},
        ],
    }
    Path("runs").mkdir()
    Path("runs/stage1.jsonl").write_text(json.dumps(row) + "\n")
    importlib.import_module("shared_base_stage1").main(["--page-from", "runs/stage1.jsonl"])
    text = (results_dir / "shared_base_stage1.md").read_text()
    lines = text.splitlines()
    assert WRITTEN_BY.search(text).groups() == (
        "experiments/shared_base_stage1.py",
        "runs/stage1.jsonl",
    )
    assert command in lines  # the run under its own command
    assert (
        "| default | `default:` | 200 | 2.00 (99.0 %) | 2.00 (99.0 %) | 2.00 (99.0 %) | 2.00 (99.0 %) |"
        in lines
    )
    assert "| default | `default:` | 400 | 2.00 (99.0 %) | 2.00 (99.0 %) | – | – |" in lines


def test_shared_base_stage2_page_from_results_lines(results_dir) -> None:
    command = (
        "python experiments/shared_base_stage2.py --output-dir runs/sb2 baseline: "
        "alpha-8r:start.alpha=128"
    )
    rows = []
    for name, spec, fit, start, ratio in (
        ("baseline", "baseline:", [], {}, 1.5),
        ("alpha-8r", "alpha-8r:start.alpha=128", [], {"alpha": 128.0}, 1.25),
    ):
        rows.append(
            {
                "name": name,
                "spec": spec,
                "run": run_section(command),
                "demo_command": ["sfd", "demo", "--output-dir", f"runs/sb2/{name}"],
                "stage2_fit_options": fit,
                "start": start,
                "reused": False,
                "ua": 1.0,
                "remain_accuracy": 0.9611,
                "fid_ratio": ratio,
                "stage1_fid_ratio": 1.1,
                "iterations": 300,
                "seconds_per_iteration": 2.5,
            }
        )
    Path("runs").mkdir()
    Path("runs/stage2.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    importlib.import_module("shared_base_stage2").main(["--page-from", "runs/stage2.jsonl"])
    text = (results_dir / "shared_base_stage2.md").read_text()
    lines = text.splitlines()
    assert WRITTEN_BY.search(text).groups() == (
        "experiments/shared_base_stage2.py",
        "runs/stage2.jsonl",
    )
    for row in (
        "| baseline | `as the demo` | 1.10 | **1.50** | 100.0 % | 96.11 % | 300 | 2.50 | 1.5 |",
        "| alpha-8r | `start.alpha=128` | 1.10 | **1.25** | 100.0 % | 96.11 % | 300 | 2.50 | 1.5 |",
    ):
        assert row in lines
    assert command in lines  # each run under its own command
    assert any("rewritten by {'alpha': 128.0}" in line for line in lines)


def test_plain_from_measures_only_the_adversarial_run(results_dir, monkeypatch) -> None:
    """`--plain-from`: the plain rows come from the earlier record, only the adversarial run is
    measured (with the given settings); a record of other demo-text options is refused before
    anything runs."""
    module = importlib.import_module("text_benchmark")
    earlier = flow_text_record("python experiments/text_benchmark.py --family sd3 --adversarial")
    setup = earlier["setups"][0]
    options = ["--family", "sd3", "--threads", "1"]
    setup["command"] = " ".join(module.command("digits", Path("runs/old"), options)[1:]).replace(
        "-m sfd.cli", "sfd"
    )
    results_page.save_record(earlier, "runs/old.json")
    calls = []

    def fake_run(name, output, extra, family="unet", folder=None):
        calls.append((name, output, extra, family, folder))
        models = {"sfd": {**setup["models"]["sfd"], "attack_success": 0.25}}
        return {**{k: v for k, v in setup.items() if k != "adversarial"}, "models": models,
                "command": "sfd demo-text --adversarial --model.adversarial.steps 4",
                "phase_cpu_seconds": None}  # fmt: skip

    monkeypatch.setattr(module, "run", fake_run)
    monkeypatch.setattr(module, "git_commit", lambda: {"hash": "abc1234", "dirty": False})
    argv = ["--output-dir", "runs/new", "--family", "sd3", "--only", "digits",
            "--adversarial-set", "steps=4", "--plain-from", "runs/old.json", "--no-page",
            "--", "--threads", "1"]  # fmt: skip
    module.main(argv)
    adversarial = ["--threads", "1", "--adversarial", "--model.adversarial.steps", "4"]
    assert calls == [("digits", Path("runs/new"), adversarial, "sd3", "digits-adversarial")]
    new = json.loads(Path("runs/new/benchmark.json").read_text())["setups"][0]
    assert new["plain_from"] == "runs/old.json" and new["command"] == setup["command"]
    assert new["models"]["sfd"]["attack_success"] == 0.6  # the earlier plain SFD
    assert new["models"]["adversarial_sfd"]["attack_success"] == 0.25  # measured now
    assert new["adversarial"]["targets"]["soft_attack_at_most_half_of_no_forgetting"]["met"]
    page = module.markdown([new])
    assert "Plain run (teacher, no-forgetting and SFD rows) from `runs/old.json`" in page
    for bad in (["--", "--threads", "2"], ["--only", "fashion"]):
        calls.clear()
        with pytest.raises(SystemExit, match="--plain-from runs/old.json"):
            module.main([*argv[:-3], *bad] if bad[0] == "--" else [*argv, *bad])
        assert calls == []
    with pytest.raises(SystemExit):  # no adversarial run to measure
        module.main(["--plain-from", "runs/old.json", "--no-page"])


DIGIT_NAMES = "zero one two three four five six seven eight nine".split()


def finished_demo_metrics(data: str, forget: int, family: str) -> dict[str, Any]:
    """What `text_benchmark.setup_result` reads of a finished `sfd demo-text` run."""
    scores = {"forget_train": {"ua": 1.0, "as_override": 0.9}, "forget_paraphrases": {"ua": 0.99},
              "remain_accuracy": 0.98, "neighbour_accuracy": 0.97, "fid_remain": 5.0}  # fmt: skip
    keys = ("teacher", "distilled_without_forgetting", "sfd")
    return {
        "forget": forget, "override": 1, "class_names": DIGIT_NAMES,
        "iterations": 220, "targets": {},
        "protocol": {
            "data": data, "teacher_settings": {"family": family},
            "phase_seconds": {"total": 1993.4}, "phase_cpu_seconds": {"total": 234.8},
            "environment": {"load_average_1_5_15_min": [7.8, 8.4, 8.0], "torch_threads": 1},
            "teacher": {"reused_from_cache": True}, "classifier": {"reused_from_cache": True},
            "two_stage": {"stage1_reused_from_cache": True},
        },
        **{key: scores for key in keys},
        "attack": {key: {"soft": {"success_rate": 1.0}} for key in keys},
    }  # fmt: skip


def test_plain_from_a_stopped_benchmark_folder(tmp_path) -> None:
    """`--plain-from DIR`: the finished plain run of a benchmark stopped before its record, under
    the command the benchmark runs into that folder, with the run's own phase totals; a folder of
    another set-up or family is refused."""
    module = importlib.import_module("text_benchmark")
    folder = tmp_path / "old" / "digits"
    folder.mkdir(parents=True)
    (folder / "metrics.json").write_text(json.dumps(finished_demo_metrics("digits", 7, "sd3")))
    extra = ["--threads", "1"]
    plain = module.plain_run(str(tmp_path / "old"), "digits", tmp_path / "new", extra, "sd3")
    assert plain["plain_from"] == str(tmp_path / "old")
    assert plain["command"] == " ".join(
        module.command("digits", tmp_path / "old", ["--family", "sd3", *extra])[1:]
    ).replace("-m sfd.cli", "sfd")
    assert (plain["wall_seconds"], plain["cpu_seconds"]) == (1993.4, 234.8)
    assert plain["models"]["sfd"]["attack_success"] == 1.0
    assert not plain["targets"]["soft_attack_at_most_half_of_no_forgetting"]["met"]
    with pytest.raises(SystemExit, match="not set-up 'digits'"):
        module.plain_run(str(tmp_path / "old"), "digits", tmp_path / "new", extra, "unet")
    with pytest.raises(SystemExit, match="no finished run"):
        module.plain_run(str(tmp_path / "old"), "fashion", tmp_path / "new", extra, "sd3")


def test_attack_reach_counts_the_updates_before_the_loss_falls_below_ln_2() -> None:
    """`losses[i]` is the attack's loss before its update i: a start already below ln 2 took 0
    updates, a loss first below it at index 3 took 3, one never below it None."""
    from attack_reach import steps_below

    assert steps_below([0.5, 0.4]) == 0
    assert steps_below([3.0, 2.0, 1.0, 0.6, 0.2]) == 3
    assert steps_below([3.0, 2.0]) is None


def test_pairs_page_names_a_pair_whose_record_was_lost(results_dir, monkeypatch) -> None:
    """A pair missing from the record whose last record was lost is named with the commit whose
    page shows its row, not dropped silently; other missing pairs get no such note."""
    pairs_benchmark = importlib.import_module("pairs_benchmark")
    monkeypatch.setattr(pairs_benchmark, "LOST_RECORDS", {"digits-4-9": "abc9876"})
    command = "python experiments/pairs_benchmark.py --output-dir runs/p --threads 1"
    results_page.save_record(pairs_record(command), "runs/p/pairs.json")
    pairs_benchmark.main(["--page-from", "runs/p/pairs.json"])
    text = (results_dir / "pairs.md").read_text()
    assert (
        "`digits-4-9` (its last run's record was lost; its row is on this page as of commit "
        "abc9876: `git show abc9876:docs/results/pairs.md`), `digits-7-2`," in text
    )


def test_attack_judge_reads_eval_text_and_multiplies_agreement(results_dir, tmp_path) -> None:
    """attack_judge's row from an `sfd eval-text --attack-objective both` metrics.json: the
    white-box and transfer entries side by side, and ASR × agreement as what both classifiers
    read."""
    script = importlib.import_module("attack_judge")

    def entry(rate: float, agreement: float | None, second: float, objective: str) -> dict:
        return {"success_rate": rate, "success_rate_without_attack": 0.0, "agreement": agreement,
                "second_classifier_success_rate": second, "budget": {"steps": 200},
                "objective": objective, "asr_definition": "share judged",
                "agreement_definition": "share also read"}  # fmt: skip

    folder = tmp_path / "runs" / "SFD"
    folder.mkdir(parents=True)
    metrics = {
        "model": "runs/plain/generator", "model_sha256": "0123",
        "evaluation": {"forget_train": {"ua": 1.0}},
        "protocol": {"attacker_classifier": {"folder": "c", "heldout_accuracy": 0.99,
                                             "recipe": {"seed": 1}}},
        "attacks": {"soft": entry(0.5, 0.25, 0.2, "white"),
                    "soft-transfer": entry(0.1, None, 0.9, "transfer"),
                    "paraphrases": {"success_rate": 0.0}},
    }  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(metrics))
    row = script.row_of("SFD", ["sfd", "eval-text", "x"], folder / "metrics.json")
    record = {"run": run_section("python experiments/attack_judge.py SFD=x"), "rows": [row]}
    results_page.save_record(record, "runs/judge.json")
    script.main(["--page-from", "runs/judge.json"])
    text = (results_dir / "attack_judge.md").read_text()
    assert "| SFD | soft | 50.0 % | 25.0 % | 12.5 % | 10.0 % | 90.0 % | 0.0 % |" in text
    assert "- SFD (`runs/plain/generator`, sha256 0123): `sfd eval-text x`" in text
    assert "- **soft**: budget steps 200.\n  White-box objective: white.\n" in text
    assert "  Agreement: share also read.\n" in text
    assert (
        "- Attacker classifier of SFD: `c`, held-out accuracy 99.0 %; recipe {'seed': 1}." in text
    )


def test_a_measured_file_is_reused_only_from_its_own_command(tmp_path) -> None:
    """A metrics file is read again only when the command kept beside it is this one; another
    command's (or an unrecorded one's) file is refused, never shown under the current command."""
    script = importlib.import_module("results_page")
    file = tmp_path / "SFD" / "metrics.json"
    command = ["sfd", "eval-text", "gen", "--attack", "soft"]
    runs = []

    def run() -> None:
        runs.append(1)
        file.parent.mkdir()
        file.write_text("{}")

    script.measured_once(file, command, run)  # measured, and the command kept beside it
    script.measured_once(file, command, run)  # its own: reused, not run again
    assert runs == [1]
    (file.parent / script.COMMAND_FILE).unlink()
    with pytest.raises(SystemExit, match="a command it does not record"):
        script.measured_once(file, command, run)
    (file.parent / script.COMMAND_FILE).write_text("sfd eval-text gen --attack discrete\n")
    with pytest.raises(SystemExit, match="written by `sfd eval-text gen --attack discrete`"):
        script.measured_once(file, command, run)
    assert runs == [1]
    for name in ("attack_judge", "adversarial_settings"):  # both scripts measure through it
        assert "measured_once(" in (REPO / "experiments" / f"{name}.py").read_text()


def test_attack_suite_takes_the_split_its_report_recorded(tmp_path) -> None:
    """attack_suite's split is the report's (protocol, else classifier/cache.json), not a fixed
    0.2 / seed 0."""
    script = importlib.import_module("attack_suite")
    (tmp_path / "classifier").mkdir()
    (tmp_path / "classifier" / "cache.json").write_text(
        json.dumps({"data": "d", "heldout_fraction": 0.3, "split_seed": 4, "seed": 4})
    )
    text = {"protocol": {"seed": 4, "data": "digits"}}
    assert script.split_of(tmp_path, text) == {"heldout_fraction": 0.3, "split_seed": 4}
    settings = {"heldout_fraction": 0.25, "split_seed": 2, "seed": 2}
    cls = {"protocol": {"seed": 2, "classifier_settings": settings}}
    assert script.split_of(tmp_path, cls) == {"heldout_fraction": 0.25, "split_seed": 2}
    (tmp_path / "classifier" / "cache.json").unlink()
    with pytest.raises(SystemExit, match="records no split"):
        script.split_of(tmp_path, text)


def test_the_committed_attack_judge_page_has_the_current_format() -> None:
    """docs/results/attack_judge.md as the script writes it now: each attack's definitions under
    its name (the class rows' budget and objectives too) and one attacker line per model group."""
    text = (REPO / "docs" / "results" / "attack_judge.md").read_text()
    assert "- **soft**: budget steps 200, " in text
    assert "- **class_embedding**: budget steps 200, batch_size 16, eval_samples 64, " in text
    assert "  White-box objective: minimise CE(evaluation classifier(G(z, e)), " in text
    assert "  Transfer objective: minimise CE(attacker classifier(G(z, e)), " in text
    attackers = [line for line in text.splitlines() if line.startswith("- Attacker classifier")]
    assert [line.split(":")[0] for line in attackers] == [
        "- Attacker classifier of SFD, adversarial SFD, no forgetting",
        "- Attacker classifier of SFD (class), no forgetting (class)",
    ]
    assert all("held-out accuracy " in line and "; recipe {" in line for line in attackers)


def test_text_benchmark_shows_an_unmeasured_target_as_such() -> None:
    """A target the demo did not measure (met None, value None) is "not measured" on the page."""
    script = importlib.import_module("text_benchmark")
    table = script.targets_table(
        {"ua_train_at_least_95": {"value": 1.0, "met": True},
         "soft_attack_at_most_half_of_no_forgetting": {"value": None, "met": None}}
    )  # fmt: skip
    assert "| soft_attack_at_most_half_of_no_forgetting | — | not measured |" in table
    assert "| ua_train_at_least_95 | 1.000 | yes |" in table


def test_judge_levels_reads_a_run_folder_as_its_teacher_and_classifier(tmp_path: Path) -> None:
    """A finished demo run folder stands for the teacher and the classifier its metrics.json
    names; any other folder is itself."""
    import judge_levels

    run = tmp_path / "run"
    run.mkdir()
    protocol = {"teacher": {"folder": "cache/t-1"}, "classifier": {"folder": "cache/c-2"}}
    (run / "metrics.json").write_text(json.dumps({"protocol": protocol}))
    assert judge_levels.model_folder(str(run), "teacher") == "cache/t-1"
    assert judge_levels.model_folder(str(run), "classifier") == "cache/c-2"
    assert judge_levels.model_folder(str(tmp_path / "teacher"), "teacher") == str(
        tmp_path / "teacher"
    )


def test_judge_levels_floor_within_the_agreement_target() -> None:
    """Judge and classifier 3 points apart on the teacher's override samples: within the target;
    a case without override samples says nothing."""
    import judge_levels

    case = judge_levels_record("python experiments/judge_levels.py")["cases"][0]
    case["sets"]["teacher (28 steps), override prompts"]["classifier_forget"] = 0.045
    text = judge_levels.floor(case)
    assert "3.0 points apart, within the 5 points issue 24 allows" in text
    del case["sets"]["teacher (28 steps), override prompts"]
    assert judge_levels.floor(case) == ""


def test_included_class_runs_join_the_page_titled_by_their_settings(results_dir) -> None:
    """`--page-from A --include B`: B's adversarial SFD is one more row of every table, titled by
    the settings where they differ from A's; a record of other budgets is refused."""
    script = importlib.import_module("attack_suite")

    def adversarial(folder: str, settings: dict[str, Any], rate: float) -> dict[str, Any]:
        record = attacks_class_record(
            f"python experiments/attack_suite.py --adversarial-run {folder}"
        )
        model = record["models"]["sfd"]
        record["models"]["adversarial_sfd"] = {
            **model,
            "attack": {**model["attack"], "success_rate": rate},
        }
        record["adversarial_run_folder"] = folder
        scores = {"ua": 1.0, "ua_paraphrases": None, "remain_accuracy": 0.98,
                  "neighbour_accuracy": None, "fid_remain": 3.0, "training_seconds": 100.0}  # fmt: skip
        record["summary"] = {"teacher": scores, "sfd": scores, "adversarial_sfd": scores,
                             "distilled_without_forgetting": scores,
                             "adversarial_settings": settings}  # fmt: skip
        return record

    results_page.save_record(adversarial("runs/adv", {"steps": 2, "weight": 0.25}, 0.5), "a.json")
    results_page.save_record(
        adversarial("runs/adv-w1", {"steps": 2, "weight": 1.0}, 0.125), "b.json"
    )
    script.main(["--page-from", "a.json", "--include", "b.json"])
    page = (results_dir / "attacks_class.md").read_text()
    assert "| one-step adversarial SFD | 50.0 % | 0.0 % | 80 |" in page
    assert "| one-step adversarial SFD (weight 1.0) | 12.5 % | 0.0 % | 80 |" in page
    assert "| one-step adversarial SFD (weight 1.0) | 100.0 % | 60.0 % | 40.0 % | 2 |" in page
    assert "- one-step adversarial SFD (weight 1.0): `python experiments/attack_suite.py " in page
    other = adversarial("runs/adv-w1", {"weight": 1.0}, 0.1)
    other["budget"] = {"steps": 100}
    results_page.save_record(other, "c.json")
    with pytest.raises(SystemExit, match="--include c.json: its budget is"):
        script.main(["--page-from", "a.json", "--include", "c.json"])


def test_every_results_page_is_listed_in_the_index_and_the_nav() -> None:
    """Each docs/results/*.md page has a row in docs/results/index.md and an entry in mkdocs.yml's
    nav, so a new page cannot go unlisted."""
    pages = sorted(p.name for p in (REPO / "docs" / "results").glob("*.md") if p.name != "index.md")
    index = (REPO / "docs" / "results" / "index.md").read_text()
    listed = set(re.findall(r"^\| \[[^\]]+\]\(([\w-]+\.md)\) \|", index, re.MULTILINE))
    nav = set(re.findall(r"results/([\w-]+\.md)\s*$", (REPO / "mkdocs.yml").read_text(), re.M))
    assert pages and not [page for page in pages if page not in listed]
    assert not [page for page in pages if page not in nav]
    assert listed <= set(pages) and nav - {"index.md"} <= set(pages)


def test_commands_and_records_show_paths_from_the_repository_root(tmp_path) -> None:
    """An absolute path inside the repository (as a worktree's own `runs/`) is shown relative to
    its root, also after `--option=` and `name=`; other paths and relative ones as typed. The
    page's record path is shown the same way."""
    args = [f"--json={REPO}/runs/a/x.json", "--run", str(REPO / "runs" / "demo"),
            f"SFD={REPO}/runs/demo/generator", "--cache", "/opt/elsewhere", "runs/b",
            "s1:lr=1e-4", "--steps", "2"]  # fmt: skip
    assert results_page.command_line("experiments/attack_suite.py", args) == (
        "python experiments/attack_suite.py --json=runs/a/x.json --run runs/demo "
        "SFD=runs/demo/generator --cache /opt/elsewhere runs/b s1:lr=1e-4 --steps 2"
    )
    assert results_page.shown_path(REPO) == str(REPO)  # the root itself: as given
    page = results_page.write_page(
        "cli_startup", "t", "python experiments/cli_startup.py", str(REPO / "runs" / "c.json"),
        {"run": run_section("python experiments/cli_startup.py")}, {}, tmp_path,
    )  # fmt: skip
    assert "from `runs/c.json`; do not edit by hand." in page.read_text()


def test_no_page_calls_the_first_checkpoint_below_half_the_steps_it_took() -> None:
    """The revival column has checkpoint resolution: no page titles it "steps until UA < 50 %"
    (the attack pages, whose records are lost, were relabelled by hand to the scripts' title)."""
    pages = [*REPO.joinpath("docs").rglob("*.md")]
    assert not [p.name for p in pages if "steps until UA" in p.read_text()]
    for name in ("attacks", "attacks_adversarial", "attacks_class"):
        text = (REPO / "docs" / "results" / f"{name}.md").read_text()
        assert "| first checkpoint with UA < 50 % |" in text
        assert "UA is measured only after 0, N/4, N/2 and N steps" in text


def test_adversarial_settings_name_the_preset_when_none_were_overridden():
    """A demo run with `--adversarial` alone records no overrides ({}): the page names the preset,
    and a record without the settings says so instead of printing None."""
    attack_suite = importlib.import_module("attack_suite")
    assert attack_suite.settings_text({}) == "the defaults of `configs/adversarial.yaml`"
    assert attack_suite.settings_text(None) == "not recorded"
    assert attack_suite.settings_text({"steps": 8}) == "{'steps': 8}"


def class_record_with_baselines(command: str) -> dict[str, Any]:
    """A `--class-run` record of all five models: plain, adversarial, no forgetting, ESD, SalUn."""
    record = attacks_class_record(command)
    sfd = record["models"]["sfd"]

    def attacked(rate: float, sampler: str) -> dict[str, Any]:
        return {**sfd, "attack": {**sfd["attack"], "success_rate": rate, "sampler": sampler}}

    one_step = "one-step generator (sigma_init=2.5)"
    ddim = "DDIM 4 steps (eta=0, trailing spacing)"
    record["models"] = {
        "sfd": attacked(0.5, one_step),
        "adversarial_sfd": attacked(0.25, one_step),
        "distilled_without_forgetting": record["models"]["distilled_without_forgetting"],
        "esd": {**attacked(0.75, ddim), "sampler": "DDIM 50 steps (eta=0, trailing spacing)"},
        "salun": {**attacked(0.875, ddim), "sampler": "DDIM 50 steps (eta=0, trailing spacing)"},
    }
    record["adversarial_run_folder"] = "runs/adv"
    record["baselines"] = "runs/compare/models"
    record["ddim_steps"], record["attack_ddim_steps"] = 50, 4
    scores = {"ua": 1.0, "ua_paraphrases": None, "remain_accuracy": 0.98,
              "neighbour_accuracy": None, "fid_remain": 3.0, "training_seconds": 100.0}  # fmt: skip
    record["summary"] = {
        **{key: scores for key in ("teacher", "sfd", "adversarial_sfd", "esd", "salun")},
        "distilled_without_forgetting": {**scores, "ua": 0.0},
        "adversarial_settings": {},
    }
    record["summary"]["esd"] = {**scores, "remain_accuracy": 0.87, "fid_remain": 71.95}
    return record


def test_the_class_page_holds_all_five_models_on_the_page_it_names(results_dir) -> None:
    """A class record with adversarial SFD and the baselines goes, whole, to the page `--page`
    names (or the record names): every table holds all five models, the baselines' attack names
    the DDIM sampler it went through, and their benchmark row is the compare's evaluation."""
    script = importlib.import_module("attack_suite")
    command = "python experiments/attack_suite.py --class-run runs/demo --page attacks_class"
    record = class_record_with_baselines(command)
    results_page.save_record(record, "all.json")
    script.main(["--page-from", "all.json", "--page", "attacks_class"])
    assert sorted(p.name for p in results_dir.iterdir()) == ["attacks_class.md"]
    page = (results_dir / "attacks_class.md").read_text()
    for title in ("one-step SFD", "one-step adversarial SFD", "one-step, no forgetting",
                  "ESD (DDIM)", "SalUn (DDIM)"):  # fmt: skip
        assert page.count(f"| {title} |") == 3, title  # benchmark, attack and revival tables
    assert "## Benchmark (plain SFD, adversarial SFD, no forgetting, ESD, SalUn)" in page
    assert "| ESD (DDIM) | 100.0 % | – | 87.0 % | – | 71.950 | 75.0 % | 2 | 100 |" in page
    assert "| SalUn (DDIM) | 87.5 % | 0.0 % | 80 | DDIM 4 steps (eta=0, trailing spacing) |" in page
    assert "| one-step SFD | 50.0 % | 0.0 % | 80 | one-step generator (sigma_init=2.5) |" in page
    assert "| adversarial SFD class-embedding success ≤ 5 % | 25.0 % | no |" in page
    (results_dir / "attacks_class.md").unlink()
    results_page.save_record({**record, "page": "attacks_class"}, "named.json")
    script.main(["--page-from", "named.json"])  # the page its measuring command named
    assert sorted(p.name for p in results_dir.iterdir()) == ["attacks_class.md"]


def compare_folder(root: Path, classifier: str = "classifier-aa", forget: int = 0) -> Path:
    """An `sfd compare` report folder with what `attack_suite.check_baselines` reads."""
    for key in ("esd", "salun"):
        (root / "models" / key).mkdir(parents=True)
    protocol = {
        "teacher": {"folder": "/c/teacher-tt"},
        "classifier": {"folder": f"/c/{classifier}"},
        "samplers": {"multi-step": "DDIM 50 steps (eta=0, trailing spacing)"},
    }
    metrics = {"forget": forget, "override": 1, "methods": {"esd": {}, "salun": {}},
               "protocol": protocol}  # fmt: skip
    (root / "metrics.json").write_text(json.dumps(metrics))
    return root / "models"


@pytest.mark.parametrize(
    ("classifier", "forget", "message"),
    [("classifier-bb", 0, "its classifier is 'classifier-bb', not 'classifier-aa'"),
     ("classifier-aa", 3, "forget 3 there but 0")],
)  # fmt: skip
def test_baselines_of_another_teacher_classifier_or_pair_are_refused(
    results_dir, tmp_path, capsys, classifier, forget, message
) -> None:
    """`--baselines` must come from a compare of the same pair, teacher and classifier (their
    cache entries): else one line, exit 2, nothing written, before anything is measured."""
    script = importlib.import_module("attack_suite")
    demo = tmp_path / "demo"
    demo.mkdir()
    protocol = {"teacher": {"folder": "runs/cache/teacher-tt"},
                "classifier": {"folder": "runs/cache/classifier-aa"}}  # fmt: skip
    (demo / "metrics.json").write_text(
        json.dumps({"forget": 0, "override": 1, "protocol": protocol})
    )
    same = compare_folder(tmp_path / "same")
    assert script.check_baselines(demo, same) is None
    other = compare_folder(tmp_path / "other", classifier, forget)
    with pytest.raises(SystemExit) as stop:
        script.main(["--class-run", str(demo), "--baselines", str(other), "--json", "r.json"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--baselines" in error and message in error
    assert not (tmp_path / "r.json").exists() and not results_dir.exists()
    assert "no " in script.check_baselines(demo, tmp_path / "none" / "models")


def test_page_from_a_record_without_a_page_field_writes_the_page_its_command_named(
    results_dir,
) -> None:
    """A record written before the `page` field was kept goes to the `--page` of its recorded
    command line (either form), never to the default page (which it would overwrite); a record
    whose command named no page goes to the default."""
    script = importlib.import_module("attack_suite")
    for form in (["--page", "attacks_adversarial_pairs"], ["--page=attacks_adversarial_pairs"]):
        command = " ".join(["python experiments/attack_suite.py --run runs/f", *form])
        record = attacks_adversarial_record(command)
        record.pop("page", None)
        results_page.save_record(record, "runs/f.json")
        script.main(["--page-from", "runs/f.json"])
        assert (results_dir / "attacks_adversarial_pairs.md").is_file()
        assert not (results_dir / "attacks_adversarial.md").exists()
        (results_dir / "attacks_adversarial_pairs.md").unlink()
    record = attacks_adversarial_record("python experiments/attack_suite.py --run runs/f")
    results_page.save_record(record, "runs/f.json")
    script.main(["--page-from", "runs/f.json"])
    assert (results_dir / "attacks_adversarial.md").is_file()


def test_a_class_record_with_adversarial_sfd_defaults_to_the_class_page(results_dir) -> None:
    """A class record with adversarial SFD and no page named goes to attacks_class (all the class
    models share one page), not to a page of its own."""
    script = importlib.import_module("attack_suite")
    record = attacks_class_record("python experiments/attack_suite.py --class-run runs/demo")
    record["adversarial_run_folder"] = "runs/demo-adversarial"
    results_page.save_record(record, "runs/c.json")
    script.main(["--page-from", "runs/c.json"])
    assert sorted(p.name for p in results_dir.glob("*.md")) == ["attacks_class.md"]


def test_baselines_evaluated_with_another_sampler_or_protocol_are_refused(
    results_dir, tmp_path, capsys
) -> None:
    """The compare's own sampler (its protocol's samplers["multi-step"]) must be DDIM of
    `--ddim-steps`, and its seed, samples per class and split those of the demo where both record
    them: else one line, exit 2, nothing written, before anything is measured."""
    script = importlib.import_module("attack_suite")
    demo = tmp_path / "demo"
    demo.mkdir()
    protocol = {"teacher": {"folder": "runs/cache/teacher-tt"},
                "classifier": {"folder": "runs/cache/classifier-aa"}, "seed": 0,
                "generated_per_class": 100, "train_images": 800}  # fmt: skip
    (demo / "metrics.json").write_text(
        json.dumps({"forget": 0, "override": 1, "protocol": protocol})
    )
    models = compare_folder(tmp_path / "c")
    metrics = json.loads((models.parent / "metrics.json").read_text())

    def compare(**entries: Any) -> None:
        metrics["protocol"] = {**metrics["protocol"], **entries}
        (models.parent / "metrics.json").write_text(json.dumps(metrics))

    compare(samplers={"multi-step": "DDIM 25 steps (eta=0, trailing spacing)"})
    assert script.check_baselines(demo, models, 25) is None
    assert "DDIM 25 steps" in script.check_baselines(demo, models, 50)
    with pytest.raises(SystemExit) as stop:
        script.main(["--class-run", str(demo), "--baselines", str(models), "--json", "r.json"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--baselines" in error and "not DDIM 50 steps (--ddim-steps 50)" in error
    assert not (tmp_path / "r.json").exists() and not results_dir.exists()
    for name, value in (("seed", 1), ("generated_per_class", 50), ("train_images", 900)):
        compare(**{name: value})
        assert f"its {name} is {value!r}" in script.check_baselines(demo, models, 25)
        compare(**{name: protocol[name]})
    metrics["protocol"].pop("samplers")
    compare()
    assert "no recorded sampler" in script.check_baselines(demo, models, 50)


def test_the_class_page_names_the_compares_own_sampler_and_what_training_s_holds(
    results_dir,
) -> None:
    """The baselines' benchmark rows name the sampler the compare evaluated them with (as
    recorded; an older record says it was not), and the column description says the SFD rows'
    training seconds hold the completion rule's probes, the baselines' none."""
    script = importlib.import_module("attack_suite")
    record = class_record_with_baselines("python experiments/attack_suite.py --class-run r")
    record["baselines_sampler"] = "DDIM 25 steps (eta=0, trailing spacing)"
    results_page.save_record(record, "all.json")
    script.main(["--page-from", "all.json"])
    page = (results_dir / "attacks_class.md").read_text()
    assert "multi-step, DDIM 25 steps (eta=0, trailing spacing))" in page
    assert "including the completion rule's probes where it ran" in page
    assert "(no completion rule, no probes)" in page
    del record["baselines_sampler"]
    results_page.save_record(record, "all.json")
    script.main(["--page-from", "all.json"])
    page = (results_dir / "attacks_class.md").read_text()
    assert "the compare's sampler not recorded; this command's revival sampler DDIM 50" in page
    assert "and protocol" not in page


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--page-from", "r.json", "--baselines", "c/models"], "--baselines: a measuring option"),
     (["--page-from", "r.json", "--reuse", "old.json"], "--reuse: a measuring option"),
     (["--run", "d", "--ddim-steps", "25"], "--ddim-steps: the baselines' sampler, read only"),
     (["--class-run", "d", "--attack-ddim-steps", "8"], "--attack-ddim-steps: the baselines'"),
     (["--class-run", "d", "--only", "esd", "salun"], "esd and salun need --baselines"),
     (["--class-run", "d", "--baselines", "c/models", "--only", "sfd"],
      "--only sfd with --baselines: name both esd and salun")],
)  # fmt: skip
def test_options_nothing_reads_are_refused(results_dir, capsys, argv, message) -> None:
    """An option this command would accept and ignore is refused in one line, exit 2, before
    anything is read or measured, nothing written."""
    script = importlib.import_module("attack_suite")
    with pytest.raises(SystemExit) as stop:
        script.main([*argv, "--json", "out.json"])
    assert stop.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert not Path("out.json").exists() and not results_dir.exists()


@pytest.mark.parametrize(("name", "was", "now"), [("attacks", ["soft"], ["soft", "discrete"]),
                                                   ("attack_objective", "both", "white-box")])  # fmt: skip
def test_reuse_across_other_attacks_or_objective_is_refused(tmp_path, name, was, now) -> None:
    """Models measured with other prompt attacks or another attack objective are not reused."""
    script = importlib.import_module("attack_suite")
    settings = {key: None for key in script.SAME_SETTINGS}
    settings.update(run="plain", attacks=["soft", "discrete"], attack_objective="white-box")
    options = argparse.Namespace(**{**settings, name: now, "reuse": str(tmp_path / "old.json")})
    record = {"run": run_section("python x"), "models": {"sfd": {}},
              "settings": {**settings, name: was}}  # fmt: skip
    results_page.save_record(record, options.reuse)
    assert script.check_reuse(options) == f"it was measured with {name}={was!r}, not {now!r}"


@pytest.mark.parametrize(
    ("top", "models", "now", "reason"),
    [({"attack_objective": "white-box"}, {"sfd": {}}, {}, None),
     ({"attack_objective": "both"}, {"sfd": {}}, {},
      "it was measured with attack_objective='both', not 'white-box'"),
     ({}, {"sfd": {}}, {}, "it names no attack_objective (written before it was kept)"),
     ({"attack_objective": "white-box"}, {"sfd": {"attacks": {"soft": {}, "discrete": {},
                                                             "paraphrases": {}}}}, {}, None),
     ({"attack_objective": "white-box"}, {"sfd": {"attacks": {"soft": {}, "paraphrases": {}}}},
      {}, "it was measured with attacks=['soft'], not ['soft', 'discrete']"),
     ({"attack_objective": "white-box"}, {"sfd": {}}, {"attacks": ["soft"]},
      "it was measured with attacks=['soft', 'discrete'], not ['soft']")],
)  # fmt: skip
def test_reuse_of_a_record_before_attacks_were_kept(tmp_path, top, models, now, reason) -> None:
    """A record written before `settings` kept `attacks` and `attack_objective` is reused when
    they match: the objective read from the record's top level (refused where it has none),
    the attacks from those its models ran, both where none ran (before `--attacks`)."""
    script = importlib.import_module("attack_suite")
    settings = {key: None for key in script.SAME_SETTINGS}
    settings.update(run="plain", attacks=["soft", "discrete"], attack_objective="white-box")
    options = argparse.Namespace(**{**settings, **now, "reuse": str(tmp_path / "old.json")})
    old = {
        key: value for key, value in settings.items() if key not in ("attacks", "attack_objective")
    }
    record = {"run": run_section("python x"), "models": models, "settings": old, **top}
    results_page.save_record(record, options.reuse)
    found = script.check_reuse(options)
    assert found == reason if reason is None or reason.startswith("it was") else reason in found


@pytest.mark.parametrize("script", ["override_guidance", "text_benchmark", "attack_suite"])
@pytest.mark.parametrize(
    ("content", "message"), [(None, "no such file"), ("not json {", "not a JSON record")]
)
def test_page_from_a_missing_or_unreadable_record_is_refused_in_one_line(
    results_dir, tmp_path, capsys, script, content, message
) -> None:
    if content is not None:
        (tmp_path / "r.json").write_text(content)
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(script).main(["--page-from", "r.json"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--page-from r.json" in error[0] and message in error[0]
    assert not results_dir.exists()


@pytest.mark.parametrize(
    ("script", "argv", "message"),
    [
        ("override_guidance", ["--case", "a", "b", "c", "d"], "expected NAME TEACHER"),
        ("override_guidance", ["--case", "x", "nowhere", "c", "7", "1"], "not a text teacher"),
        ("override_guidance", ["--case", "x", "t", "c", "7", "1", "--guidance", "nan"], "--guidance nan"),
        ("override_guidance", ["--case", "x", "t", "c", "7", "1", "--guidance", "0.5"], "at least 1"),
        ("judge_levels", ["--case", "x", "t", "nowhere", "7", "1"], "not a saved classifier"),
        ("judge_levels", ["--case", "x", "t", "c", "7", "1", "nowhere"], "not an exported pipeline"),
        ("judge_levels", ["--case", "x", "t", "c", "7", "eleven"], "'eleven' is not one of"),
        ("judge_levels", ["--case", "x", "t", "c", "12", "1"], "'12' is not one of"),
        ("judge_levels", ["--case", "x", "t", "c", "7", "1", "--threads", "0"], "--threads 0"),
    ],
)  # fmt: skip
def test_case_options_are_checked_before_anything_loads(
    results_dir, tmp_path, capsys, script, argv, message
) -> None:
    """A teacher folder with only its sfd.json and a classifier folder with only its config: every
    refusal comes from the checks, not from loading (nothing here would load)."""
    (tmp_path / "t").mkdir()
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    (tmp_path / "t" / "sfd.json").write_text(json.dumps({"class_names": names}))
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(script).main([*argv, "--json", "out.json"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0], error
    assert not (tmp_path / "out.json").exists() and not results_dir.exists()
