"""Scoring precomputed score maps (the wsolevaluation layout) against WSOL metadata, with no model.

Light: numpy, PIL and the numba kernels of `metrics`, no torch, so that `scripts/evaluate.py --scoremap_dir` starts
fast. Under `accelerate launch` the images are sharded across the processes (contiguous slices) and the counts
merged exactly; accelerate, and with it torch, is imported only then.
"""

import os

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .data.metadata import read_wsol_metadata, union_mask_image
from .eval_arguments import EvalArguments
from .files import safe_join
from .metrics.wsol import BoxAccuracy, PixelPrecision, check_boxes, check_score_map, rescale_boxes

# What accelerate's PartialState reads to tell that several processes were launched (torchrun, MPI).
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def launched_processes() -> bool:
    """Whether this process is one of several launched together (`accelerate launch`, torchrun, mpirun)."""
    return int(os.environ.get("LOCAL_RANK", "-1")) != -1 or any(
        int(os.environ.get(name, "1")) > 1 for name in _WORLD_SIZE_VARIABLES
    )


def binary_mask(image: Image.Image | None, size) -> np.ndarray | None:
    """A mask image as a boolean array at `size` (H, W): nearest resize, then > 0.5 of full scale."""
    if image is None:
        return None
    array = np.asarray(image.convert("L").resize(size[::-1], Image.NEAREST), dtype=np.float32) / 255.0
    return array > 0.5


def evaluate_scoremaps(
    scoremap_dir: str, metadata_dir: str, settings: EvalArguments, mask_root: str | None = None
) -> dict:
    """Score precomputed maps (`<scoremap_dir>/<image_id>.npy`, wsolevaluation layout, eval_size square, values in
    [0, 1]) against metadata, with no model: MaxBoxAcc family from boxes, PxAP from masks."""
    state = None
    if launched_processes():
        from accelerate import PartialState

        state = PartialState()
    meta = read_wsol_metadata(metadata_dir)
    size = (settings.eval_size, settings.eval_size)
    boxes_acc = BoxAccuracy(settings.cam_threshold_interval, settings.fixed_threshold, settings.first_gt_box_only)
    pixels = PixelPrecision(settings.cam_threshold_interval)
    process, processes = (state.process_index, state.num_processes) if state else (0, 1)
    bounds = np.linspace(0, len(meta.image_ids), processes + 1).astype(int)
    indices = range(bounds[process], bounds[process + 1])
    for index in tqdm(indices, desc="scoring maps", disable=process != 0):
        image_id = meta.image_ids[index]
        path = safe_join(scoremap_dir, f"{image_id}.npy", "image id")
        if not os.path.isfile(path):
            raise ValueError(f"no score map for image id {image_id!r}: {path} does not exist.")
        score_map = check_score_map(np.load(path), f"score map {path}", size)
        if meta.boxes[image_id]:
            if image_id not in meta.sizes:
                raise ValueError(f"image_sizes.txt has no size for image id {image_id!r}.")
            width, height = meta.sizes[image_id]
            boxes = check_boxes(meta.boxes[image_id], width, height, f"image id {image_id!r}")
            boxes_acc.add(score_map, rescale_boxes(boxes, width, height, size))
        if image_id in meta.masks:
            root = mask_root or os.path.dirname(metadata_dir)
            mask = union_mask_image([safe_join(root, m, "mask path") for m in meta.masks[image_id]])
            ignore = meta.ignores.get(image_id)
            ignore = Image.open(safe_join(root, ignore, "ignore-mask path")) if ignore else None
            pixels.add(score_map, binary_mask(mask, size), binary_mask(ignore, size))
    counts = {"boxes": boxes_acc, "pixels": pixels, "count": len(indices)}
    if processes > 1:
        from accelerate.utils import gather_object

        parts = gather_object([counts])
        counts = parts[0]
        for other in parts[1:]:
            counts = {
                "boxes": counts["boxes"].merge(other["boxes"]),
                "pixels": counts["pixels"].merge(other["pixels"]),
                "count": counts["count"] + other["count"],
            }
    entry = counts["boxes"].compute() if counts["boxes"].count else {}
    if counts["pixels"].foreground.sum() or meta.masks:
        entry.update(counts["pixels"].compute())
    entry.pop("top1_loc", None)  # no classifier: only GT-known
    return {
        "num_images": counts["count"],
        "scoremaps": entry,
        "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
    }
