"""Sample-grid previews of prompt samplers: `rows` distinct prompts, one per row, captioned."""

from __future__ import annotations

import torch

from sfd.core.conditions import PromptConditions


class FakeTextTeacher:
    """Encodes prompt i of a call as a (2, 3) block filled with a number unique to the prompt."""

    def __init__(self) -> None:
        self.codes: dict[str, float] = {}

    def encode_prompts(self, prompts: list[str], batch_size: int) -> torch.Tensor:
        rows = [
            torch.full((2, 3), self.codes.setdefault(p, float(len(self.codes)))) for p in prompts
        ]
        return torch.stack(rows)  # (U, 2, 3)


def test_preview_shows_distinct_prompts_one_per_row() -> None:
    teacher = FakeTextTeacher()
    conditions = PromptConditions({"brad pitt": "a middle aged man"})
    conditions.bind(teacher)
    preview = conditions.preview(per_row=3, rows=4, generator=torch.Generator().manual_seed(0))
    assert len(preview.remain_labels) == len(preview.forget_labels) == 4
    assert len(set(preview.remain_labels)) == 4 and len(set(preview.forget_labels)) == 4
    assert set(preview.remain_labels) <= set(conditions.remain_prompts)
    for caption in preview.forget_labels:
        forget, override = caption.removesuffix(")").split(" (forget → ")
        assert forget in conditions.forget_prompts
        assert override == conditions.override_prompts[conditions.forget_prompts.index(forget)]
    for cond, labels in ((preview.remain, preview.remain_labels),
                         (preview.forget, [c.split(" (forget")[0] for c in preview.forget_labels])):  # fmt: skip
        assert len(cond) == 12
        assert cond.prompts == tuple(p for p in labels for _ in range(3))  # row-major
        expected = torch.tensor([teacher.codes[p] for p in cond.prompts])
        assert torch.equal(cond.prompt_embeds[:, 0, 0], expected)
        assert torch.equal(cond.negative_embeds[:, 0, 0], torch.full((12,), teacher.codes[""]))
    again = conditions.preview(per_row=3, rows=4, generator=torch.Generator().manual_seed(0))
    assert again.remain_labels == preview.remain_labels  # fixed by the seed


def test_preview_rows_are_capped_by_the_prompts_there_are() -> None:
    conditions = PromptConditions({"brad pitt": "a man"}, templates=["a photo of {concept}"])
    conditions.bind(FakeTextTeacher())
    preview = conditions.preview(per_row=2, rows=5, generator=torch.Generator().manual_seed(1))
    assert preview.forget_labels == ["a photo of brad pitt (forget → a photo of a man)"]
    assert len(preview.remain_labels) == 5
