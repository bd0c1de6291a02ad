"""Images in one place: model space [-1, 1] <-> uint8 pixels, labelled image sets, sample grids.

Model space is float (B, C, H, W) in [-1, 1], what every network here reads and writes; uint8
(B, C, H, W) in [0, 255] is what a PNG stores and what every metric is computed on, so real and
generated images always pass through the same conversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
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


def unit_to_uint8(images: np.ndarray) -> Tensor:
    """Images in diffusers' "np" output (B, H, W, C) float in [0, 1] to uint8 (B, C, H, W)."""
    array = np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def to_pil(image: Tensor) -> Image.Image:
    """One model-space image (C, H, W) as a PIL image (grayscale for C = 1)."""
    array = to_uint8(image[None])[0].permute(1, 2, 0).cpu().numpy()  # (H, W, C)
    return Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)


# --- grids -------------------------------------------------------------------------------------

MIN_TILE = 64  # tiles are upscaled (nearest neighbour, whole factors) to at least this many pixels
GAP = 4  # white pixels between tiles and around the grid
MAX_LABEL_CHARS = 48  # longer row labels are shortened with "…"
HIGHLIGHT = (200, 30, 30)  # forget / override rows: label colour and the mark left of the row


class Grid:
    """A readable sample grid: upscaled tiles with gutters and a caption left of every row.

    Tiles are pasted batch by batch (`paste`), so a large grid never needs all float images in
    memory at once; only the uint8 canvas is kept.

    Args:
        rows: grid rows (one per condition).
        cols: images per row.
        tile_shape: (C, H, W) of one image, C in {1, 3}.
        labels: caption of each row (None: no caption column).
        highlight: rows to mark (forget / override rows): caption in red, a red bar at the left.
        min_tile: tiles are upscaled by the smallest whole factor that makes them at least this
            tall and wide (1 for images already that large).
        gap: pixels between tiles and around the grid.
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        tile_shape: tuple[int, int, int],
        labels: list[str] | None = None,
        highlight: list[bool] | None = None,
        min_tile: int = MIN_TILE,
        gap: int = GAP,
    ) -> None:
        channels, height, width = tile_shape
        if rows < 1 or cols < 1:
            raise ValueError(f"a grid needs at least one row and column, got {rows}×{cols}")
        if channels not in (1, 3):
            raise ValueError(f"grid tiles must have 1 or 3 channels, got {channels}")
        if labels is not None and len(labels) != rows:
            raise ValueError(f"{len(labels)} labels for {rows} rows")
        if highlight is not None and len(highlight) != rows:
            raise ValueError(f"{len(highlight)} highlight flags for {rows} rows")
        self.rows, self.cols, self.channels = rows, cols, channels
        self.scale = max(1, -(-min_tile // min(height, width)))  # ceil
        self.tile_height, self.tile_width = height * self.scale, width * self.scale
        self.gap = gap
        self.labels = None if labels is None else [_shorten(label) for label in labels]
        self.highlight = list(highlight) if highlight is not None else [False] * rows
        self.font = _font(self.tile_height) if self.labels else None
        self.label_width = self._label_width()
        self.grid_height = rows * (self.tile_height + gap) - gap
        self.grid_width = cols * (self.tile_width + gap) - gap
        self._pixels: np.ndarray | None = None  # allocated at the first paste

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the finished image in pixels."""
        margin = 2 * self.gap
        return self.label_width + self.grid_width + margin, self.grid_height + margin

    @property
    def pixels(self) -> int:
        """Pixels of the finished image (what its PNG holds)."""
        width, height = self.size
        return width * height

    def tile_origin(self, index: int) -> tuple[int, int]:
        """(top, left) pixel of tile `index` (row-major) in the finished image."""
        row, col = divmod(index, self.cols)
        top = self.gap + row * (self.tile_height + self.gap)
        left = self.gap + self.label_width + col * (self.tile_width + self.gap)
        return top, left

    def paste(self, start: int, images: Tensor) -> None:
        """Place uint8 images (B, C, H, W) as tiles start, start + 1, ... (row-major)."""
        if images.dtype != torch.uint8:
            raise TypeError(f"grid tiles must be uint8 images, got {images.dtype}")
        if start + len(images) > self.rows * self.cols:
            raise ValueError(f"tiles {start}..{start + len(images) - 1} exceed the grid")
        canvas = self._canvas()
        array = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, C)
        if self.scale > 1:
            array = array.repeat(self.scale, axis=1).repeat(self.scale, axis=2)
        for offset, tile in enumerate(array):
            top, left = self.tile_origin(start + offset)
            canvas[top : top + self.tile_height, left : left + self.tile_width] = tile

    def array(self) -> np.ndarray:
        """The tiles on the white canvas, uint8 (height, width, C), captions not drawn."""
        return self._canvas()

    def image(self) -> Image.Image:
        """The finished grid: tiles, gutters, captions (RGB when captioned, else as the tiles)."""
        canvas = self._canvas()
        if self.labels is None and not any(self.highlight):
            return Image.fromarray(canvas[..., 0] if self.channels == 1 else canvas)
        image = Image.fromarray(canvas[..., 0] if self.channels == 1 else canvas).convert("RGB")
        draw = ImageDraw.Draw(image)
        for row in range(self.rows):
            top, _ = self.tile_origin(row * self.cols)
            colour = HIGHLIGHT if self.highlight[row] else (0, 0, 0)
            if self.highlight[row]:
                draw.rectangle((0, top, max(self.gap - 1, 0), top + self.tile_height - 1), colour)
            if self.labels is not None:
                middle = top + self.tile_height // 2
                draw.text((self.gap + 2, middle), self.labels[row], colour, self.font, anchor="lm")
        return image

    def _canvas(self) -> np.ndarray:
        if self._pixels is None:
            width, height = self.size
            self._pixels = np.full((height, width, self.channels), 255, np.uint8)
        return self._pixels

    def _label_width(self) -> int:
        if not self.labels:
            return 0
        widest = max(self.font.getlength(label) for label in self.labels)
        return int(np.ceil(widest)) + 8  # 2 px before the text, 6 after


