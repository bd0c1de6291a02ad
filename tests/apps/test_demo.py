"""`sfd demo` and `sfd eval` end to end on digits (tiny settings), the cache, and bad inputs."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_DIGITS_RUN
from PIL import Image

from sfd.apps.harness.cache import DONE_MARKER, cached_build
from sfd.apps.harness.settings import ClassRunSettings
from sfd.apps.harness.workspace import load_split
from sfd.cli import main
from sfd.eval.classifier import load_classifier, predict_labels
from sfd.images import from_uint8
from sfd.pipelines.io import load_generator
from sfd.pipelines.model_card import shown
from sfd.training.cli import parse_fit_config

TINY_ATTACK = ["--attack-steps", "2", "--attack-restarts", "1", "--attack-batch", "2",
               "--attack-eval-samples", "4", "--attack-ddim-steps", "1"]  # fmt: skip
TINY_DEMO = [*TINY_DIGITS_RUN, "--skip-full-schedule-timing", *TINY_ATTACK]
MODELS = ("teacher", "distilled_without_forgetting", "sfd")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One tiny demo run (forget 3 -> override 5), shared by the tests of this module."""
    root = tmp_path_factory.mktemp("demo")
    output, cache = root / "out", root / "cache"
    args = ["demo", "--output-dir", str(output), "--teacher-cache", str(cache)]
    objective = ["--attack-objective", "both"]  # white-box and transfer attacks
    revival = ["--revival", "4", "--revival-images", "2", "--revival-batch", "2"]
    assert main([*args, "--forget", "3", "--override", "5", *TINY_DEMO, *objective, *revival]) == 0
    return output, cache


def check_model_metrics(model: dict, nfe: int) -> None:
    for key in ("ua", "remain_accuracy", "forget_as_override"):
        assert 0.0 <= model[key] <= 1.0, key
    assert all(0.0 <= v <= 1.0 for v in model["remain_per_class"].values())
    assert math.isfinite(model["fid_remain"]) and model["fid_remain"] >= 0
    assert math.isfinite(model["kid_remain"]) and math.isfinite(model["kid_remain_std"])
    assert model["nfe"] == nfe
    assert model["images_per_second"] > 0
    assert sum(model["forget_histogram"]) == 6  # every forget-class sample is counted once


