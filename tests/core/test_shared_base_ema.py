"""The shared base's EMA averages the generator's merged updates B·A, as full copies average weights.

Oracles: the closed-form EMA Σ_t w_t·B_t·A_t of the merged updates (dense), and the truncated SVD
of a dense matrix (Eckart–Young). The sequences change each factor's gauge (B_t·G⁻¹, G·A_t), which
leaves the merged updates unchanged but moves the factors: averaging the factors one by one, as
the EMA did before, gives another matrix.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from sfd.core.conditions import ClassConditions
from sfd.core.module import SFDModule, ema_decay_at
from sfd.core.sigma import UniformTimestepSigma
from sfd.teachers import PretrainedVPTeacher
from sfd.teachers.adapter_settings import EMA_ADAPTER, GENERATOR_ADAPTER, AdapterSettings
from sfd.teachers.adapters import low_rank_lerp


def gauged_updates(out: int, inner: int, rank: int, steps: int, seed: int = 0) -> list:
    """(B_t, A_t) whose products C_t·A share one row space (rank ≤ r) while each factor moves."""
    rng = torch.Generator().manual_seed(seed)
    row_space = torch.randn(rank, inner, generator=rng, dtype=torch.float64)
    pairs = []
    for _ in range(steps):
        c = torch.randn(out, rank, generator=rng, dtype=torch.float64)
        gauge = torch.randn(rank, rank, generator=rng, dtype=torch.float64) + 3 * torch.eye(
            rank, dtype=torch.float64
        )
        pairs.append((c @ torch.linalg.inv(gauge), gauge @ row_space))
    return pairs


def test_low_rank_lerp_is_the_ema_of_the_merged_updates() -> None:
    pairs = gauged_updates(out=9, inner=7, rank=3, steps=6)
    b_ema, a_ema = (t.clone() for t in pairs[0])
    factor_b, factor_a = (t.clone() for t in pairs[0])
    exact = pairs[0][0] @ pairs[0][1]
    for step, (b, a) in enumerate(pairs[1:], start=2):
        weight = 1.0 / step  # the running mean: the power-function EMA with γ = 0
        low_rank_lerp((b_ema, a_ema), (b, a), weight)
        exact = (1 - weight) * exact + weight * (b @ a)
        factor_b.lerp_(b, weight)
        factor_a.lerp_(a, weight)
    torch.testing.assert_close(b_ema @ a_ema, exact, rtol=1e-9, atol=1e-9)
    # the old per-factor average is another matrix on this sequence (the test can fail)
    assert (factor_b @ factor_a - exact).abs().max() > 0.1 * exact.abs().max()


def test_low_rank_lerp_truncates_to_the_best_rank_k_matrix() -> None:
    rng = torch.Generator().manual_seed(1)
    shape = {"dtype": torch.float64, "generator": rng}
    b_ema, a_ema = torch.randn(8, 2, **shape), torch.randn(2, 6, **shape)
    b, a = torch.randn(8, 2, **shape), torch.randn(2, 6, **shape)
    exact = 0.7 * b_ema @ a_ema + 0.3 * b @ a  # rank 4
    u, s, vh = torch.linalg.svd(exact)
    best = u[:, :2] @ torch.diag(s[:2]) @ vh[:2]
    low_rank_lerp((b_ema, a_ema), (b, a), 0.3)
    torch.testing.assert_close(b_ema @ a_ema, best, rtol=1e-9, atol=1e-9)


def test_low_rank_lerp_with_a_rank_above_the_layers_size() -> None:
    """Rank 8 on a layer with 4 outputs (peft allows it): the sum has rank <= 4, so the EMA of the
    merged updates is exact, its factors zero beyond."""
    rng = torch.Generator().manual_seed(3)
    shape = {"dtype": torch.float64, "generator": rng}
    b_ema, a_ema = torch.randn(4, 8, **shape), torch.randn(8, 16, **shape)
    b, a = torch.randn(4, 8, **shape), torch.randn(8, 16, **shape)
    exact = 0.9 * b_ema @ a_ema + 0.1 * b @ a
    low_rank_lerp((b_ema, a_ema), (b, a), 0.1)
    torch.testing.assert_close(b_ema @ a_ema, exact, rtol=1e-9, atol=1e-9)
    assert b_ema.shape == (4, 8) and a_ema.shape == (8, 16)
    assert not b_ema[:, 4:].any() and not a_ema[4:].any()


def test_low_rank_lerp_of_convolution_factors() -> None:
    """A convolution's A is (r, in, kh, kw) and B is (out, r, 1, 1): flattened, the same maths."""
    rng = torch.Generator().manual_seed(2)
    b_ema, a_ema = torch.zeros(5, 2, 1, 1), torch.randn(2, 3, 3, 3, generator=rng)
    b, a = torch.randn(5, 2, 1, 1, generator=rng), torch.randn(2, 3, 3, 3, generator=rng)
    low_rank_lerp((b_ema, a_ema), (b, a), 0.25)
    torch.testing.assert_close(
        b_ema.flatten(1) @ a_ema.flatten(1),
        0.25 * b.flatten(1) @ a.flatten(1),
        atol=1e-6,
        rtol=1e-5,
    )
    assert b_ema.shape == (5, 2, 1, 1) and a_ema.shape == (2, 3, 3, 3)


