"""WSOL metrics: hand-computed cases and a straightforward per-threshold oracle."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_dualsig.cam import normalize_maps
from hf_dualsig.metrics.wsol import BoxAccuracy, PixelPrecision, check_score_map, rescale_boxes, thresholds

SIZE = 224


def _square(*boxes, size=SIZE):
    m = np.zeros((size, size), np.float32)
    for x0, y0, x1, y1 in boxes:
        m[y0 : y1 + 1, x0 : x1 + 1] = 1
    return m


def _metrics(score_map, gt_boxes, correct_class=True, **kwargs):
    acc = BoxAccuracy(**kwargs)
    acc.add(score_map, np.asarray(gt_boxes), correct_class)
    return acc.compute()


def test_ring_hole_contour_counts_in_v2_only():
    ring = _square((50, 50, 149, 149))
    ring[80:120, 80:120] = 0
    # outer contour box (50, 50, 150, 150), hole contour box (79, 79, 121, 121); GT = the hole (80..119)
    # IoU(hole box) = 40*40 / 43*43 = 0.865; IoU(outer box) = 1600 / 101*101 = 0.157
    result = _metrics(ring, [[80, 80, 119, 119]])
    assert result["maxboxacc_v2_iou30"] == result["maxboxacc_v2_iou50"] == result["maxboxacc_v2_iou70"] == 100
    assert result["maxboxacc"] == 0 and result["gt_known_loc"] == 0


def test_two_blobs_v1_takes_the_larger_polygon():
    blobs = _square((20, 20, 39, 39), (100, 100, 199, 199))
    # GT on the small blob: its contour box (20, 20, 40, 40) has IoU 400 / 441 = 0.907; V1 picks the big blob
    on_small = _metrics(blobs, [[20, 20, 39, 39]])
    assert on_small["maxboxacc"] == 0 and on_small["maxboxacc_v2"] == 100
    on_big = _metrics(blobs, [[100, 100, 199, 199]])
    assert on_big["maxboxacc"] == 100 and on_big["gt_known_loc"] == 100


def test_constant_and_nan_maps():
    constant = torch.full((1, SIZE, SIZE), 0.7)
    nan = torch.full((1, SIZE, SIZE), float("nan"))
    assert normalize_maps(constant).abs().sum() == 0 and normalize_maps(nan).abs().sum() == 0
    # an all-zero map has no contour: the single box [0, 0, 0, 0]
    assert _metrics(np.zeros((SIZE, SIZE), np.float32), [[10, 10, 50, 50]])["maxboxacc_v2"] == 0
    assert _metrics(np.zeros((SIZE, SIZE), np.float32), [[0, 0, 0, 0]])["maxboxacc_v2"] == 100
    with pytest.raises(ValueError, match="NaN"):
        check_score_map(nan[0].numpy(), "img_1")


def test_any_of_several_gt_boxes_counts():
    blob = _square((120, 30, 179, 89))
    result = _metrics(blob, [[0, 0, 40, 40], [120, 30, 179, 89]])
    assert result["maxboxacc"] == 100 and result["gt_known_loc"] == 100
    first_only = _metrics(blob, [[0, 0, 40, 40], [120, 30, 179, 89]], first_gt_box_only=True)
    assert first_only["gt_known_loc"] == 0 and first_only["maxboxacc"] == 100  # MaxBoxAcc always uses all boxes


def test_one_pixel_line():
    line = np.zeros((SIZE, SIZE), np.float32)
    line[100, 50:150] = 1
    # contour box (50, 100, 150, 101) vs GT (50, 100, 149, 100): IoU = 100 / 202 = 0.495
    result = _metrics(line, [[50, 100, 149, 100]])
    assert result["maxboxacc_v2_iou30"] == 100 and result["maxboxacc_v2_iou50"] == 0
    assert result["maxboxacc_v2"] == pytest.approx(100 / 3)


def test_boxes_touching_the_border_are_clipped_to_the_last_pixel():
    corner = _square((200, 200, 223, 223))
    # boundingRect gives x + w = 224, clipped to 223: the box equals the GT exactly
    assert _metrics(corner, [[200, 200, 223, 223]])["maxboxacc_v2_iou70"] == 100


def test_top1_loc_needs_the_right_class_and_the_threshold_is_chosen_per_dataset():
    acc = BoxAccuracy()
    acc.add(_square((10, 10, 60, 60)), np.array([[10, 10, 60, 60]]), correct_class=False)
    acc.add(_square((10, 10, 60, 60)), np.array([[10, 10, 60, 60]]), correct_class=True)
    result = acc.compute()
    assert result["gt_known_loc"] == 100 and result["top1_loc"] == 50


def test_gt_boxes_are_rescaled_like_the_reference():
    assert rescale_boxes([[10, 20, 299, 199]], width=300, height=200, size=(224, 224)).tolist() == [
        [int(10 * 224 / 300), int(20 * 224 / 200), int(299 * 224 / 300), int(199 * 224 / 200)]
    ]


def test_pxap_of_a_constant_map_is_the_foreground_fraction_and_needs_foreground():
    mask = _square((0, 0, 55, 223)).astype(bool)  # a quarter of the image
    pxap = PixelPrecision()
    pxap.add(np.full((SIZE, SIZE), 0.5, np.float32), mask)
    assert pxap.compute()["pxap"] == pytest.approx(25.0)
    empty = PixelPrecision()
    empty.add(np.random.rand(SIZE, SIZE).astype(np.float32), np.zeros((SIZE, SIZE), bool))
    with pytest.raises(ValueError, match="positive ground-truth pixel"):
        empty.compute()


def test_pxap_ignores_the_ignore_region_outside_the_foreground():
    mask = _square((0, 0, 99, 99)).astype(bool)
    ignore = _square((0, 0, 223, 49)).astype(bool)  # overlaps the foreground: only its background part is dropped
    score = np.zeros((SIZE, SIZE), np.float32)
    score[:50, :] = 1.0  # high scores on the ignored background: would cost precision if counted
    score[:100, :100] = 1.0
    with_ignore, without = PixelPrecision(), PixelPrecision()
    with_ignore.add(score, mask, ignore)
    without.add(score, mask)
    assert with_ignore.compute()["pxap"] == pytest.approx(100.0)
    assert without.compute()["pxap"] < 100


def _oracle_counts(score_map, gt_boxes, taus):
    """The rules of the reference, one threshold at a time (IoUs vectorised over boxes, as the reference does)."""
    correct_v1 = np.zeros((3, len(taus)), np.int64)
    correct_v2 = np.zeros((3, len(taus)), np.int64)
    u = (score_map * 255).astype(np.uint8)
    h, w = u.shape
    gt = np.asarray(gt_boxes)[None]  # (1, G, 4)
    for k, tau in enumerate(taus):
        foreground = (u > int(tau * u.max())).astype(np.uint8)
        contours, _ = cv2.findContours(foreground, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)
        if contours:
            rects = np.array([cv2.boundingRect(c) for c in contours])
            boxes = np.stack(
                [
                    rects[:, 0],
                    rects[:, 1],
                    np.minimum(rects[:, 0] + rects[:, 2], w - 1),
                    np.minimum(rects[:, 1] + rects[:, 3], h - 1),
                ],
                axis=1,
            )
            largest = int(np.argmax([cv2.contourArea(c) for c in contours]))
        else:
            boxes, largest = np.zeros((1, 4), np.int64), 0
        b = boxes[:, None]  # (P, 1, 4)
        iw = np.clip(np.minimum(b[..., 2], gt[..., 2]) - np.maximum(b[..., 0], gt[..., 0]) + 1, 0, None)
        ih = np.clip(np.minimum(b[..., 3], gt[..., 3]) - np.maximum(b[..., 1], gt[..., 1]) + 1, 0, None)
        inter = iw * ih
        union = (
            (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
            + (gt[..., 2] - gt[..., 0] + 1) * (gt[..., 3] - gt[..., 1] + 1)
            - inter
        )
        iou = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        best_v1, best_v2 = iou[largest].max(), iou.max()
        for i, delta in enumerate((30, 50, 70)):
            correct_v1[i, k] += best_v1 >= delta / 100
            correct_v2[i, k] += best_v2 >= delta / 100
    return correct_v1, correct_v2


def random_maps(count, size, seed=0):
    """Half smooth upsampled low-resolution maps (CAM-like), half noisy ones, all normalised."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(count // 2, 1, 7, 7, generator=g), size=(size, size), mode="bicubic")[:, 0]
    noisy = smooth[: count - count // 2] * 0.5 + torch.rand(count - count // 2, size, size, generator=g) * 0.5
    return normalize_maps(torch.cat([smooth, noisy])).numpy()


def random_boxes(rng, size):
    boxes = []
    for _ in range(int(rng.integers(1, 3))):
        x0, y0 = rng.integers(0, size - 8, 2)
        boxes.append([x0, y0, rng.integers(x0 + 4, size), rng.integers(y0 + 4, size)])
    return np.array(boxes)


def test_fast_path_counts_equal_the_per_threshold_oracle():
    size, taus = 48, thresholds(0.001)
    rng = np.random.default_rng(0)
    maps = random_maps(200, size)
    fast = BoxAccuracy()
    oracle_v1 = np.zeros((3, len(taus)), np.int64)
    oracle_v2 = np.zeros((3, len(taus)), np.int64)
    for score_map in maps:
        boxes = random_boxes(rng, size)
        fast.add(score_map, boxes)
        v1, v2 = _oracle_counts(score_map, boxes, taus)
        oracle_v1 += v1
        oracle_v2 += v2
    np.testing.assert_array_equal(fast.correct_v1, oracle_v1)
    np.testing.assert_array_equal(fast.correct_v2, oracle_v2)


def test_accumulators_merge_exactly():
    rng = np.random.default_rng(1)
    maps = random_maps(20, 64, seed=1)
    boxes = [random_boxes(rng, 64) for _ in maps]
    whole, a, b = BoxAccuracy(), BoxAccuracy(), BoxAccuracy()
    pix_whole, pa, pb = PixelPrecision(), PixelPrecision(), PixelPrecision()
    for i, (m, bx) in enumerate(zip(maps, boxes)):
        mask = _square(*[tuple(x) for x in bx], size=64).astype(bool)
        for acc, pix in ((whole, pix_whole), ((a, pa) if i < 7 else (b, pb))):
            acc.add(m, bx, i % 2 == 0)
            pix.add(m, mask)
    assert a.merge(b).compute() == whole.compute()
    assert pa.merge(pb).compute() == pix_whole.compute()
