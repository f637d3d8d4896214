"""WSOL localisation metrics with the wsolevaluation conventions (Choe et al., CVPR 2020).

MaxBoxAcc (V1: largest contour, IoU 0.5), MaxBoxAccV2 (all contours, IoU 0.3/0.5/0.7, mean), Top-1 Loc and
GT-known Loc (fixed threshold), PxAP and PIoU. State is plain counts and histograms that add up across batches
and processes (`merge`). Maps are normalised score maps in [0, 1] at the evaluation resolution.

Exact speed-up: the binary mask at threshold tau depends only on t = int(tau * max(uint8 map)), so contours are
computed once per distinct level (<= 255 per image, not 1000), and IoUs are vectorised over boxes.
"""

from dataclasses import dataclass, field

import cv2
import numpy as np

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


def boxes_at_level(uint8_map: np.ndarray, level: int) -> tuple[np.ndarray, int]:
    """All contour boxes of `uint8_map > level` (outer and hole contours, RETR_TREE) and the index of the one
    with the largest polygon area (first wins ties); [[0, 0, 0, 0]] when there is no contour.

    Bounding rectangles and areas are computed for all contours at once from their points: x0 = min x,
    w = max x - min x + 1 (cv2.boundingRect), area by the shoelace formula (cv2.contourArea); both exact.
    """
    height, width = uint8_map.shape
    foreground = (uint8_map > level).astype(np.uint8)
    contours, _ = cv2.findContours(foreground, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((1, 4), dtype=np.int64), 0
    lengths = np.fromiter((len(c) for c in contours), dtype=np.int64, count=len(contours))
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    points = np.concatenate(contours).reshape(-1, 2).astype(np.int64)
    x, y = points[:, 0], points[:, 1]
    x0, y0 = np.minimum.reduceat(x, starts), np.minimum.reduceat(y, starts)
    x1 = np.minimum(np.maximum.reduceat(x, starts) + 1, width - 1)
    y1 = np.minimum(np.maximum.reduceat(y, starts) + 1, height - 1)
    following = np.arange(len(points)) + 1
    following[starts + lengths - 1] = starts  # each contour closes on its first point
    cross = x * y[following] - x[following] * y
    areas = np.abs(np.add.reduceat(cross, starts))
    return np.stack([x0, y0, x1, y1], axis=1), int(np.argmax(areas))


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


def best_ious_per_threshold(score_map: np.ndarray, gt_boxes: np.ndarray, taus: np.ndarray):
    """For each tau: (best IoU of the largest contour's box, best IoU over all contour boxes) against any GT box."""
    uint8_map = (score_map * 255).astype(np.uint8)
    peak = int(uint8_map.max())
    levels = (taus * peak).astype(np.int64)
    v1, v2 = np.empty(len(taus)), np.empty(len(taus))
    for level in np.unique(levels):
        boxes, largest = boxes_at_level(uint8_map, int(level))
        ious = box_iou(boxes, gt_boxes).max(axis=1)
        v1[levels == level], v2[levels == level] = ious[largest], ious.max()
    return v1, v2


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
        taus = thresholds(self.interval)
        v1, v2 = best_ious_per_threshold(score_map, gt_boxes, taus)
        for i, delta in enumerate(IOU_THRESHOLDS):
            self.correct_v1[i] += v1 >= delta / 100
            self.correct_v2[i] += v2 >= delta / 100
        uint8_map = (score_map * 255).astype(np.uint8)
        boxes, largest = boxes_at_level(uint8_map, int(self.fixed_threshold * int(uint8_map.max())))
        reference = gt_boxes[:1] if self.first_gt_box_only else gt_boxes
        located = box_iou(boxes[largest : largest + 1], reference).max() >= 0.5
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
