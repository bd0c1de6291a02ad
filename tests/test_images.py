"""The sample grid: size, upscaled tiles at their places, captions, marked rows, the plain tiler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from grids import assert_tiles
from PIL import Image

from sfd.images import GAP, MIN_TILE, Grid, image_grid, tile, unit_to_uint8


def random_tiles(n: int, channels: int, size: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), generator=generator, dtype=torch.uint8)


@pytest.mark.parametrize(("size", "scale"), [(8, 8), (16, 4), (28, 3), (64, 1), (100, 1)])
def test_tiles_are_upscaled_to_a_visible_size(size: int, scale: int) -> None:
    tiles = random_tiles(6, 3, size)
    grid = image_grid(tiles, rows=2)
    # Hand computation: the smallest whole factor that makes a tile at least 64 px.
    assert scale == max(1, -(-MIN_TILE // size))
    width_without_labels = 2 * GAP + 3 * (size * scale + GAP) - GAP
    assert grid.size == (width_without_labels, 2 * GAP + 2 * (size * scale + GAP) - GAP)
    assert_tiles(np.asarray(grid), tiles.permute(0, 2, 3, 1).numpy(), rows=2, scale=scale)


def test_captions_sit_left_of_their_rows_and_forget_rows_are_marked() -> None:
    tiles = random_tiles(6, 1, 8)
    labels = ["3", "7 (forget)", "a photo of a cat"]
    captioned = Grid(3, 2, (1, 8, 8), labels=labels, highlight=[False, True, False])
    captioned.paste(0, tiles)
    image = np.asarray(captioned.image())  # RGB: red marks on a grey grid
    assert image.shape[:2] == (captioned.size[1], captioned.size[0])
    label_width = captioned.label_width
    assert label_width > 0
    assert_tiles(image, tiles.permute(0, 2, 3, 1).numpy().repeat(3, axis=-1), rows=3, scale=8)
    column = image[:, GAP : GAP + label_width - 6]  # (H, label, 3)
    for row in range(3):
        band = column[GAP + row * 68 : GAP + row * 68 + 64]
        ink = (band < 128).any(axis=-1)  # dark or red text pixels
        assert ink.any(), f"row {row} has no caption"
        red = (band[..., 0] > 150) & (band[..., 1] < 90) & (band[..., 2] < 90)
        assert red.any() == (row == 1), f"row {row}: marked={red.any()}"
    # Longer captions make a wider column; a caption never leaks into another row's band.
    short = Grid(3, 2, (1, 8, 8), labels=["3", "7", "9"])
    assert short.label_width < label_width
    assert (column[GAP + 64 : GAP + 68] == 255).all()  # the gutter between rows 0 and 1


def test_a_long_prompt_is_shortened() -> None:
    grid = Grid(1, 1, (3, 8, 8), labels=["word " * 40])
    assert len(grid.labels[0]) == 48 and grid.labels[0].endswith("…")


def test_pasting_in_batches_equals_one_paste() -> None:
    tiles = random_tiles(12, 3, 8)
    whole, parts = Grid(3, 4, (3, 8, 8)), Grid(3, 4, (3, 8, 8))
    whole.paste(0, tiles)
    for start in range(0, 12, 5):
        parts.paste(start, tiles[start : start + 5])
    assert np.array_equal(whole.array(), parts.array())
    with pytest.raises(ValueError, match="exceed the grid"):
        parts.paste(10, tiles[:5])


def test_the_plain_tiler_has_no_scaling_captions_or_border() -> None:
    tiles = random_tiles(6, 1, 5)
    canvas = tile(tiles, rows=2, gap=1)
    assert canvas.shape == (2 * 6 - 1, 3 * 6 - 1, 1)
    assert np.array_equal(canvas[6:11, 12:17, 0], tiles[5, 0].numpy())
    assert (canvas[5] == 255).all() and (canvas[:, 5] == 255).all()


def test_unit_images_to_uint8_like_a_png_stores_them() -> None:
    unit = np.array([0.0, 0.5, 1.0, 1.2, -0.1], dtype=np.float32).reshape(1, 1, 5, 1)
    assert unit_to_uint8(unit).flatten().tolist() == [0, 128, 255, 255, 0]


def test_grayscale_without_captions_stays_grayscale() -> None:
    image = image_grid(random_tiles(2, 1, 8), rows=1)
    assert image.mode == "L" and isinstance(image, Image.Image)
