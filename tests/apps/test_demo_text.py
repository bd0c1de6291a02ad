"""`sfd demo-text` end to end for a few steps: digits in pixels, tiny Fashion-MNIST files in latents."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
from text_fixtures import save_tiny_bert, write_tiny_fashion

from sfd.apps.demo_text.run import TextDemoSettings, run_text_demo
from sfd.cli import main
from sfd.eval.attack_budget import AttackBudget, DiscreteAttackBudget, RevivalBudget
from sfd.pipelines.io import load_pipeline
from sfd.pipelines.one_step_text import OneStepTextPipeline
from sfd.teachers import StableDiffusionTeacher

TINY_SFD = ["--trainer.max_steps", "2", "--model.batch_size", "2"]


def tiny_settings(root: Path, data: str, bert: Path) -> TextDemoSettings:
    return TextDemoSettings(
        output_dir=root / "report",
        data=data,
        teacher_cache=root / "cache",
        teacher_steps=2,
        teacher_channels=(8, 16),
        vae_steps=2,
        text_encoder=str(bert),
        classifier_steps=2,
        sfd_args=TINY_SFD,
        curve_every=1,  # under the rule: a probe interval within the 2 iterations
        curve_per_class=1,
        forget_images=4,
        remain_per_class=2,
        ddim_steps=2,
        attacks={
            "soft": AttackBudget(num_tokens=2, steps=1, batch_size=2, eval_samples=2, restarts=2),
            "discrete": DiscreteAttackBudget(
                num_tokens=2,
                steps=1,
                top_k=2,
                candidates=2,
                batch_size=2,
                eval_samples=2,
                restarts=2,
            ),
        },
        revival=RevivalBudget(steps=2, images=1, batch_size=2),
        attack_prompts=1,
        attack_ddim_steps=1,
        grid_per_prompt=1,
        progress=False,
    )


def check_in_range(metrics: dict) -> None:
    for key in ("teacher", "distilled_without_forgetting", "sfd"):
        m = metrics[key]
        for share in (
            m["forget_train"]["ua"],
            m["forget_train"]["as_override"],
            m["forget_paraphrases"]["ua"],
            m["remain_accuracy"],
            m["neighbour_accuracy"],
            *m["remain_per_class"].values(),
            metrics["attack"][key]["soft"]["success_rate"],
            metrics["attack"][key]["soft"]["success_rate_without_attack"],
            metrics["attack"][key]["paraphrases"]["success_rate"],
            *metrics["revival"][key]["ua"],
        ):
            assert 0.0 <= share <= 1.0
        assert math.isfinite(m["fid_remain"]) and m["fid_remain"] >= -1e-6
        assert math.isfinite(m["kid_remain"])
        assert sum(m["forget_train"]["histogram"]) == 4
        assert metrics["attack"][key]["paraphrases"]["success_rate"] == pytest.approx(
            1 - m["forget_paraphrases"]["ua"]
        )
        # revival starts from the model itself: UA at step 0 is the evaluation's own UA
        assert metrics["revival"][key]["ua"][0] == m["forget_train"]["ua"]
        assert metrics["revival"][key]["steps"] == [0, 1, 2]
    assert "discrete" not in metrics["attack"]["teacher"]  # the teacher: soft prompt only
    for key in ("distilled_without_forgetting", "sfd"):
        assert 0.0 <= metrics["attack"][key]["discrete"]["success_rate"] <= 1.0
        assert metrics["attack"][key]["discrete"]["budget"]["restarts"] == 2
        assert metrics["attack"][key]["soft"]["budget"]["restarts"] == 2
    # the teacher, a reference row, is attacked with one restart (`teacher_attack_restarts`)
    assert metrics["attack"]["teacher"]["soft"]["budget"]["restarts"] == 1
    assert set(metrics["protocol"]["attack_seconds"]) == set(metrics["attack"])
    protocol = metrics["protocol"]
    assert set(protocol["phase_cpu_seconds"]) == set(protocol["phase_seconds"])
    assert all(entry["met"] in (True, False) for entry in metrics["targets"].values())  # measured
    sets = metrics["protocol"]["prompt_sets"]
    assert set(sets) == {"forget_train", "forget_paraphrases", "remain"}
    assert all(len(entry["file_sha256"]) == 64 for entry in sets.values())
    assert metrics["protocol"]["libraries"]["transformers"] != "not installed"


@pytest.mark.parametrize("space", ["pixels", "latents"])
def test_text_demo_writes_every_artefact(tmp_path, space, single_thread):
    bert = save_tiny_bert(tmp_path / "bert")
    data = "digits" if space == "pixels" else str(write_tiny_fashion(tmp_path / "fashion"))
    # the fixed iteration count first (--no-until-forgotten); the second run below has the rule
    settings = replace(
        tiny_settings(tmp_path, data, bert), until_forgotten=False, attack_objective="both"
    )
    paths = run_text_demo(settings)
    for name in ("metrics", "report", "samples", "forgetting_curve", "forget_histogram"):
        assert paths[name].is_file() and paths[name].stat().st_size > 0, name
    report = settings.output_dir
    for part in ("generator", "generator_without_forgetting", "classifier", "attacker_classifier",
                 "prompts"):  # fmt: skip
        assert (report / part).is_dir(), part
    metrics = json.loads(paths["metrics"].read_text())
    for name in ("soft", "discrete"):  # white-box (with its agreement) and transfer, side by side
        white, transfer = (
            metrics["attack"]["sfd"][name],
            metrics["attack"]["sfd"][f"{name}-transfer"],
        )
        assert white["objective_classifier"] == "white-box" and "agreement" in white
        assert transfer["objective_classifier"] == "transfer"
    assert metrics["protocol"]["attacker_classifier"]["heldout_accuracy"] >= 0
    check_in_range(metrics)
    pipeline = load_pipeline(report / "generator")
    assert isinstance(pipeline, OneStepTextPipeline)
    assert (pipeline.vae is None) == (space == "pixels")
    teacher_dir = Path(metrics["protocol"]["teacher"]["folder"])
    assert (teacher_dir / "vae").is_dir() == (space == "latents")
    assert StableDiffusionTeacher(str(teacher_dir)).sample_shape == (
        (1, 8, 8) if space == "pixels" else (4, 8, 8)
    )
    assert len(metrics["forgetting_curve"]) >= 2
    assert not metrics["protocol"]["classifier"]["reused_from_cache"]
    two_stage = metrics["protocol"]["two_stage"]  # stage 1 = the no-forgetting baseline
    assert two_stage["stage1_iterations"] == 2 and not two_stage["stage1_reused_from_cache"]
    assert two_stage["stage2_completion"] is None  # the fixed count: every iteration ran
    assert 0 <= metrics["protocol"]["ua_ceiling"] <= 1
    assert "UA ceiling under this classifier" in paths["report"].read_text()
    assert metrics["iterations"] == two_stage["stage2_iterations"] == two_stage["stage2_max_steps"]
    assert metrics["forgetting_curve"][0]["iteration"] == 0  # SFD starts at the stage-1 generator
    if space == "latents":
        return
    # a second run reuses the cached teacher and classifier, and scores with the same classifier
    # (with the completion rule on stage 2, the default: the judge probes the text teacher, the
    # card says why stage 2 stopped)
    again = run_text_demo(replace(settings, output_dir=tmp_path / "again", until_forgotten=True))
    card = (tmp_path / "again" / "generator" / "README.md").read_text()
    assert "Stopped by the completion rule (`UntilForgotten`)" in card
    again_metrics = json.loads(again["metrics"].read_text())
    protocol = again_metrics["protocol"]
    # metrics.json says where the rule stopped stage 2 and counts the iterations it used
    completion = protocol["two_stage"]["stage2_completion"]
    assert completion["stop_reason"] in ("forgotten", "stalled", "max_steps")
    used = completion["iterations"]
    assert again_metrics["iterations"] == protocol["two_stage"]["stage2_iterations"] == used
    # EMA after forgetting, the default as in `sfd demo`: the restarted average must hold 150
    # iterations (the rule's setting; 0 would be None, off)
    assert completion["settings"]["average_after"] == 150
    restart = completion["averaged_from"]  # a probe's iteration before the last one, or none
    if restart is not None:
        assert restart % completion["settings"]["every_n"] == 0
        assert restart < used
    assert f"Stopped by the completion rule (`UntilForgotten`): {completion['stop_reason']}" in card
    last = completion["last_probe"]
    curve = {p["iteration"]: p["ua"] for p in again_metrics["forgetting_curve"]}
    assert last["iteration"] == used and last["classifier_ua"] == curve[used]
    assert protocol["teacher"]["reused_from_cache"] and protocol["classifier"]["reused_from_cache"]
    assert (
        protocol["classifier_heldout_accuracy"]
        == metrics["protocol"]["classifier_heldout_accuracy"]
    )
    # `sfd eval-text` on the report's own files reproduces the demo's numbers exactly, on the
    # exported generator and on the teacher folder (guided DDIM, attack through 1 step).
    prompts = report / "prompts"
    common = [
        "--classifier", str(report / "classifier"),
        "--forget-prompts", str(prompts / "forget_prompts.txt"),
        "--paraphrases", str(prompts / "forget_paraphrases.txt"),
        "--remain-prompts", str(prompts / "remain_prompts.csv"),
        "--forget", str(metrics["forget"]), "--override", str(metrics["override"]),
        "--forget-images", "4", "--remain-per-class", "2", "--ddim-steps", "2",
        "--no-progress",
    ]  # fmt: skip
    assert (
        main(
            ["eval-text", str(report / "generator"), *common, "--output-dir", str(tmp_path / "e1")]
        )
        == 0
    )
    again = json.loads((tmp_path / "e1" / "metrics.json").read_text())["evaluation"]
    assert again["forget_train"] == metrics["sfd"]["forget_train"]
    assert again["remain_per_class"] == metrics["sfd"]["remain_per_class"]
    assert again["fid_remain"] == pytest.approx(metrics["sfd"]["fid_remain"], rel=1e-6)
    guidance = str(metrics["protocol"]["guidance"]["teacher_eval"])
    attack = ["--attack", "--attack-steps", "1", "--attack-batch", "2", "--attack-eval-samples",
              "2", "--attack-restarts", "1", "--attack-tokens", "2", "--attack-top-k", "2",
              "--attack-candidates", "2", "--revival", "2", "--revival-images", "2"]  # fmt: skip
    out = tmp_path / "e2"
    code = main(["eval-text", str(teacher_dir), *common, "--guidance-scale", guidance, *attack,
                 "--attack-ddim-steps", "1", "--output-dir", str(out), "--attack-objective",
                 "both", "--cache", str(settings.teacher_cache)])  # fmt: skip
    assert code == 0
    teacher = json.loads((out / "metrics.json").read_text())
    # the demo's attacker classifier, found again from classifier/'s recorded recipe
    assert teacher["protocol"]["attacker_classifier"]["reused_from_cache"]
    assert teacher["attacks"]["soft-transfer"]["objective_classifier"] == "transfer"
    assert teacher["evaluation"]["forget_train"] == metrics["teacher"]["forget_train"]
    assert teacher["attacks"]["soft"]["sampler"].startswith("DDIM 1 steps")
    discrete = teacher["attacks"]["discrete"]["per_prompt"][0]
    assert discrete["attacked_prompt"].startswith(discrete["prompt"])
    assert teacher["attacks"]["paraphrases"]["success_rate"] == pytest.approx(
        1 - teacher["evaluation"]["forget_paraphrases"]["ua"]
    )
    assert teacher["revival"]["ua"][0] == teacher["evaluation"]["forget_train"]["ua"]
    assert "DDPM schedule" in teacher["revival"]["objective"]
    # A run forgetting another concept reuses the cached teacher and stage 1 (distilled on every
    # class's captions, the same for every pair).
    other = replace(tiny_settings(tmp_path, data, bert), forget="two", override="five")
    protocol = json.loads(run_text_demo(other)["metrics"].read_text())["protocol"]
    assert protocol["teacher"]["reused_from_cache"] and protocol["forget"] == 2
    assert protocol["two_stage"]["stage1_folder"] == two_stage["stage1_folder"]
    assert protocol["two_stage"]["stage1_reused_from_cache"]


@pytest.mark.parametrize("data", ["digits", "fashion-mnist"])
def test_presets_parse_and_eval_text_defaults_to_their_teacher_guidance(data: str) -> None:
    from sfd.apps.harness.text_folders import TEACHER_GUIDANCE
    from sfd.training.cli import parse_fit_config

    settings = TextDemoSettings(data=data)
    sfd = parse_fit_config(settings.sfd_command_line())
    stage1 = parse_fit_config(settings.sfd_command_line(stage="stage1"))
    assert sfd.model.teacher_guidance == TEACHER_GUIDANCE
    assert (stage1.model.lambda_sg_forget, stage1.model.lambda_g_forget) == (0.0, 0.0)
    assert stage1.trainer.max_steps != sfd.trainer.max_steps  # the overlay is composed in


@pytest.mark.parametrize("family", ["unet", "sd3"])
@pytest.mark.parametrize("data", ["digits", "fashion-mnist"])
def test_stage_two_is_a_cap_of_600_under_the_rule(data: str, family: str) -> None:
    """As in the class demos: stage 2's max_steps is a cap (600) inside which the completion rule
    stops at about restart + --average-after; stage 1 keeps its own count (400, its cache key);
    --trainer.max_steps still sets stage 2."""
    from sfd.training.cli import parse_fit_config

    settings = TextDemoSettings(data=data, family=family)
    assert settings.until_forgotten and settings.average_after == 150
    assert parse_fit_config(settings.sfd_command_line()).trainer.max_steps == 600
    assert parse_fit_config(settings.sfd_command_line(stage="stage1")).trainer.max_steps == 400
    given = replace(settings, sfd_args=["--trainer.max_steps", "50"])
    assert parse_fit_config(given.sfd_command_line()).trainer.max_steps == 50


@pytest.mark.slow
def test_text_demo_on_the_flow_teacher(tmp_path, single_thread):
    """`--family sd3`: an SD3 folder through SD3Teacher, OneStepSD3Pipeline exports, eval-text."""
    from sfd.pipelines.one_step_flow import OneStepSD3Pipeline
    from sfd.teachers import SD3Teacher

    bert = save_tiny_bert(tmp_path / "bert")
    settings = replace(tiny_settings(tmp_path, "digits", bert), family="sd3", teacher_channels=None)
    paths = run_text_demo(settings)
    metrics = json.loads(paths["metrics"].read_text())
    check_in_range(metrics)
    assert metrics["protocol"]["samplers"]["teacher"].startswith("flow Euler 2 steps")
    assert metrics["protocol"]["attack_samplers"]["teacher"].startswith("flow Euler 1 steps")
    assert "\n| teacher (flow Euler) | 2 |" in paths["report"].read_text()  # not "(DDIM)"
    teacher_dir = Path(metrics["protocol"]["teacher"]["folder"])
    assert json.loads((teacher_dir / "model_index.json").read_text())["_class_name"] == (
        "StableDiffusion3Pipeline"
    )
    assert SD3Teacher(str(teacher_dir)).sample_shape == (1, 8, 8)
    report = settings.output_dir
    for part in ("generator", "generator_without_forgetting"):
        pipeline = load_pipeline(report / part)
        assert isinstance(pipeline, OneStepSD3Pipeline) and pipeline.vae is None
    prompts = report / "prompts"
    code = main([
        "eval-text", str(report / "generator"), "--classifier", str(report / "classifier"),
        "--forget-prompts", str(prompts / "forget_prompts.txt"),
        "--remain-prompts", str(prompts / "remain_prompts.csv"),
        "--forget", str(metrics["forget"]), "--override", str(metrics["override"]),
        "--forget-images", "4", "--remain-per-class", "2", "--no-progress",
        "--output-dir", str(tmp_path / "e1"),
    ])  # fmt: skip
    assert code == 0
    again = json.loads((tmp_path / "e1" / "metrics.json").read_text())["evaluation"]
    assert again["forget_train"] == metrics["sfd"]["forget_train"]
    assert again["remain_per_class"] == metrics["sfd"]["remain_per_class"]


def test_flow_presets_parse_with_flow_times() -> None:
    from sfd.core.sigma import LogitNormalTime
    from sfd.training.cli import parse_fit_config

    for data in ("digits", "fashion-mnist"):
        settings = TextDemoSettings(data=data, family="sd3")
        sfd = parse_fit_config(settings.sfd_command_line())
        stage1 = parse_fit_config(settings.sfd_command_line(stage="stage1"))
        assert sfd.model.teacher.class_path == "sfd.teachers.SD3Teacher"
        assert sfd.model.sigma_sampler.class_path.endswith(LogitNormalTime.__name__)
        assert 0 < sfd.model.t_init < 1 and sfd.model.sigma_init is None
        assert stage1.model.t_init == sfd.model.t_init
        assert settings.teacher_sampler_steps() == 28


@pytest.mark.slow  # ~40 s: a tiny demo end to end
def test_text_demo_adversarial_trains_stage2_against_the_attack(tmp_path, single_thread):
    """`--adversarial`: stage 2 is adversarial SFD (its own text encoder, the stage-1 networks)."""
    bert = save_tiny_bert(tmp_path / "bert")
    settings = replace(tiny_settings(tmp_path, "digits", bert), adversarial=True)
    tiny_attack = ["--model.adversarial.tokens", "2", "--model.adversarial.steps", "1"]
    settings.sfd_args = [*TINY_SFD, *tiny_attack]
    paths = run_text_demo(settings)
    metrics = json.loads(paths["metrics"].read_text())
    check_in_range(metrics)
    record = json.loads((settings.output_dir / "generator" / "sfd_export.json").read_text())
    assert record["training"]["hyperparameters"]["adversarial"]["tokens"] == 2
    [log] = (settings.output_dir / "logs" / "sfd").rglob("metrics.csv")
    header = log.read_text().splitlines()[0].split(",")  # the attacked rows were trained on
    assert {"adversarial/objective", "fake/adversarial", "generator/adversarial"} <= set(header)


@pytest.mark.slow  # ~60 s: a tiny flow demo end to end
def test_flow_text_demo_adversarial_attacks_the_sequence_encoder(tmp_path, single_thread):
    """`--family sd3 --adversarial`: stage 2 is adversarial SFD through the SD3 folder's T5 slot
    (the tiny BERT), stage 1 plain distillation."""
    bert = save_tiny_bert(tmp_path / "bert")
    settings = replace(
        tiny_settings(tmp_path, "digits", bert),
        family="sd3",
        teacher_channels=None,
        adversarial=True,
    )
    settings.sfd_args = [
        *TINY_SFD,
        "--model.adversarial.tokens",
        "2",
        "--model.adversarial.steps",
        "1",
    ]
    paths = run_text_demo(settings)
    check_in_range(json.loads(paths["metrics"].read_text()))
    record = json.loads((settings.output_dir / "generator" / "sfd_export.json").read_text())
    assert record["training"]["hyperparameters"]["adversarial"]["tokens"] == 2
    [log] = (settings.output_dir / "logs" / "sfd").rglob("metrics.csv")
    header = log.read_text().splitlines()[0].split(",")
    assert {"adversarial/objective", "fake/adversarial", "generator/adversarial"} <= set(header)
    [stage1] = (settings.output_dir / "logs" / "stage1").rglob("metrics.csv")
    assert "adversarial/objective" not in stage1.read_text().splitlines()[0]


@pytest.mark.slow  # ~40 s: a tiny demo end to end
def test_text_demo_shared_base_trains_both_stages_as_adapters(tmp_path, single_thread):
    """`--model.adapters.*`: stage 1 trains adapters of the frozen teacher and is cached as them
    (not the base), stage 2 continues from them; both exports are plain merged networks."""
    bert = save_tiny_bert(tmp_path / "bert")
    settings = tiny_settings(tmp_path, "digits", bert)
    settings.sfd_args = [*TINY_SFD, "--model.adapters.rank", "2"]
    paths = run_text_demo(settings)
    metrics = json.loads(paths["metrics"].read_text())
    check_in_range(metrics)
    two_stage = metrics["protocol"]["two_stage"]
    assert two_stage["stage2_start"] == (
        "the stage-1 generator's and fake score's adapters (shared base)"
    )
    assert two_stage["stage2_training_seconds"] > 0
    assert metrics["protocol"]["sfd_settings"]["model"]["adapters"]["rank"] == 2
    folder = Path(two_stage["stage1_folder"])
    stage1 = json.loads((folder / "cache.json").read_text())
    assert stage1["model"]["adapters"]["rank"] == 2
    assert sorted(p.name for p in folder.iterdir()) == ["adapters", "cache.json", "run.json"]
    record = json.loads((settings.output_dir / "generator" / "sfd_export.json").read_text())
    assert record["training"]["adapters"]["rank"] == 2
    assert record["training"]["adapters"]["start_from"] == str(folder / "adapters")
    assert two_stage["stage2_iterations"] == record["training"]["global_step"]  # those that ran
    for export in ("generator", "generator_without_forgetting"):
        weights = load_pipeline(settings.output_dir / export).unet.state_dict()
        assert not any("lora" in key for key in weights)  # merged: a plain network
    pipeline = load_pipeline(settings.output_dir / "generator")
    weights = pipeline.unet.state_dict()
    full = sum(w.numel() for w in weights.values())
    assert 0 < record["training"]["trained_weights"]["generator"] < full


def test_a_target_the_run_did_not_measure_reads_not_measured() -> None:
    """Under --attack-objective transfer the white-box soft attack is absent: its target is "not
    measured" (met None), never "not met"; with it, the ratio is checked as before."""
    from types import SimpleNamespace

    from sfd.apps.demo_text.report import TextDemoResults, target_rows

    model = SimpleNamespace(ua=1.0, forget_paraphrases=None, remain_accuracy=0.9,
                            neighbour_accuracy=0.9, fid_remain=2.0)  # fmt: skip
    keys = ("teacher", "distilled_without_forgetting", "sfd")
    transfer_only = {key: {"soft-transfer": {"success_rate": 0.5}} for key in keys}
    results = TextDemoResults(10, 7, 1, [str(c) for c in range(10)], dict.fromkeys(keys, model),
                              transfer_only, [], [], 0, {}, {}, [])  # fmt: skip
    soft = results.targets()["soft_attack_at_most_half_of_no_forgetting"]
    assert soft == {"value": None, "met": None}
    row = [r for r in target_rows(results.targets()) if "soft_attack" in r]
    assert row == ["| soft_attack_at_most_half_of_no_forgetting | — | not measured |"]
    assert "| ua_train_at_least_99 | 1.000 | yes |" in target_rows(results.targets())
    white_box = {
        key: {"soft": {"success_rate": rate}} for key, rate in zip(keys, (1, 0.8, 0.2), strict=True)
    }
    measured = replace(results, attacks=white_box).targets()
    assert measured["soft_attack_at_most_half_of_no_forgetting"] == {"value": 0.25, "met": True}