def image_grid(
    images: Tensor,
    rows: int,
    labels: list[str] | None = None,
    highlight: list[bool] | None = None,
    min_tile: int = MIN_TILE,
    gap: int = GAP,
) -> Image.Image:
    """uint8 images (rows·cols, C, H, W) as one readable grid image, row-major (see `Grid`)."""
    grid = _grid_for(images, rows, labels, highlight, min_tile, gap)
    grid.paste(0, images)
    return grid.image()


def tile(images: Tensor, rows: int, gap: int = 0) -> np.ndarray:
    """uint8 images (rows·cols, C, H, W) tiled as they are: no upscaling, no captions, no border.

    Args:
        images: uint8 images, (N, C, H, W), N divisible by `rows`.
        rows: grid rows.
        gap: white pixels between tiles.

    Returns:
        the grid, uint8, (rows·(H + gap) − gap, cols·(W + gap) − gap, C).
    """
    grid = _grid_for(images, rows, None, None, 1, gap)
    grid.paste(0, images)
    return grid.array()[gap : gap + grid.grid_height, gap : gap + grid.grid_width]


def _grid_for(
    images: Tensor,
    rows: int,
    labels: list[str] | None,
    highlight: list[bool] | None,
    min_tile: int,
    gap: int,
) -> Grid:
    if images.dtype != torch.uint8:
        raise TypeError(f"grid tiles must be uint8 images, got {images.dtype}")
    n, channels, height, width = images.shape
    if rows < 1 or n % rows:
        raise ValueError(f"{n} images do not fill {rows} rows")
    return Grid(rows, n // rows, (channels, height, width), labels, highlight, min_tile, gap)


def _shorten(label: str) -> str:
    label = " ".join(label.split())
    return label if len(label) <= MAX_LABEL_CHARS else label[: MAX_LABEL_CHARS - 1] + "…"


def _font(tile_height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's built-in font, sized to the tiles (no font file needed)."""
    return ImageFont.load_default(size=max(10, min(16, tile_height // 3)))


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
