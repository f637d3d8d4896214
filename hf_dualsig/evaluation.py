"""WSOL and fidelity evaluation of both heads: accuracy, box and mask localisation, fidelity; reports and plots.

Shards images across processes (contiguous slices) and merges the counts exactly; only the main process writes.
"""

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .cam import available_heads, explain, map_recipe, reference_maps
from .data.transforms import ImageTransform, transform_from_processor
from .eval_arguments import PAPER_METHODS, EvalArguments  # noqa: F401  (PAPER_METHODS: re-exported)
from .files import safe_join, write_atomically, write_text
from .metrics.fidelity import ConfidenceChange, class_probabilities, insertion_deletion_auc, probabilities
from .metrics.wsol import BoxAccuracy, PixelPrecision, check_boxes, rescale_boxes
from .scoremaps import binary_mask
from .viz import gallery, save_png


@dataclass
class _Counts:
    """Mergeable state of one (method, head)."""

    boxes: BoxAccuracy
    pixels: PixelPrecision
    confidence: ConfidenceChange = field(default_factory=ConfidenceChange)
    insertion: float = 0.0
    deletion: float = 0.0
    has_masks: bool = False

    def merge(self, other: "_Counts") -> "_Counts":
        return _Counts(
            self.boxes.merge(other.boxes),
            self.pixels.merge(other.pixels),
            self.confidence.merge(other.confidence),
            self.insertion + other.insertion,
            self.deletion + other.deletion,
            self.has_masks or other.has_masks,
        )


def _shard(length: int) -> range:
    state = PartialState()
    bounds = np.linspace(0, length, state.num_processes + 1).astype(int)
    return range(bounds[state.process_index], bounds[state.process_index + 1])


def _merge_across_processes(local: dict, correct: dict, count: int):
    """Sum every process's counts (gloo/NCCL via accelerate's gather_object); identical on all processes."""
    if PartialState().num_processes == 1:
        return local, correct, count
    parts = gather_object([(local, correct, count)])
    merged, correct_sum, total = parts[0]
    for other, other_correct, other_count in parts[1:]:
        merged = {k: merged[k].merge(other[k]) for k in merged}
        correct_sum = {h: correct_sum[h] + other_correct[h] for h in correct_sum}
        total += other_count
    return merged, correct_sum, total


def evaluate_model(
    model, dataset, transform: ImageTransform, settings: EvalArguments, scoremap_dir: str | None = None
) -> dict:
    """Accuracy of both heads and, per (method, head), the WSOL metrics the dataset supports and fidelity.

    Maps are drawn for the ground-truth class (wsolevaluation; Top-1 Loc then needs a correct softmax
    prediction, so the same maps serve it) and finished at `eval_size` as the reference does per method (CAM signed
    and bicubic, gradient methods ReLU'd and bilinear; see `cam.map_recipe`), then min-max normalised.
    Images are read by `eval_num_workers` DataLoader workers; maps are scored by `metric_workers` threads while the
    next batch's maps are drawn. Only counts and histograms are kept, so memory does not grow with the dataset.
    With `scoremap_dir`, each map is also saved as `<scoremap_dir>/<method>/<head>/<image_id>.npy`.
    """
    heads = [h for h in settings.head_names if h in available_heads(model)]
    if settings.fidelity and settings.fidelity_head not in available_heads(model):
        raise ValueError(
            f"--fidelity_head {settings.fidelity_head}: this model has no such head; use softmax or --fidelity False."
        )
    has_boxes = "boxes" in dataset.column_names
    has_masks = "mask" in dataset.column_names
    if not (has_boxes or has_masks):
        raise ValueError("the dataset has neither a `boxes` nor a `mask` column: nothing to localise.")
    if scoremap_dir:  # every image id names a file inside scoremap_dir, checked before any work
        for image_id in dataset["image_id"] if "image_id" in dataset.column_names else []:
            safe_join(scoremap_dir, f"{image_id}.npy", "image id")
    counts = {(m, h): _empty_counts(settings) for m in settings.method_names for h in heads}
    correct = {h: 0 for h in available_heads(model)}
    indices = _shard(len(dataset))
    loader = DataLoader(
        _EvalImages(dataset, indices, transform, settings.eval_size),
        batch_size=settings.eval_batch_size,
        num_workers=settings.eval_num_workers,
        pin_memory=model.device.type == "cuda",
        collate_fn=_collate,
    )
    scoring = _MetricThreads(counts, settings.metric_workers, pending=2 * len(counts))
    model.eval()
    try:
        for batch in tqdm(loader, desc="evaluating", disable=not PartialState().is_main_process):
            pixels = batch["pixel_values"].to(model.device, non_blocking=True)
            labels = batch["labels"].to(model.device, non_blocking=True)
            out = explain(
                model,
                pixels,
                methods=settings.method_names,
                heads=heads,
                targets=labels,
                recipe="reference",
                return_raw=True,
            )
            _check_finite(model, out.logits, batch["index"])
            for h in correct:
                correct[h] += int((out.logits[h].argmax(-1) == labels).sum())
            hit = (out.logits["softmax"].argmax(-1) == labels).cpu().numpy()
            for key, raw in out.raw_maps.items():
                wsol_maps = reference_maps(key[0], raw, (settings.eval_size,) * 2).cpu().numpy()
                folder = os.path.join(scoremap_dir, *key) if scoremap_dir else None
                scoring.submit(key, _score_maps, wsol_maps, batch, hit, settings, folder)
                if settings.fidelity:
                    _add_fidelity(counts[key], model, pixels, out.maps[key], labels, out.logits, settings)
        scoring.finish()
    finally:
        scoring.close()
    counts, correct, total = _merge_across_processes(counts, correct, len(indices))
    return _results(counts, correct, total, settings, has_boxes)


