"""WSOL localisation metrics with the wsolevaluation conventions (Choe et al., CVPR 2020).

MaxBoxAcc (V1: largest contour, IoU 0.5), MaxBoxAccV2 (all contours, IoU 0.3/0.5/0.7, mean), Top-1 Loc and
GT-known Loc (fixed threshold), PxAP and PIoU. State is plain counts and histograms that add up across batches
and processes (`merge`). Maps are normalised score maps in [0, 1] at the evaluation resolution.

Exact speed-up: the binary mask at threshold tau depends only on the level t = int(tau * max(uint8 map)), and the
contour boxes of every level come from one union-find sweep per kind of contour (`contours`), not from one
cv2.findContours per threshold; the counts are those of the per-threshold reference (`reference`).
"""

from dataclasses import dataclass, field

import numpy as np

from .contours import hole_sweep, outer_sweep

IOU_THRESHOLDS = (30, 50, 70)


def thresholds(interval: float = 0.001) -> np.ndarray:
    """The CAM thresholds tau: np.arange(0, 1, interval) (1000 values by default)."""
    return np.arange(0, 1, interval)


def check_score_map(score_map: np.ndarray, name: str = "score map", shape: tuple | None = None) -> np.ndarray:
    """A 2-D float map in [0, 1] without NaN/inf, or a ValueError naming `name`."""
    score_map = np.asarray(score_map)
    if score_map.ndim != 2 or (shape is not None and score_map.shape != tuple(shape)):
        raise ValueError(f"{name}: expected a 2-D map of shape {shape or '(H, W)'}, got {score_map.shape}.")
    if not np.isfinite(score_map).all():
        raise ValueError(f"{name}: contains NaN or inf; normalise maps first (NaN maps become zeros).")
    if score_map.min() < 0 or score_map.max() > 1:
        raise ValueError(f"{name}: values must lie in [0, 1], got [{score_map.min():.4g}, {score_map.max():.4g}].")
    return score_map.astype(np.float32, copy=False)


def rescale_boxes(boxes, width: int, height: int, size: tuple[int, int]) -> np.ndarray:
    """Ground-truth boxes from original pixels to the evaluation size (H, W): int(x * W / width), as the reference."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out_h, out_w = size
    scaled = np.empty_like(boxes)
    scaled[:, [0, 2]] = boxes[:, [0, 2]] * out_w / width
    scaled[:, [1, 3]] = boxes[:, [1, 3]] * out_h / height
    return scaled.astype(np.int64)


def check_boxes(boxes, width: int, height: int, name: str) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        raise ValueError(f"{name}: no ground-truth box.")
    bad = (boxes[:, 0] > boxes[:, 2]) | (boxes[:, 1] > boxes[:, 3]) | (boxes < 0).any(1)
    bad |= (boxes[:, 2] > width) | (boxes[:, 3] > height)
    if bad.any():
        raise ValueError(
            f"{name}: box {boxes[bad][0].tolist()} lies outside the {width}x{height} image or is inverted."
        )
    return boxes


def box_iou(predicted: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """IoU of every (predicted, gt) pair with inclusive pixels; 0 where the union is empty. Shape (P, G)."""
    p, g = predicted[:, None, :], gt[None, :, :]
    inter_w = np.maximum(0, np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]) + 1)
    inter_h = np.maximum(0, np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]) + 1)
    inter = inter_w * inter_h
    area_p = (p[..., 2] - p[..., 0] + 1) * (p[..., 3] - p[..., 1] + 1)
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    union = area_p + area_g - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def contour_levels(uint8_map: np.ndarray, gt_boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each level t = 0..max(uint8_map), the contours of uint8_map > t: the box of the largest (V1), and how
    many of IOU_THRESHOLDS its best IoU with a GT box reaches (V1) and the best of all contours reaches (V2). The
    top level has no contour: the box [0, 0, 0, 0]."""
    peak = int(uint8_map.max())
    gt = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 4)
    iou_thresholds = np.array(IOU_THRESHOLDS) / 100
    largest = np.zeros((peak + 1, 4), dtype=np.int64)
    hits_v1, hits_v2 = np.zeros(peak + 1, dtype=np.int64), np.zeros(peak + 1, dtype=np.int64)
    if peak:
        inner, components, joined = hole_sweep(uint8_map, peak, gt, iou_thresholds)
        outer, top_level, largest[:peak], hits_v1[:peak] = outer_sweep(joined, peak, gt, iou_thresholds)
        if (components != top_level).any():  # islands in holes: the outer contours of all components then
            outer = outer_sweep(uint8_map, peak, gt, iou_thresholds)[0]
        hits_v2[:peak] = np.maximum(inner, outer)
    hits_v1[peak] = hits_v2[peak] = (box_iou(largest[peak:], gt).max() >= iou_thresholds).sum()
    return largest, hits_v1, hits_v2


