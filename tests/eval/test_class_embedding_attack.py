"""The class-embedding attack on class models: the hook is exact, the model gets no gradient, and
the attack raises the forgotten class's probability over the unattacked model."""

from __future__ import annotations

import pytest
import torch
from text_fixtures import linear_classifier

from sfd.core.generator import OneStepGenerator
from sfd.errors import SFDConfigError
from sfd.eval.attack_budget import ClassEmbeddingBudget
from sfd.eval.class_embedding import (
    class_embedding_attack,
    class_embedding_table,
    replaced_embedding,
)
from sfd.eval.evaluate import ddim_sampler, one_step_sampler
from sfd.teachers import PretrainedVPTeacher


def test_the_own_row_reproduces_the_label(tiny_teacher_dir) -> None:
    generator = OneStepGenerator(PretrainedVPTeacher(str(tiny_teacher_dir)))
    table = class_embedding_table(generator.denoiser)
    z = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.full((3,), 2)
    with torch.no_grad():
        plain = generator(z, labels)
        hooked = generator(z, replaced_embedding(labels, table[2]))
        other = generator(z, replaced_embedding(labels, table[5]))
        assert torch.equal(plain, hooked)
        torch.testing.assert_close(other, generator(z, torch.full((3,), 5)))
    assert not generator.denoiser.unet.class_embedding._forward_hooks  # removed after the call


@pytest.mark.parametrize("kind", ["one-step", "ddim"])
def test_attack_raises_the_target_probability(tiny_teacher_dir, kind, single_thread) -> None:
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    if kind == "one-step":
        sampler = one_step_sampler(OneStepGenerator(teacher))
    else:
        sampler = ddim_sampler(teacher, 2)
    budget = ClassEmbeddingBudget(steps=12, lr=0.5, batch_size=8, eval_samples=32, restarts=2)
    result = class_embedding_attack(sampler, linear_classifier(), 2, budget, ddim_steps=2)
    assert result.target_probability > result.target_probability_without_attack
    assert result.restart_losses[result.chosen_restart] == min(result.restart_losses)
    assert len(result.losses) == 12 and result.budget["restarts"] == 2
    assert "learned class embedding" in result.asr_definition
    assert all(p.grad is None for p in teacher.parameters())  # no gradient reached the model
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_class_embedding_attack_needs_a_class_table(tmp_path) -> None:
    from conftest import save_tiny_teacher

    unconditional = PretrainedVPTeacher(
        str(save_tiny_teacher(tmp_path / "u", num_class_embeds=None))
    )
    with pytest.raises(SFDConfigError, match="needs a UNet with a class-embedding table"):
        class_embedding_table(unconditional)
    with pytest.raises(SFDConfigError, match="class-embedding attack steps=0"):
        ClassEmbeddingBudget(steps=0)
