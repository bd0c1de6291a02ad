"""SalUn: the saliency mask keeps the requested share, and the other weights never move."""

from __future__ import annotations

import pytest
import torch
from conftest import quiet_trainer
from torch import nn

from sfd.baselines import SalUnModule, saliency_mask
from sfd.core.conditions import ClassConditions
from sfd.errors import SFDConfigError
from sfd.teachers import PretrainedVPTeacher


@pytest.mark.parametrize("share", [0.1, 0.5, 0.77, 1.0])
def test_mask_keeps_the_share_with_the_largest_summed_gradient(share: float) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    batches = [torch.randn(4, 5, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    masks = saliency_mask(net, [lambda x=x: net(x).pow(2).sum() for x in batches], share)

    # Oracle: the summed gradient by torch.autograd.grad, batch by batch, ranked by hand.
    params = list(net.parameters())
    total = [torch.zeros_like(p) for p in params]
    for x in batches:
        for acc, grad in zip(total, torch.autograd.grad(net(x).pow(2).sum(), params), strict=True):
            acc += grad
    flat = torch.cat([g.abs().flatten() for g in total])
    keep = int(share * flat.numel())
    mask = torch.cat([m.flatten() for m in masks.values()])
    assert int(mask.sum()) == keep
    if keep < flat.numel():
        assert flat[mask].min() >= flat[~mask].max()
    assert [m.shape for m in masks.values()] == [p.shape for p in params]


def test_mask_refuses_an_empty_share() -> None:
    with pytest.raises(SFDConfigError, match="share"):
        saliency_mask(nn.Linear(2, 2), [], 0.0)


def test_masked_fine_tuning_leaves_unmasked_weights_bit_identical(
    tiny_teacher_dir, single_thread, tmp_path
) -> None:
    teacher = PretrainedVPTeacher(str(tiny_teacher_dir))
    original = {k: v.clone() for k, v in teacher.named_parameters()}
    module = SalUnModule(
        teacher,
        ClassConditions(0, 1),
        share=0.3,
        lr=1e-2,
        batch_size=4,
        forget_samples=8,
        remain_samples=8,
        ddim_steps=2,
        steps_per_epoch=3,
    )
    quiet_trainer(tmp_path, steps=3).fit(module)
    total = sum(p.numel() for p in original.values())
    kept = sum(int(m.sum()) for m in module.masks.values())
    assert kept == int(0.3 * total)
    moved = 0
    for name, param in module.student.named_parameters():
        mask = module.masks[name]
        assert torch.equal(param[~mask], original[name][~mask]), name
        moved += int((param[mask] != original[name][mask]).sum())
    assert moved > 0  # the salient weights did train
    for name, param in module.teacher.named_parameters():
        assert torch.equal(param, original[name])
    assert module.pool["forget"].shape == (8, 1, 8, 8)
    assert bool((module.pool["forget_cond"] == 0).all())
    assert bool((module.pool["override_cond"] == 1).all())
    assert not bool((module.pool["remain_cond"] == 0).any())
    assert torch.isfinite(module.pool["remain"]).all()
