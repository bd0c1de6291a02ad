"""`sfd compare` end to end on digits with tiny settings: every method, the cache, two-stage SFD."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import TINY_DIGITS_RUN
from PIL import Image

from sfd.apps.compare.settings import METHOD_KEYS, CompareSettings
from sfd.apps.harness.methods import Run, SFDMethod
from sfd.apps.harness.workspace import build_teacher, load_split, prepare_classifier, teacher_recipe
from sfd.cli import main
from sfd.teachers import PretrainedVPTeacher

RAW_ROWS = ("sfd_raw", "sfd_two_stage_raw")
TINY_COMPARE = [
    *TINY_DIGITS_RUN,
    "--esd.max_steps", "2", "--esd.batch_size", "2", "--esd.ddim_steps", "3",
    "--salun.max_steps", "2", "--salun.batch_size", "2", "--salun.forget_samples", "4",
    "--salun.remain_samples", "4", "--salun.ddim_steps", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny run of every method (forget 2 -> override 7), shared by this module's tests."""
    root = tmp_path_factory.mktemp("compare")
    output, cache = root / "out", root / "cache"
    args = ["compare", "--output-dir", str(output), "--teacher-cache", str(cache)]
    assert main([*args, "--forget", "2", "--override", "7", *TINY_COMPARE]) == 0
    return output, cache


def test_every_method_fits_and_has_finite_metrics(compare_run: tuple[Path, Path]) -> None:
    output, _ = compare_run
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["forget"], metrics["override"]) == (2, 7)
    assert 0 <= metrics["protocol"]["ua_ceiling"] <= 1  # shared with `sfd demo` (protocol_head)
    # SFD ships its EMA; its raw generator is reported beside it
    rows = [k for key in METHOD_KEYS for k in (key, f"{key}_raw") if k in RAW_ROWS or k == key]
    assert list(metrics["methods"]) == rows
    nfe = {"sfd": 1, "sfd_two_stage": 1, "distill": 1, "esd": 3, "salun": 3, "retrain": 3}
    nfe |= {row: 1 for row in RAW_ROWS}
    for key, m in metrics["methods"].items():
        assert m["nfe"] == nfe[key], key
        for name in ("ua", "remain_accuracy", "forget_as_override"):
            assert 0.0 <= m[name] <= 1.0, (key, name)
        assert math.isfinite(m["fid_remain"]) and math.isfinite(m["kid_remain"]), key
        assert m["images_per_second"] > 0 and m["train_seconds"] >= 0, key
        assert set(m["remain_per_class"]) == {str(c) for c in range(10)} - {"2"}
        assert sum(m["forget_histogram"]) == 6, key
        if key != "retrain":  # Retrain is the reference; its training is not traced
            its = [p["iteration"] for p in m["curve"]]
            assert its == list(range(m["iterations"] + 1)), key
            seconds = [p["seconds"] for p in m["curve"]]
            assert seconds == sorted(seconds) and all(math.isfinite(s) for s in seconds)
            assert set(m["ua95"]) == {"iteration", "seconds"}
    two_stage = metrics["methods"]["sfd_two_stage"]["extra"]
    assert two_stage["stage1_iterations"] == 3 and not two_stage["stage1_cached"]
    assert two_stage["max_steps"] == 3  # its cap (TINY_DIGITS_RUN), beside the iterations used
    distill = metrics["methods"]["distill"]  # the same stage-1 run, built once
    assert distill["extra"]["folder"] == two_stage["stage1_folder"] and not distill["cached"]
    for row in RAW_ROWS:  # both curves start at the same generator: the same first point
        ema, raw = metrics["methods"][row.removesuffix("_raw")], metrics["methods"][row]
        assert raw["iterations"] == ema["iterations"]
        assert [p["iteration"] for p in raw["curve"]] == [p["iteration"] for p in ema["curve"]]
        assert raw["curve"][0]["ua"] == ema["curve"][0]["ua"] == ema["curve"][0]["ua_raw"]
        assert raw["curve"][0]["remain_accuracy"] == ema["curve"][0]["remain_accuracy"]
        # the remain FID along the run, EMA and raw on the same noise: equal at the start
        assert all(math.isfinite(p["fid_remain"]) for p in ema["curve"] + raw["curve"])
        assert raw["curve"][0]["fid_remain"] == ema["curve"][0]["fid_remain"]
    assert "ua_raw" not in metrics["methods"]["esd"]["curve"][0]
    assert "fid_remain" not in metrics["methods"]["esd"]["curve"][0]  # multi-step: not traced
    assert math.isfinite(metrics["teacher"]["fid_remain"]) and metrics["teacher"]["nfe"] == 3


