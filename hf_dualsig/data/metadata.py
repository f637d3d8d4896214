"""The wsolevaluation metadata layout (`metadata/<dataset>/<split>/`: image_ids.txt, class_labels.txt,
image_sizes.txt, localization.txt) read with numpy and PIL only, so that scoring precomputed score maps
(`hf_dualsig.scoremaps`) does not import `datasets`; `loaders.load_wsol_metadata` builds a `Dataset` from it.
"""

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage


def _read_csv_lines(path: str) -> list[list[str]]:
    if not os.path.isfile(path):
        raise ValueError(f"metadata file not found: {path}")
    with open(path) as handle:
        return [line.strip().split(",") for line in handle if line.strip()]


@dataclass
class WSOLMetadata:
    """One split of the wsolevaluation layout, keyed by image id (a path relative to the image root)."""

    image_ids: list[str]
    labels: dict[str, int]
    sizes: dict[str, tuple[int, int]]
    boxes: dict[str, list]
    masks: dict[str, list[str]]
    ignores: dict[str, str]


def read_wsol_metadata(metadata_dir: str) -> WSOLMetadata:
    """Parse image_ids.txt, class_labels.txt, image_sizes.txt (optional) and localization.txt; errors name the file
    and the image id."""
    image_ids = [row[0] for row in _read_csv_lines(os.path.join(metadata_dir, "image_ids.txt"))]
    if not image_ids:
        raise ValueError(f"{metadata_dir}/image_ids.txt lists no image: the split is empty.")
    labels = {row[0]: int(row[1]) for row in _read_csv_lines(os.path.join(metadata_dir, "class_labels.txt"))}
    sizes_path = os.path.join(metadata_dir, "image_sizes.txt")
    sizes = {r[0]: (int(r[1]), int(r[2])) for r in _read_csv_lines(sizes_path)} if os.path.isfile(sizes_path) else {}
    boxes: dict[str, list] = {image_id: [] for image_id in image_ids}
    masks: dict[str, list] = {}
    ignores: dict[str, str] = {}
    for row in _read_csv_lines(os.path.join(metadata_dir, "localization.txt")):
        if row[0] not in boxes:
            raise ValueError(f"localization.txt names {row[0]!r}, which image_ids.txt does not list.")
        if len(row) == 5:
            boxes[row[0]].append([float(v) for v in row[1:]])
        elif len(row) in (2, 3):
            masks.setdefault(row[0], []).append(row[1])
            if len(row) == 3 and row[2]:
                ignores[row[0]] = row[2]
        else:
            raise ValueError(
                f"localization.txt line {','.join(row)!r}: expected path,x0,y0,x1,y1 or path,mask[,ignore]."
            )
    missing = [image_id for image_id in image_ids if image_id not in labels]
    if missing:
        raise ValueError(f"class_labels.txt has no label for image id {missing[0]!r} ({len(missing)} missing).")
    return WSOLMetadata(image_ids, labels, sizes, boxes, masks, ignores)


def union_mask_image(paths: list[str]) -> PILImage.Image:
    """The union of instance mask files (each > 0.5 after scaling to [0, 1]) as a binary "L" image."""
    union = None
    for path in paths:
        mask = np.asarray(PILImage.open(path).convert("L"), dtype=np.float32) / 255.0 > 0.5
        union = mask if union is None else union | mask
    return PILImage.fromarray((union * 255).astype(np.uint8), mode="L")
