"""The text report's teacher row names the sampler the teacher was evaluated under."""

from __future__ import annotations

import pytest

from sfd.apps.demo_text.report import TextDemoResults, markdown_report
from sfd.eval.concepts import ConceptEvaluation, ForgetSetResult
from sfd.eval.text_models import ddim_text_model
from sfd.teachers import SD3Teacher, StableDiffusionTeacher

FILES = {name: f"{name}.png" for name in ("forgetting_curve", "forget_histogram", "samples")}
ATTACK = {
    "success_rate": 0.5,
    "budget": {"steps": 1},
    "objective": "o",
    "asr_definition": "a",
}


def evaluation(nfe: int, sampler: str) -> ConceptEvaluation:
    forget = ForgetSetResult(ua=0.9, as_override=0.8, histogram=[1, 9], num_images=10)
    return ConceptEvaluation(
        forget, forget, 0.9, {0: 0.9}, 0.9, 0.9, 5.0, 0.01, 0.001, nfe, sampler
    )


def report(teacher_sampler: str, nfe: int) -> list[str]:
    models = {
        "teacher": evaluation(nfe, teacher_sampler),
        "distilled_without_forgetting": evaluation(1, "one-step, no forgetting"),
        "sfd": evaluation(1, "one-step SFD"),
    }
    revival = {"steps": [0, 4], "ua": [0.9, 0.8], "threshold": 0.5, "steps_to_revival": None}
    revival |= {"budget": {"images": 4, "steps": 4, "lr": 1e-5, "batch_size": 2, "seed": 0}}
    revival |= {"condition": "c", "objective": "o"}
    results = TextDemoResults(
        2, 1, 0, ["zero", "one"], models, {key: {"soft": ATTACK} for key in models},
        [], [], 10, {}, {}, [], {"teacher": revival},
    )  # fmt: skip
    return markdown_report(results, FILES).splitlines()


@pytest.mark.parametrize(
    ("family", "title"), [("epsilon", "teacher (DDIM)"), ("sd3", "teacher (flow Euler)")]
)
def test_the_teacher_row_names_its_real_sampler(family, title, sd_dirs, flow_dirs) -> None:
    if family == "sd3":
        teacher = SD3Teacher(str(flow_dirs["sd3"]), max_sequence_length=8)
    else:
        teacher = StableDiffusionTeacher(str(sd_dirs["epsilon"]))
    model = ddim_text_model(teacher, 28, None, lambda x: x, 4.5)  # the sampler the report shows
    lines = report(model.name, model.nfe)
    rows = [line for line in lines if line.startswith("| teacher")]
    assert len(rows) == 3  # the model table, the revival table, the per-class remain table
    assert rows[0].startswith(f"| {title} | 28 |") and rows[1].startswith(f"| {title} | 90.0 % |")
    assert all("DDIM" not in line for line in lines if line.startswith("|")) == (family == "sd3")


def test_the_revival_column_says_it_has_checkpoint_resolution() -> None:
    """The revival table's last column is the first checkpoint (0, N/4, N/2, N) with UA < 50 %,
    titled so, and the note under it says UA is measured only there."""
    lines = report("DDIM", 50)
    header = next(line for line in lines if line.startswith("| model | UA after 0 steps"))
    assert header.endswith("| first checkpoint with UA < 50 % |")
    assert any(
        line.startswith("| teacher (DDIM) | 90.0 % | 80.0 % | not within 4 |") for line in lines
    )
    assert any("UA is measured only after 0, N/4, N/2 and N steps" in line for line in lines)
    assert not any("steps until" in line for line in lines)