def test_demo_writes_every_artefact_with_valid_metrics(demo_run: tuple[Path, Path]) -> None:
    output, cache = demo_run
    for name in ("metrics.json", "report.md"):
        assert (output / name).is_file()
    for name in ("samples.png", "forgetting_curve.png", "forget_histogram.png"):
        with Image.open(output / name) as image:
            assert image.width > 100 and image.height > 100
    metrics = json.loads((output / "metrics.json").read_text())
    assert (metrics["forget"], metrics["override"]) == (3, 5)
    check_model_metrics(metrics["teacher"], nfe=3)
    check_model_metrics(metrics["distilled_without_forgetting"], nfe=1)
    check_model_metrics(metrics["sfd"], nfe=1)
    assert set(metrics["sfd"]["remain_per_class"]) == {str(c) for c in range(10)} - {"3"}
    curve = metrics["forgetting_curve"]
    assert [point["iteration"] for point in curve] == [0, 1, 2, 3]
    assert all(0 <= p["ua"] <= 1 and 0 <= p["remain_accuracy"] <= 1 for p in curve)
    for key in MODELS:  # the class-embedding attack on every model, with its budget
        attack = metrics["attack"][key]["class_embedding"]
        assert 0.0 <= attack["success_rate"] <= 1.0 and attack["budget"]["steps"] == 2
    assert metrics["attack"]["teacher"]["class_embedding"]["sampler"].startswith("DDIM 1 steps")
    assert "## Class-embedding attack" in (output / "report.md").read_text()
    for key in MODELS:  # the revival test on every model: UA after 0, N/4, N/2, N steps
        revival = metrics["revival"][key]
        assert revival["steps"] == [0, 1, 2, 4] and len(revival["losses"]) == 4
        assert all(0.0 <= ua <= 1.0 for ua in revival["ua"])
        assert revival["budget"] == {
            "steps": 4,
            "images": 2,
            "lr": 1e-4,
            "batch_size": 2,
            "seed": 0,
        }
        assert revival["condition"] == "the class label 3"
    revival_table = (output / "report.md").read_text().split("## Revival")[1]
    assert (
        "| model | UA after 0 steps | UA after 1 steps | UA after 2 steps | UA after 4 steps |"
        in revival_table
    )
    for title in (
        "teacher (DDIM)",
        "one-step, distilled without forgetting",
        "one-step SFD (forgetting)",
    ):
        assert f"\n| {title} | " in revival_table
    for key in MODELS:  # the transfer attack beside it; the attacker read the white-box images
        white, transfer = (metrics["attack"][key][f"class_embedding{s}"] for s in ("", "-transfer"))
        assert white["objective_classifier"] == "white-box"
        assert white["second_classifier_success_rate"] is not None
        assert transfer["objective_classifier"] == "transfer"
        assert transfer["objective"].startswith("minimise CE(attacker classifier(")
    attacker = metrics["protocol"]["attacker_classifier"]
    assert attacker["folder"] != metrics["protocol"]["classifier"]["folder"]
    copied = load_classifier(output / "attacker_classifier")  # beside the judge, as in demo-text
    cached = load_classifier(attacker["folder"]).state_dict()
    assert all(torch.equal(v, cached[k]) for k, v in copied.state_dict().items())
    assert (output / "attacker_classifier" / "cache.json").is_file()  # its recipe travels along
    assert metrics["protocol"]["attack_objective"] == "both"
    protocol = metrics["protocol"]
    assert protocol["seed"] == 0 and protocol["generated_per_class"] == 6
    assert protocol["libraries"]["torchmetrics"] and protocol["libraries"]["diffusers"]
    assert protocol["sfd_settings"]["iterations"] == 3
    two_stage = protocol["two_stage"]  # stage 1 = the no-forgetting baseline, then SFD from it
    assert two_stage["stage1_iterations"] == 3 and two_stage["stage2_iterations"] == 3
    assert two_stage["stage2_max_steps"] == 3  # its cap (the attack suite's pages name it)
    assert not two_stage["stage1_reused_from_cache"]
    assert [p["iteration"] for p in metrics["forgetting_curve_without_forgetting"]] == [0, 1, 2, 3]
    assert 0 <= protocol["classifier_heldout_accuracy"] <= 1
    # the UA ceiling: 1 − the held-out real 5s the saved classifier reads as 3 (held-out split of
    # the run's data, read here through `predict_labels`)
    split = load_split("digits", protocol["classifier_settings"]["heldout_fraction"], 0, None)
    real = split.heldout.images[split.heldout.labels == 5]
    read = predict_labels(load_classifier(output / "classifier"), from_uint8(real)) == 3
    assert protocol["ua_ceiling"] == pytest.approx(1 - read.float().mean().item())
    report = (output / "report.md").read_text()
    assert "UA ceiling under this classifier" in report
    assert "| one-step SFD (forgetting) | 1 |" in report and "forgetting_curve.png" in report
    # the exported SFD generator loads, and the teacher sits in the cache with its marker
    assert load_generator(output / "generator").sample_shape == (1, 8, 8)
    assert load_generator(output / "generator_without_forgetting").sample_shape == (1, 8, 8)
    # both exports carry their run on the model card; the SFD one also its measured numbers
    exported = json.loads((output / "generator" / "sfd_export.json").read_text())
    assert exported["training"]["conditions"]["forget"] == [3]
    assert exported["metrics"]["ua"] == metrics["sfd"]["ua"]
    card = (output / "generator" / "README.md").read_text()
    assert f"| fid_remain | {shown(metrics['sfd']['fid_remain'])} |" in card
    distilled = json.loads(
        (output / "generator_without_forgetting" / "sfd_export.json").read_text()
    )
    assert distilled["training"]["hyperparameters"]["lambda_g_forget"] == 0.0
    (teacher_dir,) = [p for p in cache.iterdir() if p.name.startswith("teacher-")]
    assert (teacher_dir / DONE_MARKER).is_file() and (teacher_dir / "unet").is_dir()
    assert json.loads((teacher_dir / "sfd.json").read_text())["null_class"] == 10
    for kind, count in (("classifier", 2), ("stage1", 1)):  # the judge and the attacker
        assert len([p for p in cache.iterdir() if p.name.startswith(f"{kind}-")]) == count, kind


