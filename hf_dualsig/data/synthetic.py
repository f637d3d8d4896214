"""A procedurally drawn WSOL dataset: the offline default everywhere (training, evaluation, demos, tests).

Each image holds one or two objects of one class on a cluttered background that all classes share. Classes differ
by shape, texture and colour; each class also has a context cue (a tinted ground strip) that co-occurs with it more
often than not, so that a classifier can lean on context and a CAM can spill onto it, as in real WSOL data.
Boxes and masks are exact. The same seed gives the same bytes.
"""

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image as PILImage

# `datasets` (about 1 s to import) is imported by the functions that build the set: `SyntheticWSOLConfig` gives
# `DataArguments` its defaults, so every script's `--help` imports this module.
if TYPE_CHECKING:
    from datasets import DatasetDict, Features

# name, shape, texture, RGB colour, ground tint (context cue)
CLASSES = (
    ("red_disc", "disc", "solid", (200, 60, 50), (70, 110, 60)),
    ("blue_square", "square", "stripes", (50, 80, 200), (150, 140, 100)),
    ("green_triangle", "triangle", "dots", (60, 170, 70), (90, 90, 140)),
    ("yellow_ring", "ring", "solid", (220, 200, 50), (120, 70, 60)),
    ("purple_cross", "cross", "checker", (150, 60, 180), (60, 120, 130)),
    ("orange_diamond", "diamond", "stripes", (230, 130, 40), (110, 110, 110)),
)
CONTEXT_PROBABILITY = 0.5
SECOND_INSTANCE_PROBABILITY = 0.25


@dataclass(frozen=True)
class SyntheticWSOLConfig:
    """Sizes and seed of the synthetic set; `num_classes` takes the first classes of `CLASSES`."""

    num_train: int = 1000
    num_val: int = 200
    num_test: int = 200
    image_size: int = 64
    num_classes: int = len(CLASSES)
    seed: int = 0

    def __post_init__(self):
        if not 2 <= self.num_classes <= len(CLASSES):
            raise ValueError(f"num_classes={self.num_classes}: expected 2 to {len(CLASSES)}.")
        if self.image_size < 32:
            raise ValueError(f"image_size={self.image_size}: expected at least 32 pixels.")
        for split in ("num_train", "num_val", "num_test"):
            if getattr(self, split) < 1:
                raise ValueError(f"{split}={getattr(self, split)}: every split needs at least one image.")


def synthetic_features(num_classes: int) -> "Features":
    """The common WSOL schema: image, label, boxes (x0, y0, x1, y1, inclusive pixels), mask."""
    from datasets import ClassLabel, Features, Image, List, Value

    return Features(
        {
            "image": Image(),
            "label": ClassLabel(names=[c[0] for c in CLASSES[:num_classes]]),
            "boxes": List(List(Value("float32"), length=4)),
            "mask": Image(),
        }
    )


def load_synthetic_wsol(
    config: SyntheticWSOLConfig = SyntheticWSOLConfig(), cache_dir: str | None = None
) -> "DatasetDict":
    """The synthetic set as a `DatasetDict` (train/validation/test), cached on disk by its settings
    (in `cache_dir`, else $HF_DUALSIG_CACHE, else ~/.cache/hf_dualsig)."""
    from datasets import Dataset, DatasetDict, load_from_disk

    cache_dir = (
        cache_dir or os.environ.get("HF_DUALSIG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_dualsig")
    )
    key = hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"synthetic_wsol-{key}")
    if os.path.isdir(path):
        return load_from_disk(path)
    splits = {"train": config.num_train, "validation": config.num_val, "test": config.num_test}
    offsets = {"train": 0, "validation": 10**6, "test": 2 * 10**6}
    features = synthetic_features(config.num_classes)
    dataset = DatasetDict(
        {
            split: Dataset.from_list([draw_example(config, offsets[split] + i) for i in range(size)], features=features)
            for split, size in splits.items()
        }
    )
    os.makedirs(cache_dir, exist_ok=True)
    staging = tempfile.mkdtemp(dir=cache_dir, prefix=".staging-")
    dataset.save_to_disk(staging)
    try:
        os.replace(staging, path)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(staging, ignore_errors=True)
    return load_from_disk(path)


