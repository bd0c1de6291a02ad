"""Captioned data: caption templates, concept pairs, idx files, Fashion-MNIST loading."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from text_fixtures import write_idx, write_tiny_fashion

from sfd.apps.data.captions import (
    DIGITS_VOCABULARY,
    FASHION_FOLDERS,
    FASHION_VOCABULARY,
    CaptionVocabulary,
    load_captioned,
    load_fashion_mnist,
    read_idx,
)
from sfd.apps.demo_text.prompts import shipped_paraphrases, write_prompt_sets
from sfd.core.conditions.text import replace_concept
from sfd.errors import SFDConfigError


def test_captions_are_templates_times_names():
    captions = DIGITS_VOCABULARY.captions(7)
    assert captions[:2] == ["a handwritten digit seven", "a handwritten digit 7"]
    assert len(captions) == len(DIGITS_VOCABULARY.templates) * 2
    table, labels = DIGITS_VOCABULARY.caption_table()
    assert len(table) == len(labels) == 10 * len(captions)
    assert labels.tolist() == sorted(labels.tolist())


@pytest.mark.parametrize("vocabulary", [DIGITS_VOCABULARY, FASHION_VOCABULARY])
def test_every_override_prompt_names_only_the_override(vocabulary):
    """The forget -> override replacement of PromptConditions turns each forget caption into an
    override caption, for every pair of classes."""
    for forget in range(vocabulary.num_classes):
        for override in range(vocabulary.num_classes):
            if forget == override:
                continue
            pairs = vocabulary.concept_pairs(forget, override)
            for prompt in vocabulary.captions(forget):
                concept = max((c for c in pairs if c.lower() in prompt.lower()), key=len)
                replaced = replace_concept(prompt, concept, pairs[concept])
                assert replaced in vocabulary.captions(override), (prompt, replaced)


def test_paraphrases_are_held_out_from_training_captions(tmp_path):
    for source in ("digits", "fashion-mnist"):
        vocabulary = DIGITS_VOCABULARY if source == "digits" else FASHION_VOCABULARY
        for variant in ("", "b"):
            prompts = write_prompt_sets(
                vocabulary, 7, 1, shipped_paraphrases(source, variant), tmp_path / source
            )
            training = set(vocabulary.caption_table()[0])
            assert not set(prompts.forget_paraphrases.prompts) & training
            assert set(prompts.remain.labels) == set(range(10)) - {7}


def test_vocabulary_checks_its_templates():
    with pytest.raises(SFDConfigError, match="name"):
        CaptionVocabulary((("a",),), ("no slot",), ("a",))


def test_idx_round_trip(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(SFDConfigError, match="unsigned-byte"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + (9).to_bytes(4, "big")))
    with pytest.raises(SFDConfigError, match="header"):
        read_idx(tmp_path / "short.gz")


def test_fashion_folder_loads_padded_with_labels(tmp_path):
    folder = write_tiny_fashion(tmp_path / "fashion", per_class=2, test_per_class=1)
    images = load_fashion_mnist(str(folder))
    assert images.images.shape == (30, 1, 32, 32) and images.images.dtype == torch.uint8
    assert images.labels.tolist() == [c for c in range(10) for _ in range(2)] + list(range(10))
    assert int(images.images[:, :, :2].max()) == 0  # the 2-pixel padding is black
    assert len(load_fashion_mnist(str(folder), "train")) == 20
    data, vocabulary = load_captioned(str(folder))
    assert vocabulary is FASHION_VOCABULARY and data.class_names[7] == "sneaker"
    with pytest.raises(SFDConfigError, match="idx files"):
        load_captioned(str(tmp_path))


@pytest.mark.slow
def test_debian_fashion_mnist_has_70000_images():
    if not Path(FASHION_FOLDERS[0]).is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (make fashion-mnist)")
    images = load_fashion_mnist("fashion-mnist")
    assert images.images.shape == (70000, 1, 32, 32)
    assert torch.bincount(images.labels).tolist() == [7000] * 10
