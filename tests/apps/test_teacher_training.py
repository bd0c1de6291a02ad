"""DDPM teacher training: `sfd teacher` end to end, the loss, EMA, the CFG null class, the export."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from conftest import CONFIGS, assert_same_vp_outputs
from diffusers import UNet2DModel

from sfd.apps.data.images import load_images, train_heldout_split
from sfd.apps.teachers.pixel import (
    DDPMTeacherModule,
    TeacherDataModule,
    save_teacher,
    train_teacher,
)
from sfd.cli import main
from sfd.cli.teacher_cli import teacher_lightning_cli
from sfd.errors import SFDConfigError
from sfd.images import LabelledImages
from sfd.teachers.unet import PretrainedVPTeacher, VPUNetDenoiser

CONFIG = CONFIGS / "teacher_digits.yaml"
TINY = {"block_out_channels": (8, 16), "norm_num_groups": 4}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, and lose much on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_train() -> LabelledImages:
    train, _ = train_heldout_split(load_images("digits"), 0.2, seed=0)
    return train


def quiet_trainer(max_steps: int) -> pl.Trainer:
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def test_config_parses_to_the_digits_preset() -> None:
    cli = teacher_lightning_cli(["-c", str(CONFIG)], run=False)
    assert isinstance(cli.model, DDPMTeacherModule) and isinstance(
        cli.datamodule, TeacherDataModule
    )
    assert cli.model.num_classes == 10 and cli.model.hparams.image_shape == (1, 8, 8)
    assert cli.config["output_dir"] == "runs/teachers/digits"
    assert cli.trainer.max_steps == 3000 and cli.datamodule.batch_size == 64
    assert not cli.datamodule.horizontal_flip
    parameters = sum(p.numel() for p in cli.model.unet.parameters())
    assert 0.6e6 < parameters < 0.8e6
    # The data module trains on the 80 % split that `train_heldout_split` gives (seed 0).
    assert len(cli.datamodule.train_images) == 1438


def test_sfd_teacher_cli_writes_a_loadable_teacher(tmp_path: Path) -> None:
    output = tmp_path / "teacher"
    status = main(
        [
            "teacher",
            "-c",
            str(CONFIG),
            "--trainer.max_steps",
            "3",
            "--trainer.default_root_dir",
            str(tmp_path / "runs"),
            "--trainer.logger",
            "false",
            "--trainer.callbacks",
            "[]",
            "--trainer.enable_checkpointing",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.enable_model_summary",
            "false",
            "--data.batch_size",
            "8",
            "--model.block_out_channels",
            "[8, 16]",
            "--model.norm_num_groups",
            "4",
            "--output_dir",
            str(output),
        ]
    )
    assert status == 0
    assert (tmp_path / "runs" / "config.yaml").is_file()  # the resolved config beside the run
    teacher = PretrainedVPTeacher(str(output))
    assert teacher.num_classes == 10 and teacher.null_class is None
    assert teacher.sample_shape == (1, 8, 8)
    scheduler = teacher.scheduler_config
    assert (scheduler["beta_start"], scheduler["beta_end"]) == (1e-4, 0.02)
    assert scheduler["num_train_timesteps"] == 1000 and scheduler["beta_schedule"] == "linear"
    assert scheduler["prediction_type"] == "epsilon"
    sfd_json = json.loads((output / "sfd.json").read_text())
    assert sfd_json["num_classes"] == 10 and sfd_json["global_step"] == 3
    x0_hat = teacher(torch.randn(4, 1, 8, 8), 1.0, torch.arange(4))
    assert x0_hat.shape == (4, 1, 8, 8) and torch.isfinite(x0_hat).all()


def test_sfd_teacher_cli_reports_a_bad_source(tmp_path: Path, capsys) -> None:
    status = main(["teacher", "-c", str(CONFIG), "--data.source", str(tmp_path / "missing.npz")])
    assert status == 2
    assert "sfd: error: data source" in capsys.readouterr().err


def fixed_loss(module: DDPMTeacherModule, x0: torch.Tensor, labels: torch.Tensor) -> float:
    """The DDPM loss with the same timesteps and noise every call."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1234)
        return module.diffusion_loss(x0, labels).item()


def test_training_loss_decreases(digits_train: LabelledImages) -> None:
    pl.seed_everything(0, verbose=False)
    small = digits_train.subset(torch.arange(256))
    module = DDPMTeacherModule(10, (1, 8, 8), warmup_steps=5, ema_decay=None, **TINY)
    x0, labels = small.to_model_space(), small.labels
    before = fixed_loss(module, x0, labels)
    trainer = quiet_trainer(50)
    trainer.fit(module, datamodule=TeacherDataModule.from_images(small, batch_size=32))
    assert trainer.global_step == 50
    after = fixed_loss(module, x0, labels)
    assert after < 0.7 * before, (before, after)


