"""Shared base: the generator and the fake score as PEFT adapters of the one frozen teacher network.

Oracles: the teacher loaded afresh from its folder (bit-identical outputs with adapters off), the
gradients of full copies built by merging each adapter into its own network (the same maths
without any switching), and recomputation-free gradients for gradient checkpointing.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from conftest import quiet_trainer
from torch.utils.checkpoint import checkpoint

from sfd.core.conditions import ClassConditions
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.errors import SFDConfigError
from sfd.teachers import PretrainedVPTeacher, adapters
from sfd.teachers.adapter_io import merged_denoiser, shared_base_views
from sfd.teachers.adapter_settings import AdapterSettings
from sfd.teachers.adapters import AdapterView


def module(teacher_dir: Path, **kwargs) -> SFDModule:
    settings = {"rank": 4, **kwargs.pop("settings", {})}
    return SFDModule(
        teacher=PretrainedVPTeacher(str(teacher_dir)),
        conditions=ClassConditions(forget=0, override=1),
        sigma_sampler=UniformTimestepSigma(38, 712),
        lambda_sg_forget=1.0,
        lambda_g_forget=1.0,
        batch_size=2,
        fake_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.0, 0.999)),
        ema_decay=0.5,
        adapters=AdapterSettings(**settings),
        seed=1,
        **kwargs,
    )


def probe(denoiser: torch.nn.Module) -> torch.Tensor:
    rng = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 8, 8, generator=rng) * 2
    return denoiser(x, torch.tensor([0.5, 2.0, 10.0]), torch.tensor([0, 3, 7]))


def test_teacher_output_stays_bit_identical_while_the_adapters_train(
    tiny_teacher_dir: Path,
) -> None:
    fresh = PretrainedVPTeacher(str(tiny_teacher_dir))
    sfd = module(tiny_teacher_dir)
    with torch.no_grad():
        reference = probe(fresh)
        assert torch.equal(probe(sfd.teacher), reference)
        # Every adapter starts as the identity: each view starts equal to the teacher.
        for view in (sfd.generator.denoiser, sfd.fake_score, sfd.ema.denoiser):
            torch.testing.assert_close(probe(view), reference, atol=1e-6, rtol=0)
    base = {k: v.clone() for k, v in sfd.teacher.state_dict().items()}
    quiet_trainer(steps=2).fit(sfd)
    with torch.no_grad():
        assert torch.equal(probe(sfd.teacher), reference)  # adapters off: the teacher, exactly
        assert (probe(sfd.generator.denoiser) - reference).abs().max() > 1e-4  # it did train
        assert (probe(sfd.fake_score) - reference).abs().max() > 1e-4
    state = sfd.teacher.state_dict()
    assert state.keys() == base.keys() and not any(".lora_" in k for k in state)
    assert all(torch.equal(state[k], v) for k, v in base.items())
    base = [p for k, p in sfd.teacher.named_parameters() if ".lora_" not in k]
    assert base and not any(p.requires_grad or p.grad is not None for p in base)


def test_each_adapter_gets_its_own_gradients_only(tiny_teacher_dir: Path) -> None:
    """The generator loss through three adapters of one network equals the same loss through
    three separate networks (each adapter merged into its own copy), gradient for gradient."""
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    views = shared_base_views(
        AdapterSettings(rank=4, alpha=4), teacher, ema=False
    )  # α = r: unit-scale updates
    generator, fake = views["generator"], views["fake_score"]
    with torch.no_grad():  # make both adapters non-trivial and different
        rng = torch.Generator().manual_seed(5)
        for view in views.values():
            for p in view.parameters():
                p.copy_(torch.randn(p.shape, generator=rng) * 0.05)
    fake.requires_grad_(False)
    sigma = torch.tensor([1.0, 3.0, 0.3])
    cond = torch.tensor([1, 2, 3])
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))

    def loss(gen, teach, fak) -> torch.Tensor:
        x = gen(2.5 * z, 2.5, cond) + sigma.view(-1, 1, 1, 1) * z.flip(0)
        return (teach(x, sigma, cond) - fak(x, sigma, cond)).square().sum()

    loss(generator, teacher, fake).backward()
    shared_grads = [p.grad.clone() for p in generator.parameters()]
    assert all(p.grad is None for p in fake.parameters())
    assert all(p.grad is None for p in teacher.parameters() if not p.requires_grad)
    assert any(bool(g.any()) for g in shared_grads)

    # Oracle: three separate networks: a copy of the network with the generator's adapter, a
    # fresh teacher, and the fake score's adapter merged into a plain copy.
    separate_generator = _single_adapter_copy(generator)
    loss(
        separate_generator, PretrainedVPTeacher(str(tiny_teacher_dir)), merged_denoiser(fake)
    ).backward()
    separate_grads = [p.grad for p in separate_generator.parameters()]
    for shared, separate in zip(shared_grads, separate_grads, strict=True):
        torch.testing.assert_close(shared, separate, atol=1e-6, rtol=1e-5)


def _single_adapter_copy(view: AdapterView) -> AdapterView:
    """The view's adapter on a network of its own (a deep copy of the shared base)."""
    base = copy.deepcopy(view.shared)
    return AdapterView(base, view.adapter_name)


