"""`prompt_tokenizer`: the tokenizer a soft prompt's tokens enter, read alone before a text model
loads, is the one the loaded model encodes with, at the same padded length."""

from __future__ import annotations

from pathlib import Path

import pytest
from flow_fixtures import save_tiny_flux_pipeline, save_tiny_sd3_pipeline
from text_fixtures import save_tiny_bert, save_tiny_text_teacher

from sfd.apps.harness.text_folders import load_text_model, prompt_tokenizer
from sfd.core.generator import OneStepGenerator
from sfd.pipelines.io import save_generator
from sfd.teachers import FluxTeacher, SD3Teacher

PROMPT = "a handwritten digit seven"


def _exports(root: Path) -> dict[str, Path]:
    save_tiny_sd3_pipeline(root / "sd3")
    save_tiny_flux_pipeline(root / "flux")
    teachers = {
        "sd3": SD3Teacher(str(root / "sd3"), max_sequence_length=8),
        "flux": FluxTeacher(str(root / "flux"), sample_size=8, max_sequence_length=6),
    }
    folders = {}
    for name, teacher in teachers.items():
        folders[name] = root / f"{name}_export"
        save_generator(OneStepGenerator(teacher, t_init=0.97), folders[name])
    folders["sd_teacher"] = save_tiny_text_teacher(
        root / "text_teacher", save_tiny_bert(root / "bert")
    )
    return folders


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _exports(tmp_path_factory.mktemp("prompt_tokenizer"))


@pytest.mark.parametrize("name", ["sd3", "flux", "sd_teacher"])
def test_the_tokenizer_alone_is_the_loaded_model_s(name: str, folders: dict[str, Path]) -> None:
    tokenizer, length = prompt_tokenizer(folders[name])
    encoder = load_text_model(folders[name]).encoder
    denoiser = getattr(encoder, "denoiser", None)
    expected = None if denoiser is None else denoiser.max_sequence_length
    assert length == expected
    loaded = (
        encoder.tokenizer
        if denoiser is None
        else encoder.pipeline.components[denoiser.sequence_encoder[0]]
    )
    assert type(tokenizer) is type(loaded)
    assert tokenizer(PROMPT).input_ids == loaded(PROMPT).input_ids
    assert tokenizer.model_max_length == loaded.model_max_length