def draw_example(config: SyntheticWSOLConfig, index: int) -> dict:
    """One example of the set: deterministic in (config.seed, index)."""
    rng = np.random.default_rng([config.seed, index])
    size = config.image_size
    label = int(rng.integers(config.num_classes))
    image = _background(rng, size, label, config.num_classes)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    union = np.zeros((size, size), dtype=bool)
    boxes = []
    for _ in range(1 + int(rng.random() < SECOND_INSTANCE_PROBABILITY)):
        instance = _place_object(rng, yy, xx, size, label, occupied=union)
        if instance is None:
            continue
        mask, paint = instance
        image[mask] = paint[mask]
        union |= mask
        ys, xs = np.nonzero(mask)
        boxes.append([float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())])
    return {
        "image": PILImage.fromarray(np.clip(image, 0, 255).astype(np.uint8)),
        "label": label,
        "boxes": boxes,
        "mask": PILImage.fromarray((union * 255).astype(np.uint8), mode="L"),
    }


def _background(rng, size: int, label: int, num_classes: int) -> np.ndarray:
    """A smooth tinted field, a ground strip (tinted by the class more often than not) and shared clutter."""
    base = rng.uniform(90, 170, size=3)
    ramp = np.linspace(-25, 25, size)[:, None, None] * rng.choice([-1, 1])
    image = np.broadcast_to(base, (size, size, 3)) + ramp + rng.normal(0, 12, size=(size, size, 3))
    ground_class = label if rng.random() < CONTEXT_PROBABILITY else int(rng.integers(num_classes))
    ground_top = int(size * rng.uniform(0.7, 0.85))
    image[ground_top:] = np.array(CLASSES[ground_class][4]) + rng.normal(0, 10, size=(size - ground_top, size, 3))
    for _ in range(int(rng.integers(3, 7))):  # clutter: thick line segments in colours of every class
        colour = np.array(CLASSES[int(rng.integers(len(CLASSES)))][3]) * rng.uniform(0.6, 1.0)
        (x0, y0), (x1, y1) = rng.uniform(0, size, size=(2, 2))
        t = np.linspace(0, 1, 2 * size)
        for x, y in zip(x0 + (x1 - x0) * t, y0 + (y1 - y0) * t):
            image[int(y) : int(y) + 2, int(x) : int(x) + 2] = colour
    return image


def _place_object(rng, yy, xx, size: int, label: int, occupied: np.ndarray):
    """Mask and painted pixels of one object at a random scale and position that does not overlap `occupied`."""
    _, shape, texture, colour, _ = CLASSES[label]
    for _ in range(20):
        radius = size * rng.uniform(0.1, 0.24)
        cy, cx = rng.uniform(radius, size - radius, size=2)
        mask = _shape_mask(shape, (yy - cy) / radius, (xx - cx) / radius)
        if mask.sum() >= 16 and not (mask & occupied).any():
            break
    else:
        return None
    shade = _texture(texture, yy, xx, radius, rng)
    paint = np.array(colour) * rng.uniform(0.8, 1.1) * shade[..., None] + rng.normal(0, 8, size=(size, size, 3))
    return mask, paint


def _shape_mask(shape: str, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    r = np.hypot(x, y)
    if shape == "disc":
        return r <= 1
    if shape == "ring":
        return (r <= 1) & (r >= 0.55)
    if shape == "square":
        return (np.abs(x) <= 0.8) & (np.abs(y) <= 0.8)
    if shape == "diamond":
        return np.abs(x) + np.abs(y) <= 1
    if shape == "cross":
        return ((np.abs(x) <= 0.3) & (np.abs(y) <= 1)) | ((np.abs(y) <= 0.3) & (np.abs(x) <= 1))
    if shape == "triangle":
        return (y <= 0.8) & (y >= 2 * np.abs(x) - 1.0)
    raise ValueError(f"unknown shape {shape!r}")


def _texture(texture: str, yy, xx, radius: float, rng) -> np.ndarray:
    period = max(3.0, radius / 2)
    phase = rng.uniform(0, period)
    if texture == "stripes":
        return 0.65 + 0.35 * (((xx + yy + phase) // period) % 2)
    if texture == "checker":
        return 0.6 + 0.4 * ((((xx + phase) // period) + ((yy + phase) // period)) % 2)
    if texture == "dots":
        return 1.0 - 0.4 * (
            np.hypot((xx + phase) % period - period / 2, (yy + phase) % period - period / 2) < period / 4
        )
    return np.ones_like(xx)
