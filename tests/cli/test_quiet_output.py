"""What `sfd` prints: known-harmless warnings hidden at their source (one list, sfd.notices),
progress as plain lines in a log that is not a terminal, no "Seed set" line before an error, the
forgotten row marked by `sfd sample`, and one-line pointers for a verb given the wrong model."""

from __future__ import annotations

import json
import logging
import re
import warnings
from pathlib import Path

import pytest
from conftest import fit_args, lightning_logs_to_stderr

from sfd.apps.data.captions import DIGITS_VOCABULARY, FASHION_VOCABULARY, resolve_class
from sfd.cli import main
from sfd.errors import SFDConfigError
from sfd.notices import HIDDEN_LOG_LINES, HIDDEN_WARNINGS, quiet_known_warnings
from sfd.training.memory import BUDGET_ENV

pytestmark = pytest.mark.usefixtures("single_thread")

# One real message per hidden entry, as the libraries word them.
LIBRARY_WARNINGS = [
    "Found 3 module(s) in eval mode at the start of training. This may lead to ...",
    "The dirpath has changed from 'a' to 'b', therefore `best_model_score` ... won't be reloaded.",
    "Starting from v1.9.0, `tensorboardX` has been removed as a dependency of ...",
    "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` ...",
    "Metric `Kernel Inception Distance` will save all extracted features in buffer. ...",
    "`lora_bias=True` was passed but the targeted layer of type Linear has no bias. ...",
]
LIBRARY_LOG_LINES = [
    (
        "transformers.utils.import_utils",
        "`CLIPImageProcessor` requires torchvision (not installed)",
    ),
    ("diffusers.loaders.lora_base", "No LoRA keys associated to CLIPTextModel found with ..."),
    ("diffusers.loaders.peft", "No LoRA keys associated to UNet2DConditionModel found ..."),
]


def hidden(text: str) -> list[str]:
    """The hidden messages that appear in `text`."""
    found = [p for p in HIDDEN_WARNINGS if re.search(p, text)]
    found += [f for fragments in HIDDEN_LOG_LINES.values() for f in fragments if f in text]
    return found


