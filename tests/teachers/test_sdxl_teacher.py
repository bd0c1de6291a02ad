"""The SDXL adapter: prompts encoded as diffusers' SDXL pipeline encodes them, time ids as a user's
generation sets them, pooled embeddings aligned with their prompts through every condition
operation, and each family's folder refused by the other family's teacher."""

from __future__ import annotations

import pytest
import torch
from sd_fixtures import NEGATIVE, celebrity_conditions

from sfd.core.conditions import TextCondition
from sfd.errors import SFDConfigError
from sfd.teachers import StableDiffusionTeacher, StableDiffusionXLTeacher

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sdxl_teacher(sdxl_dirs):
    return StableDiffusionXLTeacher(str(sdxl_dirs["epsilon"]))


def stock_pipeline(folder):
    from diffusers import StableDiffusionXLPipeline

    return StableDiffusionXLPipeline.from_pretrained(folder, add_watermarker=False)


def test_prompts_are_encoded_as_the_stock_sdxl_pipeline_encodes_them(sdxl_dirs, sdxl_teacher):
    prompts = ["a photo of Brad Pitt", "a cat sitting on a chair"]
    embeds, pooled = sdxl_teacher.encode_prompts([*prompts, NEGATIVE, ""], batch_size=3)
    assert embeds.shape == (4, 77, 40) and pooled.shape == (4, 16)
    pipe = stock_pipeline(sdxl_dirs["epsilon"])
    with torch.no_grad():
        stock = pipe.encode_prompt(prompts, negative_prompt=[NEGATIVE] * 2)
        _, zero_negative, _, zero_negative_pooled = pipe.encode_prompt(prompts)
    prompt_embeds, negative_embeds, prompt_pooled, negative_pooled = stock
    torch.testing.assert_close(embeds[:2], prompt_embeds, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled[:2], prompt_pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embeds[2], negative_embeds[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled[2], negative_pooled[0], rtol=1e-5, atol=1e-6)
    # force_zeros_for_empty_prompt: the empty prompt is the stock pipeline's absent negative
    assert torch.equal(embeds[3], zero_negative[0]) and not embeds[3].any()
    assert torch.equal(pooled[3], zero_negative_pooled[0]) and not pooled[3].any()
    assert pooled[:3].abs().amin(dim=-1).gt(0).any()  # real pooled vectors, not zeros


def test_without_force_zeros_the_empty_prompt_is_encoded(tmp_path) -> None:
    from sdxl_fixtures import save_tiny_sdxl_pipeline

    folder = save_tiny_sdxl_pipeline(tmp_path / "plain", force_zeros=False)
    teacher = StableDiffusionXLTeacher(str(folder))
    assert teacher.force_zeros_for_empty_prompt is False
    embeds, pooled = teacher.encode_prompts(["a cat", ""])
    with torch.no_grad():
        _, negative, _, negative_pooled = stock_pipeline(folder).encode_prompt(["a cat"])
    assert embeds[1].abs().max() > 0.1
    torch.testing.assert_close(embeds[1], negative[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pooled[1], negative_pooled[0], rtol=1e-5, atol=1e-6)


def test_time_ids_follow_the_generation_resolution_and_are_configurable(sdxl_dirs) -> None:
    folder = str(sdxl_dirs["epsilon"])
    # 8×8 latents through a 2-level VAE: the stock pipeline's default 16×16 images
    assert StableDiffusionXLTeacher(folder).time_ids == (16, 16, 0, 0, 16, 16)
    custom = StableDiffusionXLTeacher(
        folder, original_size=[32, 24], crops_coords_top_left=[4, 2], target_size=[16, 8]
    )
    assert custom.time_ids == (32, 24, 4, 2, 16, 8)
    assert custom.spec()["time_ids"] == [32, 24, 4, 2, 16, 8]
    for bad, match in [
        ({"original_size": [0, 16]}, "original_size=\\[0, 16\\]"),
        ({"target_size": [16]}, "target_size=\\[16\\]"),
        ({"crops_coords_top_left": [-1, 0]}, "crops_coords_top_left"),
    ]:
        with pytest.raises(SFDConfigError, match=match):
            StableDiffusionXLTeacher(folder, **bad)


def test_each_family_refuses_the_other_familys_folder(sdxl_dirs, sd_dirs) -> None:
    with pytest.raises(SFDConfigError, match="is an SDXL pipeline.*StableDiffusionXLTeacher"):
        StableDiffusionTeacher(str(sdxl_dirs["epsilon"]))
    with pytest.raises(SFDConfigError, match="is not an SDXL pipeline.*StableDiffusionTeacher"):
        StableDiffusionXLTeacher(str(sd_dirs["epsilon"]))


def test_the_unet_sees_the_time_ids_and_the_null_prompts_pooled_embedding(sdxl_teacher) -> None:
    """One guided call: 2B rows, conditional then null, each with its own pooled vector."""
    embeds, pooled = sdxl_teacher.encode_prompts(["a cat", "a dog", NEGATIVE])
    cond = TextCondition(
        embeds[:2],
        embeds[[2, 2]],
        pooled_embeds=pooled[:2],
        negative_pooled=pooled[[2, 2]],
    )
    seen = []
    hook = sdxl_teacher.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs), with_kwargs=True
    )
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([0.5, 3.0])
    with torch.no_grad():
        guided = sdxl_teacher.guided(x, sigma, cond, 4.5)
        d_cond = sdxl_teacher(x, sigma, cond)
        d_null = sdxl_teacher(x, sigma, cond.null())
    hook.remove()
    call = seen[0]
    assert torch.equal(call["encoder_hidden_states"], torch.cat([embeds[:2], embeds[[2, 2]]]))
    assert torch.equal(
        call["added_cond_kwargs"]["text_embeds"], torch.cat([pooled[:2], pooled[[2, 2]]])
    )
    expected_ids = torch.tensor([[16.0, 16, 0, 0, 16, 16]] * 4)
    assert torch.equal(call["added_cond_kwargs"]["time_ids"], expected_ids)
    torch.testing.assert_close(guided, d_null + 4.5 * (d_cond - d_null), rtol=1e-3, atol=1e-3)
    with pytest.raises(TypeError, match="pooled_embeds"):
        sdxl_teacher(x, sigma, TextCondition(embeds[:2], embeds[:2]))


