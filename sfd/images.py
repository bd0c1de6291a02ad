"""Images in one place: model space [-1, 1] <-> uint8 pixels, labelled image sets, grids.

Model space is float (B, C, H, W) in [-1, 1], what every network here reads and writes; uint8
(B, C, H, W) in [0, 255] is what a PNG stores and what every metric is computed on, so real and
generated images always pass through the same conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sfd.errors import SFDConfigError


def to_uint8(images: Tensor) -> Tensor:
    """Model-space images in [-1, 1] (B, C, H, W) to uint8 [0, 255], the way a PNG stores them."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def from_uint8(images: Tensor) -> Tensor:
    """uint8 images (B, C, H, W) to float32 model space: 0 ↦ −1, 255 ↦ 1."""
    return images.float() / 127.5 - 1.0


def to_unit_numpy(images: Tensor) -> np.ndarray:
    """Model-space images (B, C, H, W) to float (B, H, W, C) in [0, 1]: diffusers' "np" output."""
    return ((images.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()


def to_pil(image: Tensor) -> Image.Image:
    """One model-space image (C, H, W) as a PIL image (grayscale for C = 1)."""
    array = to_uint8(image[None])[0].permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


def tile(images: Tensor, rows: int, gap: int = 0, fill: int = 255) -> np.ndarray:
    """Tile uint8 images (rows·cols, C, H, W) into one (H', W', C) array, row-major.

    Args:
        images: uint8 images, (N, C, H, W), N divisible by `rows`.
        rows: grid rows.
        gap: pixels between tiles.
        fill: value of the gap pixels.

    Returns:
        the grid, uint8, (rows·(H + gap) − gap, cols·(W + gap) − gap, C).
    """
    if images.dtype != torch.uint8:
        raise TypeError(f"tile expects uint8 images, got {images.dtype}")
    n, channels, height, width = images.shape
    if rows < 1 or n % rows:
        raise ValueError(f"{n} images do not fill {rows} rows")
    cols = n // rows
    canvas = np.full(
        (rows * (height + gap) - gap, cols * (width + gap) - gap, channels), fill, np.uint8
    )
    array = images.permute(0, 2, 3, 1).cpu().numpy()  # (N, H, W, C)
    for index in range(n):
        row, col = divmod(index, cols)
        top, left = row * (height + gap), col * (width + gap)
        canvas[top : top + height, left : left + width] = array[index]
    return canvas


def image_grid(images: Tensor, rows: int, gap: int = 0) -> Image.Image:
    """`tile` as a PIL image (grayscale for one channel)."""
    canvas = tile(images, rows, gap)
    return Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas)


@dataclass
class LabelledImages:
    """A labelled image set in uint8 pixels.

    Attributes:
        images: uint8 pixels, (N, C, H, W).
        labels: int64 class labels in [0, num_classes), (N,).
        num_classes: the number of classes K.
        horizontal_flip: whether mirrored images are valid training data (natural images: yes;
            digits: no, a mirrored 2 is not a 2).
        class_names: optional names of the K classes.
    """

    images: Tensor
    labels: Tensor
    num_classes: int
    horizontal_flip: bool = False
    class_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise SFDConfigError(
                f"images must be uint8 (N, C, H, W), got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise SFDConfigError(
                f"labels must be int64 of shape ({self.images.shape[0]},), got "
                f"{self.labels.dtype} {tuple(self.labels.shape)}"
            )
        check_label_range(self.labels, self.num_classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, channels, height, width = self.images.shape
        return (channels, height, width)

    def to_model_space(self) -> Tensor:
        """The images as float32 in [-1, 1], (N, C, H, W)."""
        return from_uint8(self.images)

    def subset(self, index: Tensor) -> LabelledImages:
        """The images selected by a boolean mask (N,) or integer indices (M,)."""
        return LabelledImages(
            self.images[index],
            self.labels[index],
            self.num_classes,
            self.horizontal_flip,
            self.class_names,
        )


def check_label_range(labels: Tensor, num_classes: int) -> None:
    """Raise `SFDConfigError` unless every label lies in [0, num_classes)."""
    if num_classes < 1:
        raise SFDConfigError(f"num_classes={num_classes} must be at least 1")
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise SFDConfigError(
            f"labels range over [{int(labels.min())}, {int(labels.max())}], "
            f"outside the allowed classes 0..{num_classes - 1}"
        )