def test_each_known_warning_is_hidden_and_others_stay(caplog) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_known_warnings()
        for message in LIBRARY_WARNINGS:
            warnings.warn(message, UserWarning, stacklevel=1)
        warnings.warn("a real problem", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a real problem"]
    with caplog.at_level(logging.WARNING):
        for name, message in LIBRARY_LOG_LINES:
            logging.getLogger(name).warning(message)
        logging.getLogger("diffusers.loaders.peft").warning("a real LoRA problem")
    assert [r.getMessage() for r in caplog.records] == ["a real LoRA problem"]


def test_a_tiny_fit_prints_no_hidden_warning_and_plain_progress_lines(
    tiny_teacher_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Captured output is not a terminal: the run reports progress as plain lines (every 5 %)."""
    argv = fit_args(tiny_teacher_dir, tmp_path / "run", "--trainer.max_steps", "4")
    argv[argv.index("--trainer.enable_progress_bar") + 1] = "true"
    assert main(argv) == 0
    out, err = capfd.readouterr()
    assert not hidden(out + err), hidden(out + err)
    lines = [line for line in out.splitlines() if line.startswith("Iterations ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]  # 25 % each
    assert "(100%)" in lines[-1] and "\r" not in out


def test_no_seed_line_before_an_error(
    tiny_teacher_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Lightning's seed and device lines wait for the checks: none before a refusal (here one
    that needs the built trainer and model: the memory estimate), all once the run starts."""
    bad = fit_args(tiny_teacher_dir, tmp_path / "run", "--trainer.max_steps", "1")
    with lightning_logs_to_stderr():
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(BUDGET_ENV, str(1 / 1024))  # 1 MiB devices: refused in before_fit
            assert main(bad) == 2
        out, err = capfd.readouterr()
        assert err.startswith("sfd: error:") and err.count("\n") == 1, err
        assert main(bad) == 0
        err = capfd.readouterr().err
    assert "Seed set to 0" in err and "GPU available" in err and "memory estimate" in err, err


def test_held_lines_are_said_before_a_crash_and_when_only_built(
    tiny_teacher_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A failure that is no refusal (here in the memory estimate) keeps the seed and device lines
    in front of its traceback, and `sfd_lightning_cli(run=False)` says them too."""
    from sfd.training import cli

    def crash(*args: object) -> None:
        raise RuntimeError("boom")

    argv = fit_args(tiny_teacher_dir, tmp_path / "run", "--trainer.max_steps", "1")
    with lightning_logs_to_stderr():
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(cli, "check_run_memory", crash)
            with pytest.raises(RuntimeError, match="boom"):
                cli.sfd_lightning_cli(argv)
        err = capfd.readouterr().err
        assert "Seed set to 0" in err and "GPU available" in err, err
        assert argv[0] == "fit"
        cli.sfd_lightning_cli(argv[1:], run=False)
        err = capfd.readouterr().err
    assert "Seed set to 0" in err and "GPU available" in err, err


def test_class_names_resolve_in_one_place() -> None:
    assert resolve_class("seven", DIGITS_VOCABULARY, "--forget") == 7
    assert resolve_class("7", DIGITS_VOCABULARY, "--forget") == 7
    assert resolve_class(3, DIGITS_VOCABULARY, "--forget") == 3
    assert resolve_class("Sneaker", FASHION_VOCABULARY, "--forget") == 7
    with pytest.raises(SFDConfigError, match="--override 'eleven' is not a class: give 0..9"):
        resolve_class("eleven", DIGITS_VOCABULARY, "--override")


@pytest.mark.parametrize("classifier", [["--classifier", "c"], ["--classifier=c"]])
def test_eval_text_takes_class_names(monkeypatch, classifier) -> None:
    """`sfd eval-text ... --classifier` (either form) hands --forget / --override on as given
    (resolved later against the --real data set's class names, as `sfd demo-text` does)."""
    from sfd.apps.harness import concept_run

    seen = {}

    def fake_run(settings) -> dict:
        seen.update(forget=settings.forget, override=settings.override)
        raise SFDConfigError("stop")

    monkeypatch.setattr(concept_run, "run_concept_evaluation", fake_run)
    argv = ["eval-text", "m", *classifier, "--forget-prompts", "f", "--remain-prompts",
            "r", "--forget", "seven", "--override", "1", "--output-dir", "o"]  # fmt: skip
    assert main(argv) == 2
    assert seen == {"forget": "seven", "override": "1"}


def test_sfd_eval_points_a_text_export_to_eval_text(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "OneStepTextPipeline"}))
    assert main(["eval", str(folder), "--classifier", "c", "--forget", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sfd eval-text" in err


def test_sample_marks_the_forgotten_rows(tmp_path: Path) -> None:
    from sfd.cli.sample import forgotten_rows

    record = {"training": {"conditions": {"class": "ClassConditions", "forget": [0]}}}
    (tmp_path / "sfd_export.json").write_text(json.dumps(record))
    assert forgotten_rows(tmp_path, [0, 1, 2]) == [True, False, False]
    conditions = {
        "concepts": {"Brad Pitt": "a middle aged man"},
        "examples": [["a photo of Brad Pitt", "a photo of a middle aged man"]],
    }
    (tmp_path / "sfd_export.json").write_text(json.dumps({"training": {"conditions": conditions}}))
    rows = ["brad pitt on a horse", "a cat", "a photo of Brad Pitt"]
    assert forgotten_rows(tmp_path, rows) == [True, False, True]
    assert forgotten_rows(tmp_path / "missing", rows) == [False, False, False]


def test_sfd_eval_of_a_teacher_reports_every_ddim_step(
    tiny_teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A teacher samples in many steps: `sfd eval` counts each (here 3 DDIM steps of one batch),
    as plain lines since the captured output is not a terminal; --no-progress hides them."""
    import torch

    from sfd.eval.classifier import Classifier, save_classifier

    torch.manual_seed(0)
    save_classifier(Classifier(1, 10, (8, 8), width=8, feature_dim=8), tmp_path / "clf")
    argv = ["eval", str(tiny_teacher_dir), "--classifier", str(tmp_path / "clf"), "--forget", "0",
            "--num-per-class", "2", "--ddim-steps", "3"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    steps = [line for line in out.splitlines() if line.startswith("sampling DDIM 3 steps")]
    assert [line.rsplit(" ", 2)[1:] for line in steps] == [["1/3", "(33%)"], ["2/3", "(66%)"],
                                                           ["3/3", "(100%)"]]  # fmt: skip
    assert main([*argv, "--no-progress"]) == 0
    assert "sampling" not in capsys.readouterr().out


def test_no_progress_hides_the_loading_and_revival_bars(
    tiny_teacher_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """`sfd eval --no-progress`: neither diffusers' "Loading pipeline components" bar nor the
    revival test's bar; without it both show (the control)."""
    import torch

    from sfd.core.generator import OneStepGenerator
    from sfd.eval.classifier import Classifier, save_classifier
    from sfd.pipelines.io import save_generator
    from sfd.teachers import PretrainedVPTeacher

    torch.manual_seed(0)
    save_classifier(Classifier(1, 10, (8, 8), width=8, feature_dim=8), tmp_path / "clf")
    save_generator(OneStepGenerator(PretrainedVPTeacher(str(tiny_teacher_dir))), tmp_path / "gen")
    argv = ["eval", str(tmp_path / "gen"), "--classifier", str(tmp_path / "clf"), "--forget", "0",
            "--num-per-class", "2", "--revival", "2", "--revival-images", "2",
            "--revival-batch", "2"]  # fmt: skip
    capfd.readouterr()
    assert main(argv) == 0
    err = capfd.readouterr().err
    assert "Loading pipeline components" in err and "revival:" in err, err
    assert main([*argv, "--no-progress"]) == 0
    err = capfd.readouterr().err
    assert "Loading pipeline components" not in err and "revival:" not in err, err
