"""Figures people would rather look at than read: overlay grids of CAMs (rows = images, columns = method x head)."""

import torch
from PIL import Image, ImageDraw

from .files import write_atomically
from .pipeline_dualsig import overlay

TITLE_HEIGHT = 18


def overlay_grid(
    images: list[Image.Image],
    maps: dict[tuple[str, str], torch.Tensor],
    row_titles: list[str] | None = None,
    cell: int = 160,
) -> Image.Image:
    """One row per image: the image, then its overlay for every (method, head) key of `maps` (each (N, h, w))."""
    keys = list(maps)
    columns = 1 + len(keys)
    grid = Image.new("RGB", (columns * cell, TITLE_HEIGHT + len(images) * (cell + TITLE_HEIGHT)), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(["image"] + [f"{method} / {head}" for method, head in keys]):
        draw.text((c * cell + 4, 3), title, fill="black")
    for r, image in enumerate(images):
        top = TITLE_HEIGHT + r * (cell + TITLE_HEIGHT)
        if row_titles:
            draw.text((4, top + 2), row_titles[r], fill="black")
        tiles = [image.convert("RGB")] + [overlay(image, maps[key][r]) for key in keys]
        for c, tile in enumerate(tiles):
            grid.paste(tile.resize((cell, cell)), (c * cell, top + TITLE_HEIGHT))
    return grid


def save_png(image: Image.Image, path: str) -> str:
    """Write a PNG atomically (temporary file, then rename)."""
    return write_atomically(path, lambda tmp: image.save(tmp, format="PNG"))