def test_demo_again_reuses_teacher_classifier_and_stage1(
    demo_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """... also with the completion rule on stage 2 (the default), which leaves stage 1 (and its
    cache) alone."""
    _, cache = demo_run
    output = tmp_path / "again"
    args = ["demo", "--output-dir", str(output), "--teacher-cache", str(cache)]
    assert main([*args, "--forget", "3", "--override", "5", *TINY_DEMO]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    protocol = metrics["protocol"]
    assert protocol["teacher"]["reused_from_cache"]
    assert protocol["classifier"]["reused_from_cache"]
    assert protocol["two_stage"]["stage1_reused_from_cache"]
    # the rule probed at the curve's interval, with the classifier's UA of the same point beside
    completion = protocol["two_stage"]["stage2_completion"]
    assert completion["stop_reason"] in ("forgotten", "max_steps")
    assert completion["iterations"] == protocol["two_stage"]["stage2_iterations"]
    # EMA after forgetting, the demos' default: the restarted average must hold 150 iterations
    assert completion["settings"]["average_after"] == 150
    restart = completion["averaged_from"]  # a probe's iteration before the last one, or none
    if restart is not None:
        assert restart % completion["settings"]["every_n"] == 0
        assert restart < completion["iterations"]
    last = completion["last_probe"]
    curve = {p["iteration"]: p["ua"] for p in metrics["forgetting_curve"]}
    assert last["classifier_ua"] == curve[last["iteration"]]
    assert 0 <= last["forget_rate"] <= 1 and 0 <= last["forget_rate_raw"] <= 1
    card = (output / "generator" / "README.md").read_text()
    assert f"Stopped by the completion rule (`UntilForgotten`): {completion['stop_reason']}" in card


def test_shared_base_demo_trains_both_stages_as_adapters_and_exports_full_generators(
    demo_run: tuple[Path, Path], tmp_path: Path
) -> None:
    """`--model.adapters.*` makes both stages shared-base runs: stage 1 is cached as its adapters
    (not the base), stage 2 starts from them, and both exported generators are plain networks."""
    _, cache = demo_run
    output = tmp_path / "shared"
    args = ["demo", "--output-dir", str(output), "--teacher-cache", str(cache)]
    extra = ["--model.adapters.rank", "4", "--no-until-forgotten"]  # the fixed iteration count
    assert main([*args, "--forget", "3", "--override", "5", *TINY_DEMO, *extra]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    protocol = metrics["protocol"]
    assert not protocol["two_stage"]["stage1_reused_from_cache"]  # its own cache entry
    stage1 = Path(protocol["two_stage"]["stage1_folder"])
    assert json.loads((stage1 / DONE_MARKER).read_text())["model"]["adapters"]["rank"] == 4
    assert sorted(p.name for p in stage1.iterdir()) == ["adapters", DONE_MARKER, "run.json"]
    assert protocol["two_stage"]["stage2_completion"] is None
    assert protocol["two_stage"]["stage2_max_steps"] == protocol["two_stage"]["stage2_iterations"]
    assert protocol["sfd_settings"]["model"]["adapters"]["rank"] == 4
    # stage 2 ran, and records, the shared base's overlay: the fake score's lr twice full copies'
    assert protocol["sfd_settings"]["model"]["fake_optimizer"]["init_args"]["lr"] == 2.4e-3
    check_model_metrics(metrics["sfd"], nfe=1)
    check_model_metrics(metrics["distilled_without_forgetting"], nfe=1)
    generator = load_generator(output / "generator")
    distilled = load_generator(output / "generator_without_forgetting")
    for network in (generator, distilled):
        assert not any("lora" in key for key in network.state_dict())
    # the training record and the card name the adapters and where stage 2 started
    training = json.loads((output / "generator" / "sfd_export.json").read_text())["training"]
    assert training["adapters"]["kind"] == "lora" and training["adapters"]["rank"] == 4
    assert training["adapters"]["start_from"] == str(stage1 / "adapters")
    assert "conv1" in training["adapters"]["targets"]
    assert [opt["lr"] for opt in training["optimizers"]] == [2.4e-3, 1e-4]  # fake score, generator
    full = sum(p.numel() for p in generator.parameters())
    assert 0 < training["trained_weights"]["generator"] < full
    card = (output / "generator" / "README.md").read_text()
    assert "Trained as a shared base: the generator was a lora adapter (rank 4" in card
    # the same run again reuses the stage-1 adapters
    again = tmp_path / "again"
    args = ["demo", "--output-dir", str(again), "--teacher-cache", str(cache)]
    assert main([*args, "--forget", "3", "--override", "5", *TINY_DEMO, *extra]) == 0
    protocol = json.loads((again / "metrics.json").read_text())["protocol"]
    assert protocol["two_stage"]["stage1_reused_from_cache"]
    assert protocol["two_stage"]["stage1_folder"] == str(stage1)


def test_eval_command_on_demo_outputs(demo_run: tuple[Path, Path], tmp_path: Path) -> None:
    output, cache = demo_run
    (teacher_dir,) = [p for p in cache.iterdir() if p.name.startswith("teacher-")]
    for model, nfe in ((output / "generator", 1), (teacher_dir, 2)):
        result = tmp_path / f"{model.name}.json"
        args = ["eval", str(model), "--classifier", str(output / "classifier"), "--forget", "3"]
        args += ["--override", "5", "--num-per-class", "4", "--ddim-steps", "2"]
        args += ["--attack", "--attack-steps", "2", "--attack-restarts", "2", "--attack-batch",
                 "2", "--attack-eval-samples", "4", "--attack-ddim-steps", "1"]  # fmt: skip
        args += ["--revival", "2", "--revival-images", "2", "--revival-batch", "2"]
        args += ["--attack-objective", "both", "--cache", str(cache)]
        weights = {p: p.read_bytes() for p in model.rglob("*.safetensors")}
        assert main([*args, "--output", str(result)]) == 0
        metrics = json.loads(result.read_text())
        assert metrics["nfe"] == nfe and 0 <= metrics["ua"] <= 1
        assert sum(metrics["forget_histogram"]) == 4
        attack = metrics["attacks"]["class_embedding"]
        assert 0 <= attack["success_rate"] <= 1 and attack["budget"]["restarts"] == 2
        assert len(attack["losses"]) == 2 and "held-out noise" in attack["asr_definition"]
        assert metrics["attacks"]["class_embedding-transfer"]["objective_classifier"] == "transfer"
        # the demo's attacker classifier, found again from classifier/'s recorded recipe
        assert metrics["protocol"]["attacker_classifier"]["reused_from_cache"]
        assert metrics["revival"]["steps"] == [0, 1, 2] and len(metrics["revival"]["ua"]) == 3
        assert weights == {p: p.read_bytes() for p in model.rglob("*.safetensors")}  # untouched


def test_cached_build_reuses_and_survives_interruption(tmp_path: Path) -> None:
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "weights.txt").write_text("w")

    first, reused = cached_build(tmp_path, "teacher", {"steps": 1}, build)
    assert not reused and (first / "weights.txt").is_file()
    again, reused = cached_build(tmp_path, "teacher", {"steps": 1}, build)
    assert reused and again == first and len(calls) == 1
    other, reused = cached_build(tmp_path, "teacher", {"steps": 2}, build)
    assert not reused and other != first

    def crash(folder: Path) -> None:
        (folder / "partial.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cached_build(tmp_path, "teacher", {"steps": 3}, crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])


@pytest.mark.parametrize(
    "bad",
    [
        ["--forget", "10"],
        ["--forget", "eleven"],
        ["--forget", "2", "--override", "2"],
        ["--forget", "two", "--override", "2"],
        ["--override", "-1"],
        ["--data", "no/such/file.npz"],
        ["--trainer.max_steps", "0"],
    ],
)
def test_demo_bad_input_exits_2_and_writes_nothing(
    bad: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output, cache = tmp_path / "out", tmp_path / "cache"
    args = ["demo", "--output-dir", str(output), "--teacher-cache", str(cache), "--no-progress"]
    assert main([*args, *bad]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("sfd: error: ")
    assert not output.exists() and not cache.exists()


@pytest.mark.parametrize("verb", ["demo", "compare", "demo-text"])
def test_a_t_init_beyond_the_teachers_schedule_is_refused_before_the_teacher_trains(
    verb: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demos' teachers have a 1000-step schedule (`make_scheduler`'s default, which the
    teacher saves): t_init 1000 is refused up front, in one line, before any teacher,
    classifier or output is written (not at stage 1, after the teacher trained)."""
    from sfd.apps.teachers.pixel import make_scheduler

    assert make_scheduler().config.num_train_timesteps == 1000
    output, cache = tmp_path / "out", tmp_path / "cache"
    args = [verb, "--output-dir", str(output), "--teacher-cache", str(cache), "--no-progress",
            "--teacher-steps", "1", "--classifier-steps", "1", "--threads", "1",
            "--model.sigma_init", "null", "--model.t_init", "1000"]  # fmt: skip
    assert main(args) == 2
    [error] = capsys.readouterr().err.strip().splitlines()
    assert error.startswith("sfd: error: model.t_init=1000 must be an integer timestep in 0..999")
    assert not output.exists() and not cache.exists()
    from sfd.apps.harness.settings import check_t_init

    args[-1] = "999"  # the schedule's last timestep passes
    check_t_init([parse_fit_config(ClassRunSettings(sfd_args=args[-4:]).sfd_command_line())])


@pytest.mark.slow
def test_full_demo_default_settings(tmp_path: Path) -> None:
    """The README's demo with its default settings (trains teacher and stage 1: ~15 minutes)."""
    output = tmp_path / "demo-output"
    args = ["demo", "--output-dir", str(output), "--teacher-cache", str(tmp_path / "cache")]
    assert main([*args, "--no-progress"]) == 0
    metrics = json.loads((output / "metrics.json").read_text())
    for key in MODELS:
        assert math.isfinite(metrics[key]["fid_remain"])
    assert metrics["sfd"]["ua"] >= 0.99
    assert metrics["distilled_without_forgetting"]["ua"] < 0.5  # forgetting comes from SFD
    assert metrics["sfd"]["remain_accuracy"] >= metrics["teacher"]["remain_accuracy"] - 0.05


def test_the_demos_sfd_stages_report_iterations_as_fit_does(
    tiny_teacher_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """Stage 1 / stage 2 runs of the demos (and `sfd compare`'s methods) show `sfd fit`'s
    iteration progress: iterations against the total with the losses, plain lines in a log."""
    from sfd.apps.harness.settings import default_sfd_config
    from sfd.apps.harness.stages import train_sfd

    args = ["-c", str(default_sfd_config()), "--trainer.max_steps", "4", "--model.batch_size", "4",
            "--model.teacher.init_args.pretrained_model_name_or_path", str(tiny_teacher_dir)]  # fmt: skip
    train_sfd(args, [], tmp_path / "log", progress=True)
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("Iterations ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "fake/total=" in lines[-1] and "generator/total=" in lines[-1] and "\r" not in out


def test_demo_and_compare_take_classes_by_index_or_name(tmp_path: Path) -> None:
    """`sfd demo` / `sfd compare` --forget / --override: an index or the data set's class name
    (digits by their caption names), resolved once the data is loaded, before any check."""
    from sfd.apps.harness.class_run import ClassRunSettings
    from sfd.apps.harness.workspace import start_run

    settings = ClassRunSettings(forget="Three", override="5", teacher_cache=tmp_path / "cache")
    start_run(settings)
    assert (settings.forget, settings.override) == (3, 5)
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.slow  # ~1 minute: a tiny demo end to end
def test_demo_adversarial_trains_sfd_against_the_class_embedding_attack(tmp_path: Path) -> None:
    output = tmp_path / "out"
    args = ["demo", "--output-dir", str(output), "--teacher-cache", str(tmp_path / "cache")]
    revival = ["--revival", "2", "--revival-images", "2", "--revival-batch", "2"]
    assert (
        main([*args, *TINY_DEMO, "--adversarial", "--model.adversarial.steps", "1", *revival]) == 0
    )
    revival_table = (output / "report.md").read_text().split("## Revival")[1]
    assert "\n| one-step adversarial SFD (forgetting) | " in revival_table  # the model it tested
    assert "\n| one-step, distilled without forgetting | " in revival_table
    record = json.loads((output / "generator" / "sfd_export.json").read_text())
    assert record["training"]["hyperparameters"]["adversarial"]["steps"] == 1
    headers = [set(log.read_text().splitlines()[0].split(",")) for log in output.rglob("*.csv")]
    wanted = {"adversarial/objective", "fake/adversarial", "generator/adversarial"}
    assert any(wanted <= header for header in headers)  # the attacked rows were trained on


def test_stage_two_alone_composes_the_forgetting_overlay() -> None:
    """Stage 2 (two-stage SFD) gets the power-function EMA and its generator step from
    sfd_digits_stage2.yaml; stage 1 and one-stage SFD keep the preset's constant EMA and step, and
    command-line overrides still come last."""
    settings = ClassRunSettings()

    def model(stage: str, *extra: str):
        args = replace(settings, sfd_args=list(extra)).sfd_command_line(stage=stage)
        return parse_fit_config(args, one_line_errors=True).model

    stage2, stage1, one_stage = model("stage2"), model("stage1"), model("sfd")
    assert (stage2.ema_power, stage2.ema_decay) == (7.0, 0.99)
    assert stage2.generator_optimizer.init_args.lr == 1e-4
    assert stage1.ema_power is None and stage1.ema_decay == 0.995
    assert one_stage.ema_power is None and one_stage.ema_decay == 0.99
    for other in (stage1, one_stage):
        assert other.generator_optimizer.init_args.lr == 3e-4
    assert model("stage2", "--model.ema_power", "null").ema_power is None


def test_stage_two_keeps_the_users_adversarial_settings() -> None:
    """`sfd demo --adversarial --model.adversarial.steps 5`: stage 2 (where the forgetting and the
    inner attack run) trains with steps 5; stage 1 leaves adversarial options out (its cache key)."""
    settings = ClassRunSettings(adversarial=True, sfd_args=["--model.adversarial.steps", "5"])

    def model(stage: str):
        return parse_fit_config(settings.sfd_command_line(stage=stage), one_line_errors=True).model

    assert model("stage2").adversarial.steps == 5
    assert model("sfd").adversarial.steps == 5
    assert model("stage1").adversarial is None


def test_stage_two_of_the_shared_base_doubles_the_fake_scores_step() -> None:
    """The shared base's stage 2 (any `--model.adapters.*` option) composes its overlay: the fake
    score's lr 2.4e-3, twice full copies' 1.2e-3; the user's own lr still wins; stage 1 and the
    one-stage SFD keep the preset's; `--model.adapters null` is full copies."""
    settings = ClassRunSettings()

    def fake_lr(stage: str, *extra: str) -> float:
        args = replace(settings, sfd_args=list(extra)).sfd_command_line(stage=stage)
        return parse_fit_config(args, one_line_errors=True).model.fake_optimizer.init_args.lr

    shared = ("--model.adapters.rank", "4")
    assert fake_lr("stage2") == 1.2e-3
    assert fake_lr("stage2", *shared) == 2.4e-3
    assert fake_lr("stage2", "--model.adapters", "{rank: 4}") == 2.4e-3
    assert fake_lr("stage2", "--model.adapters=null") == 1.2e-3
    assert fake_lr("stage2", *shared, "--model.fake_optimizer.init_args.lr", "5e-4") == 5e-4
    assert fake_lr("stage1", *shared) == 6e-4
    assert fake_lr("sfd", *shared) == 1.2e-3


def test_stage_two_is_capped_at_three_times_the_preset_and_probed_every_ten() -> None:
    """Under the completion rule stage 2's max_steps is a cap (600, three times the preset's 200)
    inside which the rule stops at about restart + --average-after; stage 1 keeps its 600 and
    one-stage SFD its 200, --trainer.max_steps still sets every stage, and the forgetting curve
    (where the rule probes) keeps the rule's 10-iteration interval, not a twentieth of the cap."""
    from sfd.apps.harness.methods import curve_every

    settings = ClassRunSettings()

    def max_steps(stage: str, *extra: str) -> int:
        args = replace(settings, sfd_args=list(extra)).sfd_command_line(stage=stage)
        return parse_fit_config(args, one_line_errors=True).trainer.max_steps

    assert [max_steps(s) for s in ("stage2", "stage1", "sfd")] == [600, 600, 200]
    assert {max_steps(s, "--trainer.max_steps", "50") for s in ("stage2", "stage1", "sfd")} == {50}
    assert settings.until_forgotten and settings.override_floor and settings.average_after == 150
    assert curve_every(settings, 600, under_rule=True) == 10
    assert curve_every(settings, 600) == 30  # stage 1, the baselines, SFD without the rule
    assert curve_every(replace(settings, curve_every=4), 600, under_rule=True) == 4


def user_sfd_config(tmp_path: Path, adversarial: object) -> Path:
    """The packaged preset with the user's `model.adversarial` block, as `--sfd-config` gives it."""
    import yaml

    from sfd.apps.harness.settings import default_sfd_config

    preset = yaml.safe_load(default_sfd_config().read_text())
    preset.setdefault("model", {})["adversarial"] = adversarial
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(preset))
    return path


def test_an_sfd_config_with_an_adversarial_block_takes_its_settings(tmp_path: Path) -> None:
    """`sfd demo --sfd-config user.yaml` (a `model.adversarial` block, no `--adversarial`) trains
    adversarial SFD: `--model.adversarial.steps 4` refines it, and the report names the model
    adversarial SFD (from the parsed settings, as the demo's protocol keeps them)."""
    from sfd.apps.harness.class_run import check_adversarial_options
    from sfd.apps.harness.report_folder import ADVERSARIAL_TITLE, report_titles

    config = user_sfd_config(tmp_path, {"steps": 3})
    args = ["--model.adversarial.steps", "4"]
    check_adversarial_options(args, adversarial=False, sfd_config=config)
    settings = ClassRunSettings(sfd_config=config, sfd_args=args)
    stage2 = parse_fit_config(settings.sfd_command_line(stage="stage2"), one_line_errors=True)
    assert stage2.model.adversarial.steps == 4
    protocol = {"sfd_settings": {"model": stage2.model.as_dict()}}
    assert report_titles(protocol)["sfd"] == ADVERSARIAL_TITLE


def test_adversarial_null_is_no_setting_and_a_null_block_leaves_it_off(tmp_path: Path) -> None:
    """`--model.adversarial null` (off, as it is) is accepted without `--adversarial`; a setting
    after an `--sfd-config` whose block is null is refused: adversarial SFD is off."""
    from sfd.apps.harness.class_run import check_adversarial_options
    from sfd.errors import SFDConfigError

    check_adversarial_options(["--model.adversarial", "null"], adversarial=False)
    with pytest.raises(SFDConfigError, match="steps 4: a setting of adversarial SFD, which is off"):
        check_adversarial_options(["--model.adversarial.steps", "4"], False,
                                  user_sfd_config(tmp_path, None))  # fmt: skip


def test_stage_one_leaves_out_the_sfd_configs_adversarial_block(tmp_path: Path) -> None:
    """Stage 1 does not forget: adversarial SFD from the user's `--sfd-config` stays off there, so
    its cache key is plain stage 1's (the same config without the block)."""
    from sfd.apps.harness.stages import stage_one_description

    def description(adversarial: object) -> dict:
        config = user_sfd_config(tmp_path, adversarial)
        args = ClassRunSettings(sfd_config=config).sfd_command_line(stage="stage1")
        assert parse_fit_config(args, one_line_errors=True).model.adversarial is None
        return stage_one_description("teacher", args)

    assert description({"steps": 3}) == description(None)