class _EvalImages(Dataset):
    """The test rows of one shard as the evaluation needs them: pixel values, label, and the boxes and masks at the
    evaluation size (checked here, so that DataLoader workers do it)."""

    def __init__(self, dataset, indices: range, transform: ImageTransform, eval_size: int):
        self.dataset, self.indices, self.transform = dataset, indices, transform
        self.size = (eval_size, eval_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        index = self.indices[position]
        row = self.dataset[index]
        image = row["image"]
        item = {"pixel_values": self.transform(image), "label": row["label"], "index": index}
        item["image_id"] = row.get("image_id") or f"{index:06d}"
        if "boxes" in row:
            boxes = check_boxes(row["boxes"], *image.size, f"image {index}")
            item["boxes"] = rescale_boxes(boxes, *image.size, self.size)
        if row.get("mask") is not None:
            item["mask"] = binary_mask(row["mask"], self.size)
            item["ignore_mask"] = binary_mask(row.get("ignore_mask"), self.size)
        return item


def _collate(items: list[dict]) -> dict:
    batch = {key: [item.get(key) for item in items] for key in ("index", "image_id", "boxes", "mask", "ignore_mask")}
    batch["pixel_values"] = torch.stack([item["pixel_values"] for item in items])
    batch["labels"] = torch.tensor([item["label"] for item in items])
    return batch


def _check_finite(model, logits: dict, indices: list[int]) -> None:
    if not all(torch.isfinite(head_logits).all() for head_logits in logits.values()):
        raise ValueError(
            f"the model {getattr(model, 'name_or_path', '') or type(model).__name__} gives non-finite logits on "
            f"images {indices[0]}-{indices[-1]}: its weights are corrupt (or overflow in this dtype)."
        )


def _empty_counts(settings: EvalArguments) -> _Counts:
    return _Counts(
        BoxAccuracy(settings.cam_threshold_interval, settings.fixed_threshold, settings.first_gt_box_only),
        PixelPrecision(settings.cam_threshold_interval),
    )


def _score_maps(maps: np.ndarray, batch: dict, hit: np.ndarray, settings: EvalArguments, folder: str | None):
    """The box and pixel counts of one batch of one (method, head)'s maps; saves them under `folder` if given."""
    counts = _empty_counts(settings)
    for i, score_map in enumerate(maps):
        if folder:
            path = safe_join(folder, f"{batch['image_id'][i]}.npy", "image id")
            write_atomically(path, lambda tmp, array=score_map: _save_npy(tmp, array))
        if batch["boxes"][i] is not None:
            counts.boxes.add(score_map, batch["boxes"][i], bool(hit[i]))
        if batch["mask"][i] is not None:
            counts.has_masks = True
            counts.pixels.add(score_map, batch["mask"][i], batch["ignore_mask"][i])
    return counts


class _MetricThreads:
    """Runs `_score_maps` calls in `workers` threads (in turn when 0) and merges their counts into `counts`.

    At most `pending` calls wait at a time, so the maps held stay bounded; the numba sweeps release the GIL.
    """

    def __init__(self, counts: dict, workers: int, pending: int):
        self.counts, self.limit, self.queue = counts, pending, deque()
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="wsol-metrics") if workers else None

    def submit(self, key, fn, *args) -> None:
        if self.pool is None:
            self._merge(key, fn(*args))
            return
        self.queue.append((key, self.pool.submit(fn, *args)))
        while len(self.queue) > self.limit:
            self._merge_oldest()

    def finish(self) -> None:
        while self.queue:
            self._merge_oldest()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def _merge_oldest(self) -> None:
        key, future = self.queue.popleft()
        self._merge(key, future.result())

    def _merge(self, key, part: _Counts) -> None:
        self.counts[key] = self.counts[key].merge(part)


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as handle:  # a handle, so that numpy does not append ".npy" to the temporary name
        np.save(handle, array)


