"""Image transforms read from a model's image processor (size, mean, std, resampling), in torch and PIL only.

Evaluation resizes straight to the model's size, no crop (the WSOL protocol); training may add random crops and
flips.
"""

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

_RESAMPLE = {0: Image.NEAREST, 1: Image.LANCZOS, 2: Image.BILINEAR, 3: Image.BICUBIC}
AUGMENTATIONS = (False, True, "resized_crop_flip", "crop_flip")


@dataclass(frozen=True)
class ImageTransform:
    """PIL image -> normalised float tensor (3, height, width).

    `augment`: False (resize only), True or "resized_crop_flip" (a random resized crop, scale 0.6-1, resized to the
    model's size, and a horizontal flip), or "crop_flip" (the authors' recipe: resize to round(size * 256 / 224),
    e.g. 256x256 for 224, then a random crop of the model's size and a horizontal flip). Random draws come from
    `generator` when one is given to the call, otherwise from torch's global generator (seeded by
    `transformers.set_seed`).
    """

    height: int
    width: int
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resample: int = Image.BILINEAR
    augment: bool | str = False

    def __post_init__(self):
        if not (isinstance(self.augment, bool) or self.augment in AUGMENTATIONS[2:]):
            raise ValueError(f"augment={self.augment!r}: expected one of {AUGMENTATIONS}.")

    @property
    def is_random(self) -> bool:
        """Whether two calls on the same image may differ (any augmentation)."""
        return self.augment is not False

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        image = image.convert("RGB")
        if self.augment == "crop_flip":
            image = self._resize_crop_and_flip(image, generator)
        elif self.augment is not False:
            image = self._random_resized_crop_and_flip(image, generator)
        if image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), self.resample)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(-1, 1, 1)
        std = torch.tensor(self.std).view(-1, 1, 1)
        return (array - mean) / std

    def _random_resized_crop_and_flip(self, image: Image.Image, generator) -> Image.Image:
        width, height = image.size
        scale = 0.6 + 0.4 * torch.rand((), generator=generator).item()
        crop_w, crop_h = max(1, round(width * scale**0.5)), max(1, round(height * scale**0.5))
        left = int(torch.randint(0, width - crop_w + 1, (), generator=generator).item())
        top = int(torch.randint(0, height - crop_h + 1, (), generator=generator).item())
        return _maybe_flip(image.crop((left, top, left + crop_w, top + crop_h)), generator)

    def _resize_crop_and_flip(self, image: Image.Image, generator) -> Image.Image:
        big_w, big_h = round(self.width * 256 / 224), round(self.height * 256 / 224)
        image = image.resize((big_w, big_h), self.resample)
        left = int(torch.randint(0, big_w - self.width + 1, (), generator=generator).item())
        top = int(torch.randint(0, big_h - self.height + 1, (), generator=generator).item())
        return _maybe_flip(image.crop((left, top, left + self.width, top + self.height)), generator)


def _maybe_flip(image: Image.Image, generator) -> Image.Image:
    """Mirror left-right with probability 1/2."""
    return image.transpose(Image.FLIP_LEFT_RIGHT) if torch.rand((), generator=generator).item() < 0.5 else image


def transform_from_processor(processor, augment: bool | str = False) -> ImageTransform:
    """The transform matching an image processor's size, normalisation and resampling (no crop)."""
    size = processor.size

    def get(key):
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    if get("height") and get("width"):
        height, width = get("height"), get("width")
    elif get("shortest_edge"):
        height = width = get("shortest_edge")
    else:
        raise ValueError(f"image processor size {size} has neither height/width nor shortest_edge.")
    resample = getattr(processor, "resample", Image.BILINEAR)
    return ImageTransform(
        height=int(height),
        width=int(width),
        mean=tuple(float(v) for v in (processor.image_mean or (0.0, 0.0, 0.0))),
        std=tuple(float(v) for v in (processor.image_std or (1.0, 1.0, 1.0))),
        resample=_RESAMPLE.get(int(resample), Image.BILINEAR) if resample is not None else Image.BILINEAR,
        augment=augment,
    )


@dataclass
class ImageClassificationCollator:
    """Raw dataset rows (image, label) -> {"pixel_values", "labels"} batches for `Trainer`."""

    transform: ImageTransform

    def __call__(self, examples: list[dict]) -> dict:
        return {
            "pixel_values": torch.stack([self.transform(example["image"]) for example in examples]),
            "labels": torch.tensor([int(example["label"]) for example in examples]),
        }
