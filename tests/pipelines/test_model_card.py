"""The model card: sensible numbers, no empty or private cells, complete snippets."""

from __future__ import annotations

import re

import yaml

from sfd.pipelines.model_card import model_card, shown

RECORD = {
    "kind": "class",
    "has_vae": False,
    "pipeline_class": "OneStepPipeline",
    "pipeline_file": "one_step_pipeline.py",
    "sigma_init": 2.5,
    "timestep": 439.82000732421875,
    "teacher_source": "runs/teachers/tiny",
    "training": {
        "teacher": {"class": "PretrainedVPTeacher", "source": "runs/teachers/tiny"},
        "conditions": {"class": "ClassConditions", "forget": [0], "override": [1]},
        "sigma_sampler": {"class": "UniformTimestepSigma", "t_min": 38, "_table": None},
        "hyperparameters": {
            "alpha": 0.123456789,
            "sigma_init": 2.5,
            "fake_grad_clip": None,
            "generator_grad_clip": 1.0,
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
        },
        "optimizers": [
            {"class": "Adam", "lr": 0.0001, "betas": [0.0, 0.999], "weight_decay": None},
            {"class": "Adam", "lr": 0.0001, "betas": [0.0, 0.999], "weight_decay": 0},
        ],
        "global_step": 30,
    },
    "metrics": {"ua": 0.987654321, "fid": None, "kid": {"remain": 0.000123456}},
    "metrics_source": "metrics.json",
}


def test_numbers_are_rounded_and_empty_or_private_cells_dropped() -> None:
    card = model_card(RECORD)
    assert "| alpha | 0.1235 |" in card
    assert "| generator_grad_clip | 1 |" in card
    assert "fake_grad_clip" not in card  # None: no cell
    assert "_instantiator" not in card and "_table" not in card
    assert "network timestep 439.8)" in card
    assert "- σ sampler: `UniformTimestepSigma` t_min=38" in card
    assert "| fake score optimizer | Adam lr 0.0001, betas [0, 0.999] |" in card
    assert "| generator optimizer | Adam lr 0.0001, betas [0, 0.999], weight_decay 0 |" in card
    assert "| ua | 0.9877 |" in card and "| kid.remain | 0.0001235 |" in card
    assert "fid" not in card.split("## Evaluation")[1].split("## How to sample")[0]
    assert "None" not in card
    assert "- Iterations: 30" in card


def test_a_class_conditional_model_is_tagged_as_such() -> None:
    card = model_card(RECORD)
    meta = yaml.safe_load(card.split("---\n")[1])
    assert {"class-conditional", "class-conditional-image-generation"} <= set(meta["tags"])
    assert "text-to-image" not in meta["tags"]
    assert "class-conditional generator" in card and "class_labels" in card


def test_every_snippet_is_complete() -> None:
    for record in (RECORD, {**RECORD, "kind": "text", "has_vae": True}):
        snippets = re.findall(r"```python\n(.*?)```", model_card(record), re.S)
        assert len(snippets) == (3 if record["kind"] == "text" else 2)
        for snippet in snippets:
            compile(snippet, "snippet", "exec")
            assert "import torch" in snippet and "image = pipe(" in snippet
            assert ("from diffusers import" in snippet and "from_pretrained(" in snippet) or (
                "from sfd.pipelines import load_pipeline" in snippet and "load_pipeline(" in snippet
            )


def test_shown() -> None:
    assert shown(0.123456789) == "0.1235" and shown(1e-4) == "0.0001" and shown(3e7) == "3e+07"
    assert shown([0.0, 0.999]) == "[0, 0.999]" and shown(7) == "7" and shown("x") == "x"
    assert shown({"a": 1.0, "b": None, "_c": 2}) == "a=1"