@torch.no_grad()
def _add_fidelity(counts: _Counts, model, pixels, maps, labels, logits: dict, settings: EvalArguments) -> None:
    """Average Drop / Increase in Confidence (and insertion/deletion): the image's scores come from the explanation
    forward's logits, so only the explanation images x * M take a forward pass."""
    head = settings.fidelity_head
    original = probabilities(logits[head], head).gather(1, labels[:, None])[:, 0]
    explained = class_probabilities(model, pixels * maps[:, None], head).gather(1, labels[:, None])[:, 0]
    counts.confidence.add(original, explained)
    if settings.insertion_deletion_steps:
        insertion, deletion = insertion_deletion_auc(
            model, pixels, maps, labels, head, settings.insertion_deletion_steps
        )
        counts.insertion += float(insertion.sum())
        counts.deletion += float(deletion.sum())


def _results(counts: dict, correct: dict, total: int, settings: EvalArguments, has_boxes: bool) -> dict:
    if total == 0:
        raise ValueError("no image to evaluate.")
    results = {"top1_cls": {h: 100 * c / total for h, c in correct.items()}, "num_images": total, "methods": {}}
    for (method, head), c in counts.items():
        entry = c.boxes.compute() if has_boxes else {}
        if c.has_masks:
            entry.update(c.pixels.compute())
        if settings.fidelity:
            entry.update(c.confidence.compute())
            if settings.insertion_deletion_steps:
                entry.update(insertion_auc=c.insertion / total, deletion_auc=c.deletion / total)
        results["methods"].setdefault(method, {})[head] = entry
    results["curves"] = {
        f"{m}/{h}": {k: np.asarray(v).tolist() for k, v in c.boxes.curves().items() if k != "thresholds"}
        for (m, h), c in counts.items()
        if has_boxes
    }
    results["pr_curves"] = {
        f"{m}/{h}": dict(zip(("precision", "recall"), (a.tolist() for a in c.pixels.precision_recall()[:2])))
        for (m, h), c in counts.items()
        if c.has_masks
    }
    results["settings"] = {
        **{k: list(v) if isinstance(v, tuple) else v for k, v in vars(settings).items()},
        "target_class": "ground truth",
        "map_recipes": {m: map_recipe(m) for m in settings.method_names},
        "fidelity_probabilities": f"{settings.fidelity_head} head",
        "top1_gt_known_boxes": "first GT box" if settings.first_gt_box_only else "any GT box",
        "piou_definition": "max over thresholds of TP / (TP + FP + FN), in %",
    }
    return results


