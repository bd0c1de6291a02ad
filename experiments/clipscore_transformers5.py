"""What breaks in torchmetrics 1.9's CLIPScore with transformers 5 (tiny random CLIP, offline).

    python experiments/clipscore_transformers5.py

Prints what each of two ways of giving CLIPScore a local CLIP model raises.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from pathlib import Path

import torch


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from sd_fixtures import save_tiny_clip
    from torchmetrics.multimodal.clip_score import CLIPScore
    from transformers import CLIPModel, CLIPProcessor

    folder = save_tiny_clip(Path(tempfile.mkdtemp()) / "clip")

    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    prompts = ["a photo of a cat", "a dog"]

    print("1) local path:")
    try:
        CLIPScore(model_name_or_path=str(folder))
    except Exception as error:  # noqa: BLE001 (a probe: report whatever breaks)
        print("   ", type(error).__name__, str(error)[:200])

    print("2) callable returning the stock CLIPModel + CLIPProcessor:")
    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    print("    processor:", type(processor.image_processor).__name__)
    out = model.get_image_features(pixel_values=torch.randn(1, 3, 32, 32))
    print("    get_image_features returns", type(out).__name__)
    try:
        metric = CLIPScore(model_name_or_path=lambda: (model, processor))
        metric.update(images, prompts)
        print("    score", metric.compute())
    except Exception as error:  # noqa: BLE001
        traceback.print_exc(limit=-2)
        print("   ", type(error).__name__, str(error)[:300])


if __name__ == "__main__":
    main()
