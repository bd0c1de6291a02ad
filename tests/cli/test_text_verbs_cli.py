"""`sfd demo-text`, `sfd teacher-text` and `sfd eval-text --classifier`: one-line user errors."""

from __future__ import annotations

import pytest

from sfd.cli import main


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["demo-text", "--forget", "banana"], "--forget 'banana' is not a class"),
        (["demo-text", "--forget", "one", "--override", "1"], "--override '1' equals --forget"),
        (["demo-text", "--bogus", "1"], "unknown option '--bogus'"),
        (["demo-text", "--data", "/nonexistent"], "no Fashion-MNIST idx files"),
        (["demo-text", "--trainer.max_steps", "0"], "--trainer.max_steps is too small"),
        (["demo-text", "--neighbours", "7"], "--neighbours 7 is not a remain class"),
        (["teacher-text", "--output-dir", "x", "--max-steps", "0"], "teacher max_steps=0"),
    ],
)
def test_user_mistakes_are_one_line(args, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main([*args, "--output-dir", str(tmp_path / "out")] if args[0] == "demo-text" else args)
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("sfd: error: ") and message in err[-1], err[-1]
    assert not (tmp_path / "out").exists()  # nothing written


def test_eval_text_concept_mode_needs_a_saved_classifier(tmp_path, capsys):
    (tmp_path / "prompts.txt").write_text("the number 7\n")
    args = ["eval-text", str(tmp_path), "--classifier", str(tmp_path / "none")]
    args += ["--forget-prompts", str(tmp_path / "prompts.txt"), "--remain-prompts", "r.csv"]
    args += ["--forget", "7", "--override", "1", "--output-dir", str(tmp_path / "out")]
    assert main(args) == 2
    assert "is not a saved classifier" in capsys.readouterr().err
