"""Prompt conditions: override prompts, prompt files, the nudity recipe, rank slicing, caching."""

from __future__ import annotations

import pytest
import torch
from sd_fixtures import NEGATIVE, celebrity_conditions

from sfd.core.conditions import ClassConditions, NudityConditions, PromptConditions, replace_concept
from sfd.core.module import SFDModule
from sfd.core.sigma import UniformTimestepSigma
from sfd.errors import SFDConfigError

pytestmark = pytest.mark.usefixtures("single_thread")


def test_override_prompts_replace_the_concept_case_insensitively() -> None:
    assert (
        replace_concept("Brad Pitt holding a coffee cup", "brad pitt", "a middle aged man")
        == "a middle aged man holding a coffee cup"
    )
    conds = celebrity_conditions()
    pairs = dict(zip(conds.forget_prompts, conds.override_prompts, strict=True))
    assert pairs["a photo of Brad Pitt"] == "a photo of a middle aged man"
    assert (
        pairs["angelina jolie holding a coffee cup"] == "a middle aged woman holding a coffee cup"
    )
    assert len(pairs) == 4 and len(conds.remain_prompts) >= 40


def test_forget_prompt_file_and_validation_errors(tmp_path) -> None:
    forget = tmp_path / "forget.txt"
    forget.write_text("BRAD PITT on a red carpet\n\nan interview with brad pitt\n")
    conds = PromptConditions({"brad pitt": "a middle aged man"}, forget_prompts=str(forget))
    assert conds.override_prompts == [
        "a middle aged man on a red carpet",
        "an interview with a middle aged man",
    ]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    cases = {
        "empty.txt": dict(concepts={"brad pitt": "a man"}, remain_prompts=str(empty)),
        "missing.txt": dict(concepts={"brad pitt": "a man"}, forget_prompts="missing.txt"),
        "'tom cruise'": dict(
            concepts={"brad pitt": "a man", "tom cruise": "a man"}, forget_prompts=str(forget)
        ),
        "equals its forget concept": dict(concepts={"Brad Pitt": "brad pitt"}),
        "no '{concept}' slot": dict(concepts={"brad pitt": "a man"}, templates=["a photo"]),
    }
    for expected, kwargs in cases.items():
        with pytest.raises(SFDConfigError, match=expected):
            PromptConditions(**kwargs)


def test_nudity_recipe(tmp_path) -> None:
    conds = NudityConditions()
    assert "a woman, nude" in conds.forget_prompts
    index = conds.forget_prompts.index("a woman, nude")
    assert conds.override_prompts[index] == "a woman"
    assert conds.negative_prompt.startswith("nude, naked")
    assert len(conds.forget_prompts) == 100
    with pytest.raises(SFDConfigError, match="subject"):
        NudityConditions(template="{keyword} only")


def test_sampling_is_rank_sliced_and_uses_cached_embeddings(sd_teacher) -> None:
    conds = celebrity_conditions(NEGATIVE)
    conds.check(sd_teacher.num_classes)
    conds.bind(sd_teacher)
    with pytest.raises(SFDConfigError, match="text-conditioned"):
        conds.check(10)
    whole = conds.sample(6, torch.Generator().manual_seed(5))
    ranks = [conds.sample(3, torch.Generator().manual_seed(5), 2, r) for r in range(2)]
    for role in ("remain", "forget", "override"):
        joined = torch.cat([getattr(r, role).prompt_embeds for r in ranks])
        assert torch.equal(joined, getattr(whole, role).prompt_embeds)
    # The cached rows are the text encoder's embeddings of the sampled prompts.
    for role in ("remain", "forget", "override"):
        batch = getattr(whole, role)
        # Encoded in another batch than the cache was: equal up to float reassociation.
        torch.testing.assert_close(
            batch.prompt_embeds,
            sd_teacher.encode_prompts(list(batch.prompts)),
            rtol=1e-4,
            atol=1e-4,
        )
    torch.testing.assert_close(
        whole.remain.negative_embeds[0],
        sd_teacher.encode_prompts([NEGATIVE])[0],
        rtol=1e-4,
        atol=1e-4,
    )
    for f, o in zip(whole.forget.prompts, whole.override.prompts, strict=True):
        concept = "Brad Pitt" if "Brad Pitt" in f else "angelina jolie"
        target = conds.concepts[concept]
        assert o == replace_concept(f, concept, target)


def test_text_and_class_components_do_not_mix(sd_teacher, tiny_teacher_dir) -> None:
    with pytest.raises(SFDConfigError, match="class-conditional teacher"):
        SFDModule(sd_teacher, ClassConditions(0, 1), UniformTimestepSigma(20, 980))
    from sfd.teachers import PretrainedVPTeacher

    with pytest.raises(SFDConfigError, match="text-conditioned"):
        SFDModule(
            PretrainedVPTeacher(str(tiny_teacher_dir)),
            celebrity_conditions(),
            UniformTimestepSigma(),
        )