def shared_module(teacher_dir: Path, kind: str = "lora") -> SFDModule:
    return SFDModule(
        teacher=PretrainedVPTeacher(str(teacher_dir)),
        conditions=ClassConditions(forget=0, override=1),
        sigma_sampler=UniformTimestepSigma(38, 712),
        batch_size=2,
        ema_decay=0.9,
        ema_power=0.0,  # decays 0, 1/2, 2/3, ... capped at 0.9
        adapters=AdapterSettings(rank=2, kind=kind),
    )


def lora_layers(sfd: SFDModule) -> list:
    return [m for m in sfd.teacher.modules() if isinstance(m, BaseTunerLayer)]


@torch.no_grad()
def test_the_ema_adapter_averages_the_generators_merged_updates(tiny_teacher_dir: Path) -> None:
    """Every adapted layer (linear and convolution) of the EMA adapter computes the closed-form EMA
    of the generator's merged updates ΔW_t = s·B_t·A_t, whatever the factors' gauge."""
    sfd = shared_module(tiny_teacher_dir)
    layers = lora_layers(sfd)
    assert any(isinstance(layer.get_base_layer(), torch.nn.Conv2d) for layer in layers)
    factors = [
        (layer.lora_B[GENERATOR_ADAPTER].weight, layer.lora_A[GENERATOR_ADAPTER].weight)
        for layer in layers
    ]
    sequences = [
        gauged_updates(b.shape[0], a[0].numel(), 2, steps=5, seed=index)
        for index, (b, a) in enumerate(factors)
    ]
    expected = [0.0] * len(layers)
    for step in range(1, 6):
        decay = ema_decay_at(step, 0.9, 0.0)
        for index, ((b, a), layer) in enumerate(zip(factors, layers, strict=True)):
            new_b, new_a = sequences[index][step - 1]
            b.copy_(new_b.reshape(b.shape))
            a.copy_(new_a.reshape(a.shape))
            expected[index] = decay * expected[index] + (1 - decay) * layer.get_delta_weight(
                GENERATOR_ADAPTER
            )
        sfd.update_ema(step)
    for index, layer in enumerate(layers):
        scale = expected[index].abs().max().item()  # float32 factors of entries up to ~100
        torch.testing.assert_close(
            layer.get_delta_weight(EMA_ADAPTER), expected[index], rtol=0, atol=1e-5 * scale
        )


@pytest.mark.parametrize("kind", ["lokr"])
@torch.no_grad()
def test_adapters_without_a_low_rank_product_are_averaged_weight_by_weight(
    tiny_teacher_dir: Path, kind: str
) -> None:
    """LoKr's Kronecker factors have no low-rank product to average: each weight is lerped."""
    sfd = shared_module(tiny_teacher_dir, kind)
    live = list(sfd.generator.parameters())
    for param in live:
        param.add_(torch.randn_like(param))
    before = [p.clone() for p in sfd.ema.parameters()]
    sfd.update_ema(3)
    decay = ema_decay_at(3, 0.9, 0.0)
    for ema, old, new in zip(sfd.ema.parameters(), before, live, strict=True):
        torch.testing.assert_close(ema, old.lerp(new, 1 - decay))