def _generator_grads(
    teacher_dir: Path, kind: str, teacher_checkpointing: bool, adapter_checkpointing: bool
) -> list[torch.Tensor]:
    """Gradients of a generator loss that runs generator, teacher and fake score in one graph."""
    teacher = PretrainedVPTeacher(str(teacher_dir))
    if teacher_checkpointing:  # as the family presets' `gradient_checkpointing: true` does
        teacher.unet.enable_gradient_checkpointing()
    settings = AdapterSettings(rank=2, kind=kind, gradient_checkpointing=adapter_checkpointing)
    views = shared_base_views(settings, teacher, ema=False)
    with torch.no_grad():
        rng = torch.Generator().manual_seed(2)
        for view in views.values():
            for p in view.parameters():
                p.copy_(torch.randn(p.shape, generator=rng) * 0.05)
    views["fake_score"].requires_grad_(False)
    z = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    x = views["generator"](2.5 * z, 2.5, torch.tensor([1, 2])) + z
    sigma = torch.tensor([1.0, 2.0])
    with torch.enable_grad():
        loss = teacher(x, sigma, torch.tensor([1, 2])) - views["fake_score"](
            x, sigma, torch.tensor([1, 2])
        )
    loss.square().sum().backward()
    return [p.grad.clone() for p in views["generator"].parameters()]