@dataclass
class BoxAccuracy:
    """MaxBoxAcc, MaxBoxAccV2, Top-1 Loc and GT-known Loc, accumulated image by image.

    `first_gt_box_only` reproduces the authors' Top-1/GT-known code (compares with the first GT box);
    the ILSVRC convention (default) takes any GT box. MaxBoxAcc always uses all GT boxes.
    """

    interval: float = 0.001
    fixed_threshold: float = 0.2
    first_gt_box_only: bool = False
    correct_v1: np.ndarray = field(default=None)
    correct_v2: np.ndarray = field(default=None)
    gt_known: int = 0
    top1: int = 0
    count: int = 0

    def __post_init__(self):
        n = len(thresholds(self.interval))
        if self.correct_v1 is None:
            self.correct_v1 = np.zeros((len(IOU_THRESHOLDS), n), dtype=np.int64)
            self.correct_v2 = np.zeros((len(IOU_THRESHOLDS), n), dtype=np.int64)

    def add(self, score_map: np.ndarray, gt_boxes: np.ndarray, correct_class: bool = True) -> None:
        """One normalised map and its GT boxes (already at the map's resolution)."""
        uint8_map = (score_map * 255).astype(np.uint8)
        largest, hits_v1, hits_v2 = contour_levels(uint8_map, gt_boxes)
        peak = len(largest) - 1
        levels = (thresholds(self.interval) * peak).astype(np.int64)
        for i in range(len(IOU_THRESHOLDS)):
            self.correct_v1[i] += hits_v1[levels] > i
            self.correct_v2[i] += hits_v2[levels] > i
        fixed = min(int(self.fixed_threshold * peak), peak)
        reference = gt_boxes[:1] if self.first_gt_box_only else gt_boxes
        located = box_iou(largest[fixed : fixed + 1], reference).max() >= 0.5
        self.gt_known += int(located)
        self.top1 += int(located and correct_class)
        self.count += 1

    def merge(self, other: "BoxAccuracy") -> "BoxAccuracy":
        """Counts of both (e.g. two processes' shards)."""
        return BoxAccuracy(
            self.interval,
            self.fixed_threshold,
            self.first_gt_box_only,
            self.correct_v1 + other.correct_v1,
            self.correct_v2 + other.correct_v2,
            self.gt_known + other.gt_known,
            self.top1 + other.top1,
            self.count + other.count,
        )

    def compute(self) -> dict:
        if self.count == 0:
            raise ValueError("no image was added.")
        best_v1 = 100 * self.correct_v1.max(axis=1) / self.count
        best_v2 = 100 * self.correct_v2.max(axis=1) / self.count
        return {
            "maxboxacc": float(best_v1[IOU_THRESHOLDS.index(50)]),
            "maxboxacc_v2": float(best_v2.mean()),
            **{f"maxboxacc_v2_iou{d}": float(v) for d, v in zip(IOU_THRESHOLDS, best_v2)},
            "top1_loc": 100 * self.top1 / self.count,
            "gt_known_loc": 100 * self.gt_known / self.count,
        }

    def curves(self) -> dict:
        """Box accuracy (%) against tau for each IoU threshold, for plots."""
        return {
            "thresholds": thresholds(self.interval),
            **{f"v2_iou{d}": 100 * self.correct_v2[i] / max(self.count, 1) for i, d in enumerate(IOU_THRESHOLDS)},
            "v1_iou50": 100 * self.correct_v1[IOU_THRESHOLDS.index(50)] / max(self.count, 1),
        }


@dataclass
class PixelPrecision:
    """PxAP (and PIoU) from dataset-level histograms of foreground and background scores.

    PIoU is not defined by the reference; here it is max over thresholds of TP / (TP + FP + FN), in %.
    """

    interval: float = 0.001
    foreground: np.ndarray = field(default=None)
    background: np.ndarray = field(default=None)

    def __post_init__(self):
        if self.foreground is None:
            self.foreground = np.zeros(len(self.edges) - 1, dtype=np.int64)
            self.background = np.zeros(len(self.edges) - 1, dtype=np.int64)

    @property
    def edges(self) -> np.ndarray:
        return np.append(thresholds(self.interval), [1.0, 2.0, 3.0])

    def add(self, score_map: np.ndarray, gt_mask: np.ndarray, ignore_mask: np.ndarray | None = None) -> None:
        """One normalised map, its boolean foreground mask and optional ignore mask (same shape)."""
        gt_mask = np.asarray(gt_mask, dtype=bool)
        keep = np.ones_like(gt_mask) if ignore_mask is None else ~(np.asarray(ignore_mask, dtype=bool) & ~gt_mask)
        self.foreground += np.histogram(score_map[gt_mask & keep], bins=self.edges)[0]
        self.background += np.histogram(score_map[~gt_mask & keep], bins=self.edges)[0]

    def merge(self, other: "PixelPrecision") -> "PixelPrecision":
        return PixelPrecision(self.interval, self.foreground + other.foreground, self.background + other.background)

    def precision_recall(self):
        tp = self.foreground[::-1].cumsum()
        fp = self.background[::-1].cumsum()
        num_foreground = self.foreground.sum()
        if num_foreground == 0:
            raise ValueError("PxAP needs at least one positive ground-truth pixel; every mask is empty.")
        with np.errstate(invalid="ignore", divide="ignore"):
            precision = tp / (tp + fp)
        return precision, tp / num_foreground, tp, fp, num_foreground - tp

    def compute(self) -> dict:
        precision, recall, tp, fp, fn = self.precision_recall()
        valid = ~np.isnan(precision[1:])
        pxap = 100 * float((precision[1:] * np.diff(recall))[valid].sum())
        piou = 100 * float((tp / (tp + fp + fn)).max())
        return {"pxap": pxap, "piou": piou}
