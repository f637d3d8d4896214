"""Datasets in the common WSOL schema: image, label, boxes (x0, y0, x1, y1 in original pixels), optional masks.

Sources: the synthetic set, the wsolevaluation metadata layout (CUB, ILSVRC, OpenImages, Stanford Cars) and any
`datasets.load_dataset` dataset (Hub id, parquet, imagefolder) with an image and a label column.
"""

import io
import logging

import numpy as np
from datasets import Dataset, Features, Image, List, Value, load_dataset
from PIL import Image as PILImage

from ..files import safe_join
from .metadata import read_wsol_metadata, union_mask_image

logger = logging.getLogger(__name__)


def load_wsol_metadata(metadata_dir: str, image_root: str, mask_root: str | None = None) -> Dataset:
    """One split in the wsolevaluation layout (`metadata/<dataset>/<split>/`) as a `Dataset`.

    Boxes come from `localization.txt` (path,x0,y0,x1,y1) and masks from its OpenImages form
    (path,mask_path[,ignore_path]): the mask is the union of an image's instance masks (> 0.5 after scaling to
    [0, 1]); the ignore mask, when given, is kept as `ignore_mask`. Paths are relative to `image_root`
    (`mask_root` for masks, default `image_root`).
    """
    mask_root = mask_root or image_root
    meta = read_wsol_metadata(metadata_dir)
    ids = meta.image_ids
    rows = {
        "image_id": ids,
        "image": [safe_join(image_root, image_id, "image id") for image_id in ids],
        "label": [meta.labels[image_id] for image_id in ids],
        "boxes": [meta.boxes[image_id] for image_id in ids],
    }
    features = {
        "image_id": Value("string"),
        "image": Image(),
        "label": Value("int64"),
        "boxes": List(List(Value("float32"), length=4)),
    }
    if meta.masks:
        rows["mask"] = [union_mask([safe_join(mask_root, m, "mask path") for m in meta.masks.get(i, [])]) for i in ids]
        rows["ignore_mask"] = [
            safe_join(mask_root, meta.ignores[i], "ignore-mask path") if i in meta.ignores else None for i in ids
        ]
        features.update(mask=Image(), ignore_mask=Image())
    return Dataset.from_dict(rows, features=Features(features))


def union_mask(paths: list[str]) -> dict | None:
    """`union_mask_image` encoded as PNG bytes (an `Image` feature value), or None without masks."""
    if not paths:
        return None
    buffer = io.BytesIO()
    union_mask_image(paths).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def load_image_dataset(
    path: str,
    split: str,
    image_column: str = "image",
    label_column: str = "label",
    bbox_column: str | None = None,
    **load_kwargs,
) -> Dataset:
    """A split of any `datasets.load_dataset` source (Hub id, "parquet", "imagefolder", a local folder) renamed to
    the common schema. `bbox_column` may hold one box (x0, y0, x1, y1) or a list of boxes per image."""
    dataset = load_dataset(path, split=split, **load_kwargs)
    columns = {"image": image_column, "label": label_column, "boxes": bbox_column}
    for role, column in columns.items():
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"{role} column {column!r} is not in the dataset; its columns are {dataset.column_names}. "
                f"Pass --{role if role != 'boxes' else 'bbox'}_column with one of them."
            )
    dataset = dataset.select_columns([c for c in columns.values() if c is not None])
    dataset = dataset.rename_columns({column: role for role, column in columns.items() if column and column != role})
    if bbox_column is not None:
        dataset = dataset.map(_boxes_as_list, features=_with_box_list(dataset.features))
    return dataset


def _boxes_as_list(row: dict) -> dict:
    boxes = row["boxes"]
    if boxes and not isinstance(boxes[0], (list, tuple)):
        boxes = [boxes]
    return {"boxes": [[float(v) for v in box] for box in boxes or []]}


def _with_box_list(features: Features) -> Features:
    features = features.copy()
    features["boxes"] = List(List(Value("float32"), length=4))
    return features


def check_split(dataset: Dataset, name: str, num_labels: int, drop_undecodable: bool = True) -> Dataset:
    """Fail before work on an empty split or labels outside [0, num_labels); drop undecodable or missing images,
    logging how many and which, or (`drop_undecodable=False`, for test splits whose size the metrics depend on)
    fail naming them."""
    if len(dataset) == 0:
        raise ValueError(f"the {name} split is empty.")
    labels = np.asarray(dataset["label"])
    bad = labels[(labels < 0) | (labels >= num_labels)]
    if bad.size:
        raise ValueError(
            f"the {name} split has labels outside the model's label set [0, {num_labels}): "
            f"{sorted(set(bad.tolist()))[:10]}."
        )
    raw = dataset.cast_column("image", Image(decode=False))["image"]
    broken = [i for i, image in enumerate(raw) if not _decodes(image)]
    if broken:
        names = [raw[i].get("path") or f"row {i}" for i in broken]
        if not drop_undecodable:
            raise ValueError(
                f"{len(broken)} image(s) of the {name} split are missing or do not decode: {', '.join(names[:10])}; "
                "restore them, or remove them from the split's metadata."
            )
        logger.warning("Skipping %d undecodable image(s) in the %s split: %s", len(broken), name, ", ".join(names[:20]))
        keep = sorted(set(range(len(dataset))) - set(broken))
        if not keep:
            raise ValueError(f"no image of the {name} split decodes (first: {names[0]}).")
        dataset = dataset.select(keep)
    return dataset


def _decodes(image: dict) -> bool:
    try:
        source = io.BytesIO(image["bytes"]) if image.get("bytes") else image["path"]
        with PILImage.open(source) as handle:
            handle.load()
        return True
    except Exception:  # PIL raises many types for broken files
        return False


def check_label_names(dataset: Dataset, id2label: dict[int, str]) -> None:
    """Fail when the dataset's class names (a ClassLabel column) disagree with the classifier's labels."""
    feature = dataset.features.get("label")
    names = getattr(feature, "names", None)
    if names is None:
        return
    model_names = [id2label[i] for i in range(len(id2label))]
    if names != model_names:
        raise ValueError(
            f"the dataset's label names {names[:5]}... disagree with the classifier's {model_names[:5]}...; "
            "use --stage both to fine-tune a classifier on this label set first."
        )