@pytest.mark.parametrize(
    ("kind", "teacher_checkpointing", "adapter_checkpointing"),
    [
        ("lora", False, True),
        ("dora", False, True),
        ("lokr", False, True),
        ("lora", True, False),  # a family preset's teacher setting with shared_base.yaml's
        ("lora", True, True),
    ],
)
def test_gradient_checkpointing_recomputes_with_the_adapter_that_ran(
    tiny_teacher_dir: Path,
    kind: str,
    teacher_checkpointing: bool,
    adapter_checkpointing: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Oracle: the same loss without checkpointing. Whichever setting turns it on, the blocks are
    recomputed by the shared base's checkpoint function, with the adapter that ran them."""
    plain = _generator_grads(tiny_teacher_dir, kind, False, False)
    calls = []
    monkeypatch.setattr(  # count the blocks the shared base checkpoints
        adapters, "checkpoint", lambda *a, **k: (calls.append(1), checkpoint(*a, **k))[1]
    )
    recomputed = _generator_grads(
        tiny_teacher_dir, kind, teacher_checkpointing, adapter_checkpointing
    )
    assert calls  # the blocks really were checkpointed, by the shared base
    for a, b in zip(recomputed, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_bfloat16_base_keeps_float32_adapters_and_trains(tiny_teacher_dir: Path) -> None:
    sfd = module(tiny_teacher_dir, settings={"base_dtype": "bfloat16"})
    dtypes = {p.dtype for p in sfd.teacher.parameters() if not p.requires_grad}
    assert torch.bfloat16 in dtypes
    assert {p.dtype for p in sfd.generator.parameters()} == {torch.float32}
    fresh = PretrainedVPTeacher(str(tiny_teacher_dir))
    with torch.no_grad():
        torch.testing.assert_close(probe(sfd.teacher), probe(fresh), atol=0.05, rtol=0.05)
    quiet_trainer(steps=1).fit(sfd)
    assert all(torch.isfinite(p).all() for p in sfd.generator.parameters())


def test_checkpoint_holds_adapters_and_optimizer_state_not_the_base(
    tiny_teacher_dir: Path, tmp_path: Path
) -> None:
    sfd = module(tiny_teacher_dir)
    trainer = quiet_trainer(tmp_path, steps=2)
    trainer.fit(sfd)
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    checkpoint = torch.load(tmp_path / "a.ckpt", weights_only=True)
    keys = checkpoint["state_dict"].keys()
    assert keys and all(k.startswith(("generator.", "fake_score.", "ema.")) for k in keys)
    assert all("lora_" in k for k in keys)
    adapter_numel = sum(v.numel() for v in checkpoint["state_dict"].values())
    assert adapter_numel == 3 * sfd.fake_score.shared.trainable_count("fake_score")
    base_numel = sum(v.numel() for v in sfd.teacher.state_dict().values())
    assert adapter_numel < base_numel
    states = checkpoint["optimizer_states"]
    assert [len(s["state"]) for s in states] == [
        len(list(sfd.fake_score.parameters())),
        len(list(sfd.generator.parameters())),
    ]


def test_resume_is_bit_exact(tiny_teacher_dir: Path, tmp_path: Path) -> None:
    straight = module(tiny_teacher_dir)
    quiet_trainer(steps=4).fit(straight)

    first = module(tiny_teacher_dir)
    trainer = quiet_trainer(tmp_path, steps=2)
    trainer.fit(first)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    resumed = module(tiny_teacher_dir)
    quiet_trainer(tmp_path, steps=4).fit(resumed, ckpt_path=tmp_path / "half.ckpt")
    for name in ("generator", "fake_score", "ema"):
        a = getattr(straight, name).state_dict()
        b = getattr(resumed, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert torch.equal(probe(resumed.teacher), probe(straight.teacher))


def test_merged_generator_equals_the_view(tiny_teacher_dir: Path) -> None:
    sfd = module(tiny_teacher_dir)
    quiet_trainer(steps=2).fit(sfd)
    merged = merged_denoiser(sfd.ema.denoiser)
    assert not any("lora" in k for k in merged.state_dict())
    assert type(merged) is PretrainedVPTeacher
    with torch.no_grad():
        torch.testing.assert_close(probe(merged), probe(sfd.ema.denoiser), atol=1e-5, rtol=1e-5)


def test_adapters_refuse_what_they_cannot_do(tiny_teacher_dir: Path) -> None:
    with pytest.raises(SFDConfigError, match=r"model.adapters.rank=0 must be an integer"):
        AdapterSettings(rank=0)
    with pytest.raises(SFDConfigError, match="model.adapters.kind=.ia3."):
        AdapterSettings(kind="ia3")
    with pytest.raises(SFDConfigError, match="PEFT cannot adapt the teacher"):
        module(tiny_teacher_dir, settings={"targets": ["no_such_layer"]})
    with pytest.raises(SFDConfigError, match="give no model.generator or model.fake_score"):
        module(tiny_teacher_dir, fake_score=PretrainedVPTeacher(str(tiny_teacher_dir)))
