"""What breaks in torchmetrics 1.9's CLIPScore with transformers 5 (tiny random CLIP, offline)."""

import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sd_fixtures import clip_tokenizer_files  # noqa: E402
from torchmetrics.multimodal.clip_score import CLIPScore  # noqa: E402
from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPProcessor,
    CLIPTokenizer,
)

torch.manual_seed(0)
config = CLIPConfig(
    text_config=dict(
        vocab_size=49408,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
    ),
    vision_config=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
    ),
    projection_dim=16,
)
folder = Path(tempfile.mkdtemp()) / "clip"
CLIPModel(config).save_pretrained(folder)
tokenizer = CLIPTokenizer.from_pretrained(clip_tokenizer_files(), model_max_length=77)
image_processor = CLIPImageProcessor(
    size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
)
CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)

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
