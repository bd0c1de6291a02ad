"""An independent reading of `sfd.images.Grid`'s geometry: where tile i sits and what it holds."""

from __future__ import annotations

import numpy as np


def assert_tiles(grid: np.ndarray, tiles: np.ndarray, rows: int, scale: int, gap: int = 4) -> None:
    """Every tile of `grid` is its image upscaled `scale`× (nearest neighbour), row-major.

    The grid is `gap` pixels of border, a caption column of unknown width at the left, then
    rows × cols tiles of (H·scale, W·scale) with `gap` pixels between them.

    Args:
        grid: the grid image, (height, width) or (height, width, channels), uint8.
        tiles: the images, uint8, (N, H, W, C).
        rows: grid rows.
        scale: the upscaling factor.
        gap: gutter and border width.
    """
    n, height, width, channels = tiles.shape
    cols = n // rows
    tile_h, tile_w = height * scale, width * scale
    assert grid.shape[0] == 2 * gap + rows * (tile_h + gap) - gap, grid.shape
    label_width = grid.shape[1] - (2 * gap + cols * (tile_w + gap) - gap)
    assert label_width >= 0, grid.shape
    if grid.ndim == 2:
        grid = grid[..., None]
    for index in range(n):
        row, col = divmod(index, cols)
        top = gap + row * (tile_h + gap)
        left = gap + label_width + col * (tile_w + gap)
        expected = tiles[index].repeat(scale, axis=0).repeat(scale, axis=1)  # (tile_h, tile_w, C)
        actual = grid[top : top + tile_h, left : left + tile_w]
        if actual.shape[-1] != channels:  # a captioned grey grid is saved as RGB
            actual = actual[..., :1]
            assert channels == 1
        assert np.array_equal(actual, expected), f"tile {index} (row {row}, col {col})"
