"""The evaluation classifier: a small CNN trained on real images that labels generated samples.

Its penultimate layer is the feature extractor for FID / KID (Inception weights cannot be
downloaded everywhere, and 8×8 digits are not ImageNet images). Saved as `config.json` +
`model.safetensors`, like a diffusers component.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sfd.errors import SFDConfigError
from sfd.images import LabelledImages
from sfd.progress import ProgressBar

STEPS = 800  # `train_classifier`'s default optimizer steps, the fewest the demos train
EPOCHS = 40  # the demos' classifiers see each training image this often ...
MAX_PIXELS = 25_000_000  # ... within this many training pixels (steps × batch × H × W; one thread:
# about a minute on 8×8 images)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class Classifier(nn.Module):
    """A small CNN: conv stages halving the resolution down to ≤ 4 pixels, global pooling, an MLP.

    Args:
        in_channels: image channels C.
        num_classes: number of classes K.
        image_size: (H, W) of the images.
        width: channels of the first stage (doubled per downsampling, at most 4×).
        feature_dim: size F of the penultimate embedding (the FID / KID features).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        image_size: tuple[int, int],
        width: int = 32,
        feature_dim: int = 128,
    ) -> None:
        super().__init__()
        self.config: dict[str, Any] = {
            "in_channels": in_channels,
            "num_classes": num_classes,
            "image_size": list(image_size),
            "width": width,
            "feature_dim": feature_dim,
        }
        self.num_classes = num_classes
        self.num_features = feature_dim  # read by torchmetrics when used as an FID `feature=`
        layers: list[nn.Module] = []
        channels, size = in_channels, min(image_size)
        stage_width = width
        while True:
            layers += [
                nn.Conv2d(channels, stage_width, 3, padding=1),
                nn.SiLU(),
                nn.Conv2d(stage_width, stage_width, 3, padding=1),
                nn.SiLU(),
            ]
            channels = stage_width
            if size <= 4:
                break
            layers.append(nn.MaxPool2d(2))
            size //= 2
            stage_width = min(2 * stage_width, 4 * width)
        self.trunk = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(channels, feature_dim), nn.SiLU())
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate embedding.

        Args:
            x: images in [-1, 1], (B, C, H, W).

        Returns:
            features, float32, (B, F).
        """
        pooled = self.trunk(x.float()).mean(dim=(2, 3))  # (B, C')
        return self.embed(pooled)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits.

        Args:
            x: images in [-1, 1], (B, C, H, W).

        Returns:
            logits, (B, K).
        """
        return self.head(self.dropout(self.features(x)))


@torch.no_grad()
def predict_labels(classifier: Classifier, x: Tensor, batch_size: int = 1024) -> Tensor:
    """Most likely class of each image.

    Args:
        classifier: the classifier (its mode is left unchanged; use eval mode).
        x: images in [-1, 1], (N, C, H, W).
        batch_size: images per forward pass.

    Returns:
        labels, int64, (N,).
    """
    if len(x) == 0:
        return torch.zeros(0, dtype=torch.int64, device=x.device)
    return torch.cat([classifier(chunk).argmax(dim=1) for chunk in x.split(batch_size)])


def accuracy(classifier: Classifier, data: LabelledImages) -> float:
    """Share of `data` the classifier labels correctly (in [0, 1])."""
    if len(data) == 0:
        raise SFDConfigError("cannot measure accuracy on an empty image set")
    device = next(classifier.parameters()).device
    predicted = predict_labels(classifier, data.to_model_space().to(device)).cpu()
    return (predicted == data.labels).float().mean().item()


def _augment(x: Tensor, shift: int, flip: bool, rng: torch.Generator) -> Tensor:
    """Random translations by up to `shift` pixels (edge padding) and optional mirror images."""
    batch, _, height, width = x.shape
    if shift > 0:
        padded = F.pad(x, (shift, shift, shift, shift), mode="replicate")
        offsets = torch.randint(0, 2 * shift + 1, (batch, 2), generator=rng)  # (B, 2): dy, dx
        shifted = torch.empty_like(x)
        for dy in range(2 * shift + 1):
            for dx in range(2 * shift + 1):
                chosen = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
                shifted[chosen] = padded[chosen, :, dy : dy + height, dx : dx + width]
        x = shifted
    if flip:
        mirror = torch.rand(batch, generator=rng) < 0.5
        x = torch.where(mirror.reshape(-1, 1, 1, 1), x.flip(3), x)
    return x


