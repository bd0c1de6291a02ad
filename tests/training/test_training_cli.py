"""What `sfd fit` adds to LightningCLI: the run record that `--ckpt_path last` checks, the
iteration progress bar, quiet design warnings, cleanup of failed starts, stale `.tmp` files."""

from __future__ import annotations

import re
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import SCRIPTS, docs_block, fit_args

from sfd.errors import SFDConfigError
from sfd.notices import HIDDEN_LOG_LINES, HIDDEN_WARNINGS
from sfd.training.cli import sfd_lightning_cli
from sfd.training.config_errors import one_line
from sfd.training.progress import IterationProgressBar

sys.path.insert(0, str(SCRIPTS))  # run_probes: callbacks loaded by class_path

QUIET = ["--trainer.enable_model_summary", "false"]


def fit(teacher: Path, root: Path, *extra: str, bar: bool = False):
    args = fit_args(teacher, root, "--trainer.log_every_n_steps", "1", *extra)
    if bar:
        args[args.index("--trainer.enable_progress_bar") + 1] = "true"
    return sfd_lightning_cli(args)


def checkpoint_every(steps: int) -> list[str]:
    return [
        "--trainer.callbacks",
        "lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.every_n_train_steps",
        str(steps),
        "--trainer.callbacks.save_last",
        "true",
    ]


def final_state(cli) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in cli.model.state_dict().items()}


# --- resume: the run record, the bar, bit-identical results -------------------------------------


