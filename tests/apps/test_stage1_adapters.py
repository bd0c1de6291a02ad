"""Stage 1 as adapters: a shared-base stage 1 saves its adapters alone, stage 2 continues from them.

Oracles: the stage-1 module's own shipped generator and fake score (stage 2 at iteration 0 must
compute them bit for bit), the teacher loaded afresh from its folder (its weights and outputs
bit-identical after both stages), and the teacher folder's weight names (none in the cache).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import quiet_trainer
from safetensors.torch import load_file

from sfd.apps.harness.class_run import ClassRunSettings
from sfd.apps.harness.stages import (
    STAGE_ONE_ADAPTERS,
    StageOne,
    curve_read_by,
    save_stage_one,
    stage_one_description,
)
from sfd.core.conditions import ClassConditions
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.errors import SFDConfigError
from sfd.pipelines.io import load_generator
from sfd.teachers import PretrainedVPTeacher
from sfd.teachers.adapter_settings import AdapterSettings
from sfd.teachers.adapters import ADAPTER_EMA


def module(teacher_dir: Path, forget_weight: float, **settings) -> SFDModule:
    return SFDModule(
        teacher=PretrainedVPTeacher(str(teacher_dir)),
        conditions=ClassConditions(forget=0, override=1),
        sigma_sampler=UniformTimestepSigma(38, 712),
        sigma_init=2.5,
        lambda_sg_forget=forget_weight,
        lambda_g_forget=forget_weight,
        batch_size=2,
        fake_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        ema_decay=0.5,
        adapters=AdapterSettings(**{"rank": 4, **settings}),
        seed=1,
    )


def draws() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Generator noise and a denoiser's input (σ 0.5, 2, 10), for classes 0, 3, 7."""
    rng = torch.Generator().manual_seed(0)
    z = torch.randn(3, 1, 8, 8, generator=rng)
    x = torch.randn(3, 1, 8, 8, generator=rng) * 2
    return z, torch.tensor([0, 3, 7]), x, torch.tensor([0.5, 2.0, 10.0])