def classifier_steps(num_images: int, image_pixels: int, batch_size: int = 128) -> int:
    """The demos' classifier training length: `EPOCHS` passes over the `num_images` training
    images, at most `MAX_PIXELS` training pixels (images of `image_pixels` = H·W pixels), and at
    least `STEPS` optimizer steps either way.

    The 1,437 training digits (8×8) get `STEPS` (71 passes); 9,600 Fashion-MNIST 8×8 images get
    3,000 steps, where `STEPS` (10.7 passes) left the classifier undertrained (held-out accuracy
    73.3 % → 81.7 %, real sandals read as sneakers 15.8 % → 5.0 %; docs/results/classifier.md);
    32×32 images (Fashion-MNIST text) keep `STEPS`, already ~1 s a step on one loaded thread.
    """
    epochs = math.ceil(EPOCHS * num_images / batch_size)
    affordable = MAX_PIXELS // (batch_size * image_pixels)
    return max(STEPS, min(epochs, affordable))


def train_classifier(
    train: LabelledImages,
    heldout: LabelledImages,
    *,
    max_steps: int = STEPS,
    seed: int = 0,
    progress: bool = True,
    batch_size: int = 128,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    shift: int = 1,
    width: int = 32,
    feature_dim: int = 128,
) -> tuple[Classifier, float]:
    """Train the evaluation classifier on real images (Adam, cosine learning-rate decay).

    Args:
        train: training images.
        heldout: held-out images for the reported accuracy.
        max_steps: optimizer steps.
        seed: seed of the initial weights, batches and augmentations.
        progress: show a progress bar.
        batch_size: images per step.
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        shift: random translation augmentation in pixels (0: none); mirrors are added only when
            `train.horizontal_flip` says mirrored images are valid.
        width: channels of the first convolution stage.
        feature_dim: size of the penultimate embedding.

    Returns:
        (classifier in eval mode on the CPU, held-out accuracy in [0, 1]).
    """
    if max_steps < 1 or batch_size < 1:
        raise SFDConfigError(f"max_steps={max_steps} and batch_size={batch_size} must be ≥ 1")
    if len(train) == 0:
        raise SFDConfigError("the classifier's training set is empty")
    if heldout.image_shape != train.image_shape:
        raise SFDConfigError(
            f"held-out images {heldout.image_shape} differ in shape from training images "
            f"{train.image_shape}"
        )
    rng = torch.Generator().manual_seed(seed)
    # Weights and dropout draw from the global generator: fork it so training depends on `seed` only.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        channels, height, width_px = train.image_shape
        classifier = Classifier(channels, train.num_classes, (height, width_px), width, feature_dim)
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step / max_steps, 1.0)))
        )
        x_all, labels_all = train.to_model_space(), train.labels
        classifier.train()
        bar = ProgressBar(range(max_steps), desc="classifier", disable=not progress, leave=False)
        for _ in bar:
            index = torch.randint(0, len(train), (min(batch_size, len(train)),), generator=rng)
            x = _augment(x_all[index], shift, train.horizontal_flip, rng)  # (B, C, H, W)
            loss = F.cross_entropy(classifier(x), labels_all[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    classifier.eval()
    heldout_accuracy = accuracy(classifier, heldout) if len(heldout) else float("nan")
    return classifier, heldout_accuracy


def save_classifier(classifier: Classifier, directory: str | Path) -> Path:
    """Write `config.json` + `model.safetensors` into `directory` (created if needed); returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_NAME).write_text(json.dumps(classifier.config, indent=2) + "\n")
    state = {
        key: value.detach().cpu().contiguous() for key, value in classifier.state_dict().items()
    }
    save_file(state, directory / WEIGHTS_NAME)
    return directory


def load_classifier(directory: str | Path) -> Classifier:
    """Load a classifier written by `save_classifier`, in eval mode on the CPU."""
    directory = Path(directory)
    config_file, weights_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_file.is_file() or not weights_file.is_file():
        raise SFDConfigError(
            f"{str(directory)!r} is not a saved classifier (needs {CONFIG_NAME} and {WEIGHTS_NAME})"
        )
    config = json.loads(config_file.read_text())
    classifier = Classifier(
        config["in_channels"],
        config["num_classes"],
        tuple(config["image_size"]),
        config["width"],
        config["feature_dim"],
    )
    classifier.load_state_dict(load_file(weights_file), strict=True)
    return classifier.eval()
