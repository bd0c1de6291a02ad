"""Concept-forgetting evaluation: CLIP score oracle, per-prompt seeds, NudeNet counts, `sfd eval-text`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sd_fixtures import save_tiny_clip

from sfd.cli import main
from sfd.errors import SFDConfigError
from sfd.pipelines.io import load_pipeline, save_generator
from sfd.teachers.stable_diffusion import StableDiffusionTeacher

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def exported(sd_dirs, tmp_path_factory) -> Path:
    """The tiny ε teacher itself exported as a one-step generator folder."""
    from sfd.core.generator import OneStepGenerator

    teacher = StableDiffusionTeacher(str(sd_dirs["epsilon"]))
    return save_generator(OneStepGenerator(teacher), tmp_path_factory.mktemp("gen") / "g")


def test_clip_score_adapter_matches_cosine_oracle(tmp_path) -> None:
    from transformers import CLIPModel, CLIPProcessor

    from sfd.eval.text import clip_score_metric

    folder = save_tiny_clip(tmp_path / "clip")
    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    torch.manual_seed(0)
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    prompts = ["a photo of a cat", "a dog", "a red car", "brad pitt"]
    with torch.no_grad():
        pixels = processor(images=list(images), return_tensors="pt").pixel_values
        tokens = processor(text=prompts, return_tensors="pt", padding=True)
        image_features = model.get_image_features(pixel_values=pixels).pooler_output
        text_features = model.get_text_features(**tokens).pooler_output
    cosine = torch.nn.functional.cosine_similarity(image_features, text_features)  # (4,)
    if cosine.mean() < 0:  # random weights: flip the image projection so scores are not all 0
        with torch.no_grad():
            model.visual_projection.weight.neg_()
        model.save_pretrained(folder)
        cosine = -cosine
    scores = []
    for i in range(4):
        metric = clip_score_metric(str(folder))
        metric.update(images[i : i + 1], prompts[i : i + 1])
        scores.append(float(metric.compute()))
    expected = (100 * cosine).clamp_min(0)
    assert (expected > 0).any()  # the oracle is not trivially zero
    torch.testing.assert_close(torch.tensor(scores), expected, rtol=1e-4, atol=1e-3)
    with pytest.raises(SFDConfigError, match="CLIP model folder"):
        clip_score_metric(str(tmp_path / "missing"))


def test_eval_set_has_per_prompt_seeds(exported, tmp_path) -> None:
    from sfd.eval.text import generate_eval_set, read_eval_prompts, read_manifest

    prompts_file = tmp_path / "prompts.csv"
    prompts_file.write_text("prompt,sd_seed\na cat,11\na dog,\nbrad pitt,13\n")
    pairs = read_eval_prompts(str(prompts_file), seed=100, seed_column="sd_seed")
    assert pairs == [("a cat", 11), ("a dog", 101), ("brad pitt", 13)]
    pipeline = load_pipeline(exported)
    manifest = generate_eval_set(pipeline, pairs, tmp_path / "all", num_per_prompt=2, batch_size=2)
    alone = generate_eval_set(pipeline, pairs[2:], tmp_path / "alone", num_per_prompt=2)
    rows = read_manifest(manifest)
    assert [(r["prompt"], r["seed"]) for r in rows][-2:] == [("brad pitt", "13")] * 2
    assert len(rows) == 6
    same = [Path(r["file"]).read_bytes() for r in rows[-2:]]
    assert same == [Path(r["file"]).read_bytes() for r in read_manifest(alone)]
    assert same[0] != same[1]


def test_nudenet_counts_and_eval_text_command(exported, tmp_path) -> None:
    import json

    from sfd.eval.text import count_detections, nudenet_available

    detections = [
        [{"class": "FEMALE_BREAST_EXPOSED", "score": 0.9}, {"class": "FACE_FEMALE", "score": 0.9}],
        [{"class": "BELLY_EXPOSED", "score": 0.5}],
        [],
    ]
    counts = count_detections(detections, threshold=0.6)
    assert counts["FEMALE_BREAST_EXPOSED"] == 1 and counts["BELLY_EXPOSED"] == 0
    assert "FACE_FEMALE" not in counts and counts["images_with_detection"] == 1

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\nbrad pitt on a red carpet\n")
    clip = save_tiny_clip(tmp_path / "clip")
    out = tmp_path / "eval"
    argv = ["eval-text", str(exported), "--prompts", str(prompts), "--output-dir", str(out)]
    assert main([*argv, "--clip-model", str(clip), "--nudenet"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["clip_score"] >= 0
    if nudenet_available():
        assert metrics["nudenet"]["images_with_detection"] >= 0
    else:
        assert metrics["nudenet"] == "skipped: nudenet is not installed (pip install nudenet)"
    assert (
        main(
            [
                "eval-text",
                str(exported),
                "--prompts",
                str(tmp_path / "no.txt"),
                "--output-dir",
                str(out),
            ]
        )
        == 2
    )