def test_resume_with_a_larger_budget_is_bit_identical_and_the_bar_counts_iterations(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    every = checkpoint_every(2)
    straight = fit(tiny_teacher_dir, tmp_path / "a", "--trainer.max_steps", "6", *every, bar=True)
    fit(tiny_teacher_dir, tmp_path / "b", "--trainer.max_steps", "4", *every, bar=True)
    resumed = fit(
        tiny_teacher_dir, tmp_path / "b", "--trainer.max_steps", "6", "--ckpt_path", "last",
        *every, bar=True,
    )  # fmt: skip
    assert resumed.trainer.global_step == 6
    a, b = final_state(straight), final_state(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    bar = resumed.trainer.progress_bar_callback
    assert isinstance(bar, IterationProgressBar)
    progress = bar.train_progress_bar
    assert (progress.n, progress.total, progress.initial) == (6, 6, 4)  # not "Epoch 0/-2", 30/19
    assert resumed.config_init["fit"]["weights_only"] is True


def test_last_refuses_a_checkpoint_of_another_configuration(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    every = checkpoint_every(2)
    fit(tiny_teacher_dir, tmp_path, "--trainer.max_steps", "2", *every)
    [last] = tmp_path.rglob("last.ckpt")
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SFDConfigError, match=r"model\.seed: 0 there, 7 now") as error:
        fit(tiny_teacher_dir, tmp_path, "--trainer.max_steps", "4", "--model.seed", "7",
            "--ckpt_path", "last", *every)  # fmt: skip
    assert "only the step budget may change" in str(error.value)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written by the refused run
    # Observing settings may change: callbacks (here none), the progress bar, the log interval.
    resumed = fit(tiny_teacher_dir, tmp_path, "--trainer.max_steps", "3",
                  "--trainer.log_every_n_steps", "2", "--ckpt_path", "last")  # fmt: skip
    assert resumed.trainer.global_step == 3
    # The file named explicitly is the user's choice, whatever its run folder, but it resumes
    # with its own model settings (Lightning puts them over the command line's): one that
    # differs would be dropped silently, so it is refused, naming it; the same settings resume.
    with pytest.raises(
        SFDConfigError, match=r"other model settings \(model\.seed: 0 there, 7 now\)"
    ):
        fit(tiny_teacher_dir, tmp_path / "c", "--trainer.max_steps", "3", "--model.seed", "7",
            "--ckpt_path", str(last))  # fmt: skip
    assert not (tmp_path / "c").exists()
    # An optimizer setting is no hyperparameter, but the optimizer state (its learning rate
    # included) comes back from the checkpoint: refused the same way.
    lr = "--model.generator_optimizer.init_args.lr"
    with pytest.raises(SFDConfigError, match=r"\(model\.generator_optimizer\.init_args\.lr: "):
        fit(tiny_teacher_dir, tmp_path / "c", "--trainer.max_steps", "3", lr, "0.01",
            "--ckpt_path", str(last))  # fmt: skip
    explicit = fit(tiny_teacher_dir, tmp_path / "c", "--trainer.max_steps", "3",
                   "--ckpt_path", str(last))  # fmt: skip
    assert explicit.trainer.global_step == 3
    # Nothing of the teacher is in a checkpoint: the same teacher from another folder resumes.
    moved = tmp_path / "moved-teacher"
    shutil.copytree(tiny_teacher_dir, moved)
    elsewhere = fit(moved, tmp_path / "d", "--trainer.max_steps", "3", "--ckpt_path", str(last))
    assert elsewhere.trainer.global_step == 3


def test_a_resume_under_other_adversarial_settings_is_refused_naming_them(
    tiny_teacher_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint carries the attack pool, and Lightning resumes a checkpoint file with the
    file's hyperparameters over the command line's: a resume whose model.adversarial differs (a
    setting, or adversarial SFD switched on or off) is refused in one line naming every
    differing key, exit status 2, before anything is written; the same settings resume."""
    from conftest import CONFIGS

    from sfd.cli import main

    adversarial = ["-c", str(CONFIGS / "adversarial.yaml")]
    fit(tiny_teacher_dir, tmp_path / "adv", *adversarial, "--trainer.max_steps", "2")
    fit(tiny_teacher_dir, tmp_path / "plain", "--trainer.max_steps", "2")
    [adv_ckpt] = (tmp_path / "adv").rglob("last.ckpt")
    [plain_ckpt] = (tmp_path / "plain").rglob("last.ckpt")
    before = sorted(tmp_path.rglob("*"))
    cases = [
        ([], adv_ckpt, "(model.adversarial: {"),
        (adversarial, plain_ckpt, "(model.adversarial: None there, {"),
        ([*adversarial, "--model.adversarial.steps", "3", "--model.adversarial.share", "0.5"],
         adv_ckpt, "(model.adversarial.share: 0.25 there, 0.5 now; model.adversarial.steps: 2 "
         "there, 3 now)"),
    ]  # fmt: skip
    for extra, ckpt, fragment in cases:
        args = ["--trainer.max_steps", "3", "--ckpt_path", str(ckpt)]
        with pytest.raises(SFDConfigError) as error:
            fit(tiny_teacher_dir, tmp_path / "new", *extra, *args)
        message = str(error.value)
        assert "other model settings " + fragment in message and "\n" not in message, message
    # `--ckpt_path last`: the run-identity check names every differing key, in one line
    capsys.readouterr()
    argv = fit_args(tiny_teacher_dir, tmp_path / "adv", *adversarial, "--model.adversarial.lr",
                    "0.1", "--model.adversarial.steps", "3", "--trainer.max_steps", "3",
                    "--ckpt_path", "last")  # fmt: skip
    assert main(argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("sfd: error: --ckpt_path last found ")
    assert (
        "(model.adversarial.lr: 0.05 there, 0.1 now; model.adversarial.steps: 2 there, 3 now;"
        in line
    )
    assert sorted(tmp_path.rglob("*")) == before  # nothing written by the refused runs
    resumed = fit(tiny_teacher_dir, tmp_path / "new", *adversarial, "--trainer.max_steps", "3",
                  "--ckpt_path", str(adv_ckpt))  # fmt: skip
    assert resumed.trainer.global_step == 3


def test_a_restart_removes_the_stale_temporary_files_of_its_run(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    every = checkpoint_every(2)
    fit(tiny_teacher_dir, tmp_path, "--trainer.max_steps", "2", *every)
    [last] = tmp_path.rglob("last.ckpt")
    stale = [last.parent / ".last.ckpt.k1ll3d.tmp", last.parent / ".epoch=0-step=2.ckpt.x9.tmp"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    unrelated = last.parent / ".notes.tmp"
    unrelated.write_text("not a checkpoint")
    fit(tiny_teacher_dir, tmp_path, "--trainer.max_steps", "3", "--ckpt_path", "last", *every)
    assert not any(path.exists() for path in stale)
    assert unrelated.exists()


# --- nothing left behind by a failed start ------------------------------------------------------


def test_a_failure_before_the_first_iteration_leaves_nothing(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    probe = ["--trainer.callbacks+", "run_probes.FailAtStep"]
    with pytest.raises(RuntimeError, match="before the first iteration"):
        fit(tiny_teacher_dir, tmp_path / "new", *probe)
    assert not (tmp_path / "new").exists()  # config.yaml was written, then removed
    # In a folder with an earlier run, only what this command added goes.
    fit(tiny_teacher_dir, tmp_path / "old", "--trainer.max_steps", "2", *checkpoint_every(2))
    before = sorted((tmp_path / "old").rglob("*"))
    with pytest.raises(RuntimeError, match="before the first iteration"):
        fit(tiny_teacher_dir, tmp_path / "old", *probe)
    assert sorted((tmp_path / "old").rglob("*")) == before


def test_a_failure_after_training_began_keeps_the_run(tiny_teacher_dir: Path, tmp_path: Path):
    probe = ["--trainer.callbacks+", "run_probes.FailAtStep", "--trainer.callbacks.step", "2"]
    with pytest.raises(RuntimeError, match="after iteration 2"):
        fit(tiny_teacher_dir, tmp_path, "--trainer.max_steps", "4", *probe)
    assert list(tmp_path.rglob("config.yaml"))  # logs of a run that trained stay for diagnosis


def test_sfd_teacher_failure_after_the_config_callback_leaves_nothing(tmp_path: Path) -> None:
    from conftest import CONFIGS

    from sfd.cli.teacher_cli import teacher_lightning_cli

    args = ["fit", "-c", str(CONFIGS / "teacher_digits.yaml"), "--trainer.max_steps", "2",
            "--output_dir", str(tmp_path / "teacher"), "--model.block_out_channels", "[8, 16]",
            "--model.norm_num_groups", "4", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks+", "run_probes.FailAtStep"]  # fmt: skip
    with pytest.raises(RuntimeError, match="before the first iteration"):
        teacher_lightning_cli(args)
    assert sorted(tmp_path.iterdir()) == []


# --- warnings -----------------------------------------------------------------------------------


def recorded_run(tiny_teacher_dir: Path, root: Path, through_cli: bool) -> list[str]:
    """Warning messages of a 2-iteration run, through `sfd fit` or a plain Trainer."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if through_cli:
            fit(tiny_teacher_dir, root, "--trainer.max_steps", "2",
                "--trainer.callbacks+", "run_probes.WarnOnTrainStart")  # fmt: skip
        else:
            import lightning.pytorch as pl
            from run_probes import WarnOnTrainStart

            from sfd.core.conditions import ClassConditions
            from sfd.core.module import SFDModule
            from sfd.core.sigma import UniformTimestepSigma
            from sfd.teachers import PretrainedVPTeacher

            module = SFDModule(
                PretrainedVPTeacher(str(tiny_teacher_dir)),
                ClassConditions(0, 1),
                UniformTimestepSigma(),
                batch_size=2,
            )
            trainer = pl.Trainer(
                max_steps=2,
                default_root_dir=root,
                enable_progress_bar=False,
                enable_model_summary=False,
                enable_checkpointing=False,
                logger=False,
                callbacks=[WarnOnTrainStart()],
            )
            trainer.fit(module)
    return [str(w.message) for w in caught]


def is_design(message: str) -> bool:
    return any(re.search(pattern, message) for pattern in HIDDEN_WARNINGS)


def test_design_warnings_are_hidden_and_real_ones_stay(
    tiny_teacher_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    filters = {name: logging.getLogger(name).filters[:] for name in HIDDEN_LOG_LINES}
    for name in HIDDEN_LOG_LINES:  # an earlier sfd fit in this process installed them
        logging.getLogger(name).filters.clear()
    try:
        with caplog.at_level(logging.INFO):
            plain = recorded_run(tiny_teacher_dir, tmp_path / "plain", through_cli=False)
        assert any(is_design(m) for m in plain), plain  # control: Lightning does warn
        assert "litlogger" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.INFO):
            cli = recorded_run(tiny_teacher_dir, tmp_path / "cli", through_cli=True)
    finally:
        for name, kept in filters.items():
            logging.getLogger(name).filters[:] = kept
    assert not [m for m in cli if is_design(m)], cli
    assert "probe: a real problem" in cli
    assert "litlogger" not in caplog.text


# --- one-line errors -------------------------------------------------------------------------


def test_one_line_names_the_nested_key_and_value() -> None:
    error = Exception(
        'Parser key "model.conditions":\n'
        "  Problem with given class_path 'sfd.core.conditions.ClassConditions':\n"
        '    Parser key "forget":\n'
        "      Does not validate against any of the Union subtypes\n"
        "      Subtypes: [<class 'int'>, list[int]]\n"
        "      Given value type: <class 'str'>\n"
        "      Given value: abc\n"
    )
    assert one_line(error) == (
        "model.conditions.init_args.forget=abc: expected one of [int, list[int]]"
    )
    assert one_line(Exception('Parser key "model.batch_size":\n  Expected a <class \'int\'>. '
                              "Got value: x")) == "model.batch_size=x: expected int"  # fmt: skip


def test_the_checkpoint_of_a_plain_copy_keeps_its_weights(tiny_teacher_dir: Path, tmp_path: Path):
    """A copied run folder resumes (the record is in the checkpoint, not in the path)."""
    fit(tiny_teacher_dir, tmp_path / "a", "--trainer.max_steps", "2", *checkpoint_every(2))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    resumed = fit(tiny_teacher_dir, tmp_path / "b", "--trainer.max_steps", "3",
                  "--ckpt_path", "last", *checkpoint_every(2))  # fmt: skip
    assert resumed.trainer.global_step == 3


TESTED_PAGE = "docs/training.md"


def test_docs_plain_trainer_snippet(
    tiny_teacher_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plain-Trainer block of docs/training.md as written: trains, checkpoints atomically, resumes."""
    from sfd.training.checkpoint_io import AtomicCheckpointIO

    monkeypatch.chdir(tmp_path)
    shutil.copytree(tiny_teacher_dir, tmp_path / "runs" / "teachers" / "tiny")
    code = compile(docs_block(TESTED_PAGE, "plain-trainer snippet"), TESTED_PAGE, "exec")
    first: dict = {}
    exec(code, first)
    assert first["trainer"].global_step == 20
    assert isinstance(first["trainer"].strategy.checkpoint_io, AtomicCheckpointIO)
    [last] = (tmp_path / "runs" / "python-api").rglob("last.ckpt")
    second: dict = {}
    exec(code, second)  # a restart of the same script
    assert second["trainer"].ckpt_path == str(last.resolve())
    assert second["trainer"].global_step == 20


def test_every_number_setting_of_the_module_names_its_range_for_nan_inf_and_words() -> None:
    """`--model.X nan` (or inf, or a word) on any float setting of `SFDModule`: one line naming the
    setting, the value and the allowed range (the module's own check), not jsonargparse's bare
    "expected float"."""
    import inspect

    from sfd.apps.harness.settings import default_sfd_config
    from sfd.core.module import SFDModule
    from sfd.training.cli import parse_fit_config

    parameters = inspect.signature(SFDModule.__init__).parameters.values()
    floats = [p.name for p in parameters if "float" in str(p.annotation)]
    assert {"alpha", "ema_decay", "sigma_init", "t_init", "cond_dropout"} <= set(floats)
    values = ["nan", "inf", "lots"]
    for index, name in enumerate(floats):
        value = values[index % len(values)]
        with pytest.raises(SFDConfigError) as refused:
            parse_fit_config(["-c", str(default_sfd_config()), f"--model.{name}", value],
                             one_line_errors=True)  # fmt: skip
        message = str(refused.value)
        shown = value if value != "lots" else repr(value)
        assert message.startswith(f"model.{name}={shown} must be "), message
        assert "\n" not in message and ("in [" in message or "in (" in message), message
    with pytest.raises(SFDConfigError) as refused:  # YAML's own .nan is a float: the same line
        parse_fit_config(["-c", str(default_sfd_config()), "--model.alpha", ".nan"],
                         one_line_errors=True)  # fmt: skip
    assert str(refused.value) == "model.alpha=nan must be a finite number in [0, inf)"


@pytest.mark.parametrize("optimizer", ["fake_optimizer", "generator_optimizer"])
def test_every_optimizer_setting_names_its_range_for_nan_inf_and_words(optimizer, tmp_path) -> None:
    """`--model.<optimizer>.init_args.lr nan` (inf, -inf, a word; eps, weight_decay, betas; on the
    command line, in a config file or as the setting's JSON): one line naming the option, the
    value and the allowed range (`guards.check_optimizer_setting`), not "expected float"."""
    from sfd.apps.harness.settings import default_sfd_config
    from sfd.training.cli import parse_fit_config

    key = f"model.{optimizer}.init_args"
    cases = [
        ("lr", "nan", "lr=nan must be a finite number in (0, inf)"),
        ("lr", "inf", "lr=inf must be a finite number in (0, inf)"),
        ("lr", "-inf", "lr=-inf must be a finite number in (0, inf)"),
        ("lr", "fast", "lr='fast' must be a finite number in (0, inf)"),
        ("eps", "nan", "eps=nan must be a finite number in [0, inf)"),
        ("weight_decay", "inf", "weight_decay=inf must be a finite number in [0, inf)"),
        ("betas", "[0.9, nan]", "betas[1]=nan must be a finite number in [0, 1)"),
        ("betas", "[inf, 0.9]", "betas[0]=inf must be a finite number in [0, 1)"),
    ]
    preset = ["-c", str(default_sfd_config())]
    for setting, value, expected in cases:
        with pytest.raises(SFDConfigError) as refused:
            parse_fit_config([*preset, f"--{key}.{setting}", value], one_line_errors=True)
        assert str(refused.value) == f"{key}.{expected}"
    config = tmp_path / "optimizer.yaml"
    config.write_text(f"model:\n  {optimizer}:\n    class_path: torch.optim.Adam\n"
                      "    init_args:\n      lr: nan\n")  # fmt: skip
    inline = '{"class_path": "torch.optim.Adam", "init_args": {"lr": "inf"}}'
    for args, expected in (
        (["-c", str(config)], "lr=nan must be a finite number in (0, inf)"),
        ([f"--model.{optimizer}", inline], "lr=inf must be a finite number in (0, inf)"),
    ):
        with pytest.raises(SFDConfigError) as refused:
            parse_fit_config([*preset, *args], one_line_errors=True)
        assert str(refused.value) == f"{key}.{expected}"


def test_a_signed_value_argparse_takes_for_an_option_is_attached_to_its_option() -> None:
    """-inf, -nan and -1e3 after an option become its value (`--x=-inf`); what argparse already
    takes for a number (-1, -.5), option names, `=` forms and tokens after `--` stay as they are."""
    from sfd.training.config_files import attach_signed_values

    args = ["-c", "a.yaml", "--model.alpha", "-inf", "--model.t_init", "-1e3", "--x", "-nan"]
    assert attach_signed_values(args) == [
        "-c", "a.yaml", "--model.alpha=-inf", "--model.t_init=-1e3", "--x=-nan",
    ]  # fmt: skip
    kept = ["--a", "-1", "--b", "-.5", "--c", "--d", "--e=-inf", "--f", "-infinite", "-g", "-inf"]
    assert attach_signed_values(kept) == kept
    assert attach_signed_values(["--", "--a", "-inf"]) == ["--", "--a", "-inf"]
    assert attach_signed_values(["--a", "-inf", "--", "--b", "-inf"]) == [
        "--a=-inf", "--", "--b", "-inf",
    ]  # fmt: skip