def markdown_table(results: dict) -> str:
    """The paper's layout: one row per method, each cell `softmax -> sigmoid` (or one head's value)."""
    columns = [
        ("Top-1 Loc", "top1_loc"),
        ("GT-known Loc", "gt_known_loc"),
        ("MaxBoxAcc", "maxboxacc"),
        ("MaxBoxAccV2", "maxboxacc_v2"),
        ("PxAP", "pxap"),
        ("AD (lower better)", "average_drop"),
        ("IC", "increase_in_confidence"),
        ("Ins. AUC", "insertion_auc"),
        ("Del. AUC (lower better)", "deletion_auc"),
    ]
    first = next(iter(results["methods"].values()))
    columns = [(title, key) for title, key in columns if any(key in entry for entry in first.values())]
    cls = results["top1_cls"]
    lines = [
        f"Top-1 Cls: softmax {cls['softmax']:.2f}"
        + (f", sigmoid argmax {cls['sigmoid']:.2f}" if "sigmoid" in cls else ""),
        "",
        "| method | " + " | ".join(title for title, _ in columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for method, per_head in results["methods"].items():
        cells = []
        for _, key in columns:
            values = [per_head[h][key] for h in ("softmax", "sigmoid") if h in per_head and key in per_head[h]]
            digits = 3 if "auc" in key else 2
            cells.append(" -> ".join(f"{v:.{digits}f}" for v in values))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_reports(results: dict, output_dir: str) -> list[str]:
    """results.json, results.md and box-accuracy curves (PNG) in `output_dir`, each written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def atomic(name, write):
        written.append(write_atomically(os.path.join(output_dir, name), write))

    curves, pr_curves = results.get("curves", {}), results.get("pr_curves", {})
    summary = {k: v for k, v in results.items() if k not in ("curves", "pr_curves")}
    atomic("results.json", lambda p: write_text(p, json.dumps(summary, indent=2)))
    atomic("results.md", lambda p: write_text(p, markdown_table(results) + "\n"))
    if curves:
        taus = np.arange(0, 1, results["settings"]["cam_threshold_interval"])
        fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True)
        for ax, delta in zip(axes, (30, 50, 70)):
            for name, curve in curves.items():
                ax.plot(taus, curve[f"v2_iou{delta}"], label=name, linestyle="-" if name.endswith("sigmoid") else "--")
            ax.set(title=f"box accuracy at IoU {delta / 100}", xlabel="CAM threshold", ylabel="accuracy (%)")
        axes[-1].legend(fontsize=7)
        fig.tight_layout()
        atomic("box_accuracy_curves.png", lambda p: fig.savefig(p, format="png", dpi=100))
        plt.close(fig)
    if pr_curves:
        fig, ax = plt.subplots(figsize=(6, 5))
        for name, curve in pr_curves.items():
            ax.plot(
                curve["recall"], curve["precision"], label=name, linestyle="-" if name.endswith("sigmoid") else "--"
            )
        ax.set(title="pixel precision-recall (PxAP)", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1))
        ax.legend(fontsize=7)
        fig.tight_layout()
        atomic("pxap_precision_recall.png", lambda p: fig.savefig(p, format="png", dpi=100))
        plt.close(fig)
    return written


def run_evaluation(model, processor, dataset, args: EvalArguments, output_dir: str) -> dict:
    """Evaluate, then (main process) write results.json, results.md and plots to `output_dir` and print the table."""
    if args.max_eval_images is not None:
        dataset = dataset.select(range(min(args.max_eval_images, len(dataset))))
    scoremaps = os.path.join(output_dir, "scoremaps") if args.save_scoremaps else None
    results = evaluate_model(model, dataset, transform_from_processor(processor), args, scoremaps)
    if PartialState().is_main_process:
        written = write_reports(results, output_dir)
        written.append(save_png(gallery(model, processor, dataset), os.path.join(output_dir, "gallery.png")))
        print(markdown_table(results))
        if args.fidelity:
            print(f"fidelity scored with the {args.fidelity_head} head's probabilities")
        print(f"reports: {', '.join(written)}")
    return results
