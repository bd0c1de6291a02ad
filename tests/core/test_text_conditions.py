"""Prompt conditions: override prompts, prompt files, the nudity recipe, rank slicing, caching."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS
from sd_fixtures import NEGATIVE, celebrity_conditions

from sfd.core.conditions import (
    ClassConditions,
    NudityConditions,
    PromptConditions,
    read_prompt_file,
    replace_concept,
)
from sfd.core.conditions.text import default_data_file
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


def test_nudity_recipe_is_the_reference_prompt_set(tmp_path) -> None:
    """12 subjects x 27 keywords, the keyword before or after; override the bare subject."""
    conds = NudityConditions()
    assert len(conds.forget_prompts) == 12 * 27 * 2
    for forget in ("nudity Woman", "Woman, nudity", "private setting Human Form"):
        index = conds.forget_prompts.index(forget)
        assert conds.override_prompts[index] in ("Woman", "Human Form")
    assert set(conds.override_prompts) == set(
        read_prompt_file(default_data_file("nudity_subjects.txt"))
    )
    # the reference's nsfw_prompt.txt: the comma-joined keyword list
    assert conds.negative_prompt.startswith("nudity, sexual, explicit, pornography")
    assert conds.negative_prompt.endswith("objectification, private setting")
    assert conds.negative_for == ("teacher",)  # the reference default (use_neg 0,0,1)
    with pytest.raises(SFDConfigError, match="subject"):
        NudityConditions(templates=["{keyword} only"])
    with pytest.raises(SFDConfigError, match="'student'"):
        NudityConditions(negative_for=["teacher", "student"])


def test_celebrity_default_prompts_are_the_shipped_list() -> None:
    """The 50 prompts of the reference's brad_pitt_prompts.txt; templates stay an option."""
    conds = PromptConditions({"brad pitt": "a middle aged man"})
    assert len(conds.forget_prompts) == 50
    assert conds.forget_prompts[0] == "A photo of Brad Pitt on a red carpet."
    assert conds.override_prompts[0] == "A photo of a middle aged man on a red carpet."
    templated = PromptConditions({"brad pitt": "a man"}, templates=["a photo of {concept}"])
    assert templated.forget_prompts == ["a photo of brad pitt"]
    no_list = PromptConditions({"tom cruise": "a man"})  # no shipped list: the templates
    assert (
        all("tom cruise" in p for p in no_list.forget_prompts) and len(no_list.forget_prompts) == 8
    )


def test_the_style_preset_maps_each_van_gogh_painting_to_a_painting() -> None:
    """configs/sd15_style.yaml's pair on the shipped list: the override is the forget prompt with
    the artist removed (hand-written pairs), and no override names the artist."""
    import yaml

    preset = yaml.safe_load((CONFIGS / "sd15_style.yaml").read_text())
    conds = PromptConditions(**preset["model"]["conditions"]["init_args"])
    assert len(conds.forget_prompts) == 40
    assert conds.forget_prompts[2] == "A Van Gogh painting of sunflowers in a vase."
    assert conds.override_prompts[2] == "A painting of sunflowers in a vase."
    assert conds.override_prompts[3] == "A painting of a cafe terrace at night."
    assert not any("gogh" in p.lower() for p in conds.override_prompts)
    assert all("van gogh painting" in p.lower() for p in conds.forget_prompts)


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
    # docs/method.md §4: the negative prompt belongs to forget batches; remain batches use "".
    empty, negative = sd_teacher.encode_prompts(["", NEGATIVE])
    torch.testing.assert_close(whole.remain.negative_embeds, empty.expand(6, -1, -1))
    for role in ("forget", "override"):
        torch.testing.assert_close(getattr(whole, role).negative_embeds, negative.expand(6, -1, -1))
    # ... and only the networks in `negative_for` see it (default: the teacher).
    assert conds.for_role(whole.override, "teacher") is whole.override
    for role in ("fake_train", "fake_eval"):
        seen = conds.for_role(whole.forget, role)
        assert torch.equal(seen.prompt_embeds, whole.forget.prompt_embeds)
        torch.testing.assert_close(seen.negative_embeds, empty.expand(6, -1, -1))
    # condition dropout: a dropped row is the empty prompt, its negative too
    dropped = whole.forget.dropped(torch.tensor([True, False, False, False, False, True]))
    for row, drop in enumerate([True, False, False, False, False, True]):
        prompt = dropped.prompt_embeds[row]
        torch.testing.assert_close(prompt, empty if drop else whole.forget.prompt_embeds[row])
        torch.testing.assert_close(dropped.negative_embeds[row], empty if drop else negative)
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