def test_report_figures_and_exports(compare_run: tuple[Path, Path]) -> None:
    output, _ = compare_run
    report = (output / "report.md").read_text()
    assert "| SFD, two-stage (from the distilled generator) | 1 |" in report
    assert "UA ≥ 95 % at" in report and "forgetting_curves.png" in report
    for name in ("forgetting_curves.png", "forget_histogram.png", "samples.png"):
        with Image.open(output / name) as image:
            assert image.width > 100 and image.height > 100
    for key in METHOD_KEYS:
        assert (output / "models" / key / "unet" / "config.json").is_file(), key


def folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(file.relative_to(folder).as_posix().encode() + file.read_bytes())
    return digest.hexdigest()


def test_two_stage_keeps_the_original_teacher_bit_identical(
    compare_run: tuple[Path, Path], tmp_path: Path, single_thread: None
) -> None:
    _, cache = compare_run
    settings = CompareSettings(
        output_dir=tmp_path, forget=2, override=7, teacher_cache=cache, teacher_steps=4,
        teacher_channels=(8, 16), classifier_steps=30, curve_every=1, curve_per_class=2,
        ddim_steps=3, progress=False, sfd_args=["--trainer.max_steps", "2", "--model.batch_size", "4"],
    )  # fmt: skip
    workspace = load_split("digits", 0.2, 0, cache)
    recipe = teacher_recipe(0, 4, (8, 16))
    workspace.teacher_dir, reused, _, _ = build_teacher(workspace, recipe, "cpu", False)
    assert reused
    before = folder_digest(workspace.teacher_dir)
    prepare_classifier(workspace, settings)
    run = Run(settings, workspace, {}, tmp_path / "logs")
    fitted = SFDMethod(two_stage=True).fit(run)
    module = fitted.extra["module"]
    original = PretrainedVPTeacher(str(workspace.teacher_dir)).state_dict()
    teacher = module.teacher.state_dict()
    assert teacher.keys() == original.keys()
    assert all(torch.equal(teacher[k], original[k]) for k in original)
    assert folder_digest(workspace.teacher_dir) == before
    # The stage-1 fake score was the starting point of the fake score, never the teacher.
    assert run.stage1 is not None
    stage1_fake = PretrainedVPTeacher(str(run.stage1.fake_score_dir)).state_dict()
    assert any(not torch.equal(stage1_fake[k], original[k]) for k in original)
    assert module.fake_score is not module.teacher


def test_second_run_reuses_teacher_classifier_stage1_and_retrain(
    compare_run: tuple[Path, Path], tmp_path: Path
) -> None:
    _, cache = compare_run
    output = tmp_path / "again"
    args = ["compare", "--output-dir", str(output), "--teacher-cache", str(cache)]
    methods = ["--methods", "distill,retrain"]
    assert main([*args, "--forget", "2", "--override", "7", *methods, *TINY_COMPARE]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["distill", "retrain"]
    assert metrics["methods"]["distill"]["cached"] and metrics["methods"]["retrain"]["cached"]
    assert metrics["protocol"]["teacher"]["reused_from_cache"]
    assert metrics["protocol"]["classifier"]["reused_from_cache"]


@pytest.mark.slow
def test_full_compare_default_settings(tmp_path: Path) -> None:
    """The README's `sfd compare` with default settings (trains teacher and Retrain: ~40 min)."""
    output = tmp_path / "compare-output"
    args = ["compare", "--output-dir", str(output), "--teacher-cache", str(tmp_path / "cache")]
    assert main([*args, "--no-progress", "--threads", "1"]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    for key, m in metrics["methods"].items():
        assert math.isfinite(m["fid_remain"]), key
    methods = metrics["methods"]
    assert methods["sfd_two_stage"]["ua"] >= 0.99 and methods["esd"]["ua"] >= 0.95
    assert methods["distill"]["ua"] < 0.5  # forgetting comes from SFD, not from distillation
    assert methods["retrain"]["ua"] >= 0.9  # the class was never trained