def captured_labels(module: DDPMTeacherModule, labels: torch.Tensor) -> torch.Tensor:
    """The class labels the UNet receives inside `diffusion_loss`."""
    seen: list[torch.Tensor] = []

    def hook(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        seen.append(kwargs["class_labels"])

    handle = module.unet.register_forward_pre_hook(hook, with_kwargs=True)
    module.diffusion_loss(torch.zeros(len(labels), 1, 8, 8), labels)
    handle.remove()
    return seen[0]


def test_null_class_label_dropout() -> None:
    torch.manual_seed(0)
    labels = torch.arange(10).repeat(50)  # (500,)
    guided = DDPMTeacherModule(10, (1, 8, 8), null_class=True, label_dropout=0.5, **TINY)
    assert guided.unet.config.num_class_embeds == 11 and guided.null_class == 10
    seen = captured_labels(guided, labels)
    dropped = seen == 10
    assert 0.4 < dropped.float().mean() < 0.6
    assert torch.equal(seen[~dropped], labels[~dropped])  # the others keep their class
    plain = DDPMTeacherModule(10, (1, 8, 8), null_class=False, label_dropout=0.5, **TINY)
    assert plain.unet.config.num_class_embeds == 10
    assert torch.equal(captured_labels(plain, labels), labels)


def test_train_teacher_with_null_class(tmp_path: Path, digits_train: LabelledImages) -> None:
    path = train_teacher(
        digits_train, tmp_path / "cfg", max_steps=2, block_out_channels=(4, 12),
        null_class=True, progress=False, accelerator="cpu",
    )  # fmt: skip
    teacher = PretrainedVPTeacher(str(path))
    assert teacher.num_classes == 10 and teacher.null_class == 10
    assert teacher.unet.config.norm_num_groups == 4  # gcd(8, 4, 12)
    labels = torch.arange(4)
    assert torch.equal(teacher.null_condition(labels), torch.full((4,), 10))
    x = torch.randn(4, 1, 8, 8)
    guided = teacher.guided(x, 2.0, labels, scale=3.0)
    x0_cond, x0_null = teacher(x, 2.0, labels), teacher(x, 2.0, teacher.null_condition(labels))
    # Guidance may batch both calls: allow float reassociation, amplified by the scale.
    torch.testing.assert_close(guided, x0_null + 3.0 * (x0_cond - x0_null), rtol=1e-3, atol=1e-3)


def test_the_demos_teacher_training_reports_iterations_as_fit_does(
    tmp_path: Path, digits_train: LabelledImages, capfd: pytest.CaptureFixture[str]
) -> None:
    """The teachers the demos train show sfd's one progress style: iterations against the
    total with the loss, as plain lines when the output is not a terminal."""
    train_teacher(
        digits_train, tmp_path / "t", max_steps=4, block_out_channels=(4, 8), progress=True,
        accelerator="cpu",
    )  # fmt: skip
    out = capfd.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("Iterations ")]
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "loss=" in lines[-1] and "\r" not in out and "Epoch" not in out


def test_ema_update_and_export_are_exact(tmp_path: Path) -> None:
    module = DDPMTeacherModule(10, (1, 8, 8), ema_decay=0.99, **TINY)
    with torch.no_grad():
        for live in module.unet.parameters():
            live.add_(torch.randn_like(live))
    ema_before = [p.clone() for p in module.ema_unet.parameters()]
    module.on_train_batch_end(None, None, 0)  # step 0: decay min(0.99, 1/10) = 0.1
    for before, ema, live in zip(
        ema_before, module.ema_unet.parameters(), module.unet.parameters(), strict=True
    ):
        assert torch.allclose(ema, 0.1 * before + 0.9 * live, atol=1e-6)
    path = save_teacher(module, tmp_path / "teacher")
    saved = UNet2DModel.from_pretrained(path / "unet")
    for (name, a), b in zip(
        saved.state_dict().items(), module.ema_unet.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    # The loaded teacher is the EMA network behind the VP adapter, to the bit.
    direct = VPUNetDenoiser(module.ema_unet.eval(), module.scheduler)
    assert_same_vp_outputs(PretrainedVPTeacher(str(path)), direct)


def test_data_module_flip_choice_and_scaling(digits_train: LabelledImages) -> None:
    data = TeacherDataModule.from_images(digits_train)
    assert not data.horizontal_flip  # digits never mirrored
    natural = LabelledImages(digits_train.images, digits_train.labels, 10, horizontal_flip=True)
    assert TeacherDataModule.from_images(natural).horizontal_flip
    assert not TeacherDataModule.from_images(natural, horizontal_flip=False).horizontal_flip
    images, labels = digits_train.images[:4], digits_train.labels[:4]
    x0, same_labels = data.on_after_batch_transfer((images, labels), 0)
    assert torch.equal(x0, images.float() / 127.5 - 1) and torch.equal(same_labels, labels)


def test_refuses_a_foreign_output_folder(tmp_path: Path, digits_train: LabelledImages) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SFDConfigError, match="not empty and holds no earlier teacher"):
        train_teacher(digits_train, tmp_path / "mine", max_steps=1, progress=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_bad_module_settings() -> None:
    with pytest.raises(SFDConfigError, match="norm_num_groups=8 must divide"):
        DDPMTeacherModule(10, (1, 8, 8), block_out_channels=(12, 24))
    with pytest.raises(SFDConfigError, match="cannot be halved"):
        DDPMTeacherModule(10, (1, 6, 6), block_out_channels=(8, 16, 32))
    with pytest.raises(SFDConfigError, match="label_dropout"):
        DDPMTeacherModule(10, (1, 8, 8), null_class=True, label_dropout=1.0)


@pytest.mark.slow
def test_default_digits_teacher_is_usable(tmp_path: Path) -> None:
    """The default teacher's 50-step DDIM samples are labelled as their class ≥ 90 % of the time."""
    from sfd.core.ddim import ddim_sigmas, sample_ddim
    from sfd.eval.classifier import predict_labels, train_classifier

    train, heldout = train_heldout_split(load_images("digits"), 0.2, seed=0)
    classifier, _ = train_classifier(train, heldout, progress=False)
    teacher = PretrainedVPTeacher(str(train_teacher(train, tmp_path / "t", progress=False)))
    labels = torch.arange(10).repeat_interleave(50)
    z = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(1))
    samples = sample_ddim(teacher, z, labels, ddim_sigmas(teacher.sigma_table, 50)).clamp(-1, 1)
    assert (predict_labels(classifier, samples) == labels).float().mean() >= 0.9
