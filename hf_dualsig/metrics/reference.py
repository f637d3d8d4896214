"""Straightforward per-threshold versions of the WSOL metrics, computed as wsolevaluation computes them.

One cv2.findContours and one pass over the pixels per threshold: slow, but plainly the reference's rules. The fast
accumulators in `wsol` must give identical counts (tests) and are timed against these (benchmarks).
"""

import cv2
import numpy as np

from .wsol import IOU_THRESHOLDS


def contour_boxes(score_map: np.ndarray, tau: float) -> tuple[np.ndarray, int]:
    """The boxes of all contours of the map thresholded at tau (wsolevaluation's scoremap2bbox) and the index of
    the one with the largest cv2.contourArea (first on ties); [[0, 0, 0, 0]] when there is none."""
    return _contour_boxes((score_map * 255).astype(np.uint8), tau)


def _contour_boxes(uint8_map: np.ndarray, tau: float) -> tuple[np.ndarray, int]:
    height, width = uint8_map.shape
    foreground = (uint8_map > int(tau * uint8_map.max())).astype(np.uint8)
    contours, _ = cv2.findContours(foreground, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
    if not contours:
        return np.zeros((1, 4), np.int64), 0
    boxes = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        boxes.append([x, y, min(x + w, width - 1), min(y + h, height - 1)])
    largest = max(range(len(contours)), key=lambda i: cv2.contourArea(contours[i]))
    return np.array(boxes, np.int64), largest


def ious(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """IoU (inclusive pixels) of every (box, GT box) pair, as wsolevaluation's calculate_multiple_iou."""
    b, g = boxes[:, None], np.asarray(gt_boxes)[None]
    inter_w = np.clip(np.minimum(b[..., 2], g[..., 2]) - np.maximum(b[..., 0], g[..., 0]) + 1, 0, None)
    inter_h = np.clip(np.minimum(b[..., 3], g[..., 3]) - np.maximum(b[..., 1], g[..., 1]) + 1, 0, None)
    inter = inter_w * inter_h
    area_b = (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    area_g = (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1)
    union = area_b + area_g - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def box_counts(score_map: np.ndarray, gt_boxes: np.ndarray, taus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per IoU threshold (rows) and tau (columns): 1 where the largest contour's box (V1) / any contour's box (V2)
    reaches the IoU threshold with some GT box."""
    correct_v1 = np.zeros((len(IOU_THRESHOLDS), len(taus)), np.int64)
    correct_v2 = np.zeros((len(IOU_THRESHOLDS), len(taus)), np.int64)
    uint8_map = (score_map * 255).astype(np.uint8)
    for k, tau in enumerate(taus):
        boxes, largest = _contour_boxes(uint8_map, tau)
        iou = ious(boxes, gt_boxes)
        best_v1, best_v2 = iou[largest].max(), iou.max()
        for i, delta in enumerate(IOU_THRESHOLDS):
            correct_v1[i, k] = best_v1 >= delta / 100
            correct_v2[i, k] = best_v2 >= delta / 100
    return correct_v1, correct_v2


def located(score_map: np.ndarray, gt_boxes: np.ndarray, fixed_threshold: float = 0.2) -> bool:
    """GT-known localisation: the largest contour's box at the fixed threshold has IoU >= 0.5 with a GT box."""
    boxes, largest = contour_boxes(score_map, fixed_threshold)
    return ious(boxes, gt_boxes)[largest].max() >= 0.5


def pixel_counts(score_map, gt_mask, ignore_mask=None, interval: float = 0.001) -> tuple[np.ndarray, np.ndarray]:
    """True and false positive pixels at each threshold of wsolevaluation's PxAP (the histogram edges from the
    highest, 2.0, down to 0), counted one threshold at a time; ignored background pixels are left out."""
    gt_mask = np.asarray(gt_mask, dtype=bool)
    keep = np.ones_like(gt_mask) if ignore_mask is None else ~(np.asarray(ignore_mask, dtype=bool) & ~gt_mask)
    foreground, background = score_map[gt_mask & keep], score_map[~gt_mask & keep]
    edges = np.append(np.arange(0, 1, interval), [1.0, 2.0])
    tp = np.array([(foreground >= e).sum() for e in edges[::-1]], np.int64)
    fp = np.array([(background >= e).sum() for e in edges[::-1]], np.int64)
    return tp, fp
