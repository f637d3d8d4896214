"""Figures people would rather look at than read: overlay grids of CAMs (rows = images, columns = method x head)."""

import torch
from PIL import Image, ImageDraw

from .cam import available_heads, explain
from .data.transforms import transform_from_processor
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


def one_per_class(labels: list[int], count: int) -> list[int]:
    """Indices of up to `count` rows, the first of each class before any repeat."""
    seen, first, rest = set(), [], []
    for index, label in enumerate(labels):
        (rest if label in seen else first).append(index)
        seen.add(label)
    return sorted((first + rest)[:count])


def gallery(model, processor, dataset, methods=("cam", "gradcam"), count: int = 6, recipe: str = "reference"):
    """Overlay grid of up to `count` rows of `dataset` (one per class first): every method from every head of
    `model`, explaining the ground-truth class, each row titled with its class name."""
    rows = dataset.select(one_per_class(dataset["label"], count))
    images = [image.convert("RGB") for image in rows["image"]]
    transform = transform_from_processor(processor)
    pixels = torch.stack([transform(image) for image in images]).to(model.device)
    out = explain(
        model, pixels, methods=list(methods), heads=list(available_heads(model)), targets=rows["label"], recipe=recipe
    )
    names = getattr(dataset.features["label"], "names", None)
    titles = [names[label] if names else str(label) for label in rows["label"]]
    return overlay_grid(images, {key: value.cpu() for key, value in out.items()}, titles)