def test_pooled_embeddings_stay_aligned_through_sampling_dropout_null_and_roles(
    sdxl_teacher,
) -> None:
    conditions = celebrity_conditions(NEGATIVE, ["teacher"])
    conditions.bind(sdxl_teacher)
    unique = [*conditions.remain_prompts, *conditions.forget_prompts, NEGATIVE]
    unique += conditions.override_prompts
    embeds, pooled = sdxl_teacher.encode_prompts(unique)
    pooled_of = {p: pooled[i] for i, p in enumerate(unique)}
    batch = conditions.sample(6, torch.Generator().manual_seed(0))

    def check(cond: TextCondition, negative: str | None) -> None:
        for prompt, vector in zip(cond.prompts, cond.pooled_embeds, strict=True):
            assert (
                torch.allclose(vector, pooled_of[prompt], atol=1e-5) if prompt else not vector.any()
            )
        null = torch.zeros(16) if negative is None else pooled_of[negative]
        assert all(torch.allclose(v, null, atol=1e-5) for v in cond.negative_pooled)
        assert not cond.empty_pooled.any()  # force_zeros_for_empty_prompt

    check(batch.remain, None)
    check(batch.forget, NEGATIVE)
    check(batch.override, NEGATIVE)
    check(conditions.for_role(batch.forget, "fake_train"), None)  # not in negative_for
    check(conditions.for_role(batch.forget, "teacher"), NEGATIVE)
    check(batch.forget[1:4], NEGATIVE)
    check(batch.forget[torch.tensor([5, 0])], NEGATIVE)
    null = batch.forget.null()
    assert torch.equal(null.pooled_embeds, batch.forget.negative_pooled)
    drop = torch.tensor([True, False, True, False, False, True])
    dropped = batch.forget.dropped(drop)
    assert not dropped.pooled_embeds[drop].any() and not dropped.negative_pooled[drop].any()
    assert torch.equal(dropped.pooled_embeds[~drop], batch.forget.pooled_embeds[~drop])
    assert torch.equal(dropped.negative_pooled[~drop], batch.forget.negative_pooled[~drop])
    moved = batch.forget.to("cpu")
    assert torch.equal(moved.pooled_embeds, batch.forget.pooled_embeds)
    preview = conditions.preview(2, 2, torch.Generator().manual_seed(1))
    check(preview.remain, None)
    check(preview.forget, NEGATIVE)


def test_text_condition_rejects_misaligned_pooled_embeddings() -> None:
    embeds = torch.zeros(2, 5, 8)
    with pytest.raises(ValueError, match="negative_pooled"):
        TextCondition(embeds, embeds, pooled_embeds=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="without pooled_embeds"):
        TextCondition(embeds, embeds, negative_pooled=torch.zeros(2, 4))
    with pytest.raises(ValueError, match="B = 2"):
        TextCondition(
            embeds, embeds, pooled_embeds=torch.zeros(3, 4), negative_pooled=torch.zeros(3, 4)
        )
    with pytest.raises(ValueError, match="empty_pooled exactly when"):
        TextCondition(
            embeds,
            embeds,
            empty_embeds=embeds,
            pooled_embeds=torch.zeros(2, 4),
            negative_pooled=torch.zeros(2, 4),
        )