@pytest.fixture(scope="module")
def stage1(tiny_teacher_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """A 2-iteration shared-base stage 1 (forget weights 0), saved like the harness caches it."""
    first = module(tiny_teacher_dir, 0.0)
    quiet_trainer(steps=2).fit(first)
    folder = tmp_path_factory.mktemp("stage1")
    save_stage_one(first, folder, 1.0, 2)
    return first, StageOne.load(folder)


def test_stage_two_starts_from_the_stage_one_adapters_bit_for_bit(
    stage1, tiny_teacher_dir: Path
) -> None:
    first, saved = stage1
    assert saved.adapters
    second = module(tiny_teacher_dir, 1.0, start_from=str(saved.adapters_dir))
    z, cond, x, sigma = draws()
    # torch's matmul takes another (equally exact) path for a 3-d input when the weight requires
    # grad, which changes the last bits: compare the networks with the same flags as stage 1's EMA.
    second.generator.requires_grad_(False)
    second.fake_score.requires_grad_(False)
    first.fake_score.requires_grad_(False)
    with torch.no_grad():
        shipped = first.export_generator(z, cond)  # stage 1's EMA: what full copies ship too
        assert torch.equal(second.generator(z, cond), shipped)
        assert torch.equal(second.ema(z, cond), shipped)  # the EMA starts at the generator
        assert torch.equal(second.fake_score(x, sigma, cond), first.fake_score(x, sigma, cond))
        # and not the identity: stage 1 moved the generator away from the teacher
        fresh = module(tiny_teacher_dir, 1.0)
        assert (fresh.generator(z, cond) - shipped).abs().max() > 1e-4
    # the option on the command line's path: the stage-2 arguments name the adapters
    assert saved.stage_two_arguments() == [
        "--model.adapters.start_from",
        str(saved.adapters_dir),
    ]


def test_the_teacher_base_stays_bit_identical_through_both_stages(
    stage1, tiny_teacher_dir: Path
) -> None:
    first, saved = stage1
    second = module(tiny_teacher_dir, 1.0, start_from=str(saved.adapters_dir))
    quiet_trainer(steps=2).fit(second)
    fresh = PretrainedVPTeacher(str(tiny_teacher_dir))
    _, cond, x, sigma = draws()
    reference = fresh.state_dict()
    for trained in (first, second):
        # PEFT wraps each adapted layer: its own weights become `<layer>.base_layer.*`
        state = {k.replace(".base_layer", ""): v for k, v in trained.teacher.state_dict().items()}
        assert state.keys() == reference.keys()
        assert all(torch.equal(state[k], v) for k, v in reference.items())
        with torch.no_grad():
            assert torch.equal(trained.teacher(x, sigma, cond), fresh(x, sigma, cond))


def test_the_cache_holds_the_adapters_not_the_base(stage1, tiny_teacher_dir: Path) -> None:
    first, saved = stage1
    files = sorted(p.relative_to(saved.folder).as_posix() for p in saved.folder.rglob("*"))
    assert files == [
        STAGE_ONE_ADAPTERS,
        f"{STAGE_ONE_ADAPTERS}/adapters.json",
        f"{STAGE_ONE_ADAPTERS}/fake_score.safetensors",
        f"{STAGE_ONE_ADAPTERS}/generator.safetensors",
        "run.json",
    ]
    base_names = set(PretrainedVPTeacher(str(tiny_teacher_dir)).state_dict())
    for name in ("generator", "fake_score"):
        weights = load_file(str(saved.adapters_dir / f"{name}.safetensors"))
        assert weights and all(".lora_" in key for key in weights)
        assert not base_names & {f"unet.{key}" for key in weights} and not base_names & set(weights)
        view = first.fake_score if name == "fake_score" else first.export_generator.denoiser
        assert sum(w.numel() for w in weights.values()) == sum(p.numel() for p in view.parameters())


def test_the_stage_one_generator_reloads_from_teacher_and_adapter(
    stage1, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    """The distilled-without-forgetting row: teacher + saved adapter, and its merged export."""
    first, saved = stage1
    z, cond, _, _ = draws()
    generator = saved.generator(tiny_teacher_dir)
    with torch.no_grad():
        shipped = first.export_generator(z, cond)
        assert torch.equal(generator(z, cond), shipped)
        saved.export_generator(tiny_teacher_dir, tmp_path / "export")
        exported = load_generator(tmp_path / "export")
        assert not any("lora" in key for key in exported.state_dict())
        torch.testing.assert_close(exported(z, cond), shipped, atol=1e-5, rtol=1e-5)


def test_starting_from_adapters_that_do_not_fit_is_one_line(
    stage1, tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    _, saved = stage1
    with pytest.raises(SFDConfigError, match=r"start_from=.* holds adapters with rank=4, .* 8$"):
        module(tiny_teacher_dir, 1.0, rank=8, start_from=str(saved.adapters_dir))
    with pytest.raises(SFDConfigError, match=r"holds adapters with alpha=16.0, .* 32.0$"):
        module(tiny_teacher_dir, 1.0, alpha=32.0, start_from=str(saved.adapters_dir))
    with pytest.raises(SFDConfigError, match="is not a folder of saved adapters"):
        module(tiny_teacher_dir, 1.0, start_from=str(tmp_path))
    with pytest.raises(SFDConfigError, match="start_from=3 must be a folder"):
        AdapterSettings(start_from=3)


def test_the_cache_key_records_how_the_ema_averaged(tiny_teacher_dir: Path) -> None:
    """A shared-base stage 1 cached before the EMA averaged the merged updates is not reused;
    full copies' keys stay as they were."""
    args = ClassRunSettings().sfd_command_line(str(tiny_teacher_dir), "stage1")
    full = stage_one_description("teacher-x", args)
    shared = stage_one_description("teacher-x", [*args, "--model.adapters.rank", "4"])
    assert "adapter_ema" not in full
    assert shared["adapter_ema"] == ADAPTER_EMA


def test_the_override_guidance_leaves_the_stage_one_key(tiny_teacher_dir: Path) -> None:
    """Stage 1 has no unlearning term: the override's guidance is not in its cache key, so a
    preset that sets it reuses the stage 1 cached before the setting existed."""
    args = ClassRunSettings().sfd_command_line(str(tiny_teacher_dir), "stage1")
    plain = stage_one_description("teacher-x", args)
    guided = stage_one_description("teacher-x", [*args, "--model.override_guidance", "4.5"])
    assert guided == plain
    assert "override_guidance" not in plain["model"]
    assert "teacher_guidance" in plain["model"]  # what stage 1 trains with stays in


def test_a_cached_curve_is_kept_only_for_the_classifier_that_read_it(stage1, tmp_path) -> None:
    """The stage-1 cache key does not cover the evaluation classifier: a curve saved with one
    classifier's fingerprint comes back for that classifier, and is left out for another one or
    when no fingerprint was recorded (a cache entry from before it was)."""
    from sfd.apps.harness.cache import weights_fingerprint

    first, _ = stage1
    reader = torch.nn.Linear(3, 2)
    fingerprint = weights_fingerprint(reader)
    assert weights_fingerprint(torch.nn.Linear(3, 2)) != fingerprint  # other weights
    assert weights_fingerprint(reader) == fingerprint
    curve = [{"iteration": 0, "seconds": 0.0, "ua": 0.0, "remain_accuracy": 1.0}]
    for name, recorded in (("now", fingerprint), ("old", None)):
        tmp_path.joinpath(name).mkdir()  # (the cache hands save_stage_one an existing folder)
        save_stage_one(first, tmp_path / name, 1.0, 2, curve, recorded)
    now, old = StageOne.load(tmp_path / "now"), StageOne.load(tmp_path / "old")
    assert curve_read_by(now, fingerprint).curve == curve
    with torch.no_grad():
        reader.weight[0, 0] += 1.0
    assert curve_read_by(now, weights_fingerprint(reader)).curve == []
    assert curve_read_by(old, fingerprint).curve == []
