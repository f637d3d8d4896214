"""WSOL metrics: hand-computed cases, and identical counts to the per-threshold reference (`metrics.reference`)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hf_dualsig.cam import normalize_maps
from hf_dualsig.metrics import reference
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


def _blobs(rng, h, w):
    """Copies of one random blob at random places (equal areas: V1 ties), some clipped by the border."""
    blob = rng.random((int(rng.integers(1, 5)), int(rng.integers(1, 5)))) < 0.7
    m = np.zeros((h, w))
    for _ in range(int(rng.integers(1, 6))):
        y, x = int(rng.integers(-2, h)), int(rng.integers(-2, w))
        piece = blob[max(0, -y) : h - y, max(0, -x) : w - x]
        m[max(y, 0) : max(y, 0) + piece.shape[0], max(x, 0) : max(x, 0) + piece.shape[1]] = piece
    return m


def _patch(rng, h, w):
    """1 on a random rectangle of at most 12 x 12 pixels."""
    y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
    patch = np.zeros((h, w))
    patch[y : y + int(rng.integers(1, 13)), x : x + int(rng.integers(1, 13))] = 1
    return patch


def _rings(rng, h, w):
    """Concentric rings around a random centre: holes in holes, islands in holes."""
    y, x = np.mgrid[:h, :w]
    r = np.hypot(y - rng.uniform(0, h), x - rng.uniform(0, w))
    return np.cos(r * rng.uniform(0.3, 1.5)) * 0.5 + 0.5


def _nested_squares(rng, h, w):
    m = np.zeros((h, w))
    for k, value in enumerate(rng.random(int(rng.integers(2, 6)))):
        m[k * 2 : h - k * 2, k * 2 : w - k * 2] = value
    return m


def _lines(rng, h, w):
    """One-pixel lines: rows, columns and diagonals."""
    m = np.zeros((h, w))
    for _ in range(int(rng.integers(1, 5))):
        value, k = rng.uniform(0.2, 1), int(rng.integers(0, min(h, w)))
        kind = rng.integers(0, 3)
        if kind == 0:
            m[k, rng.integers(0, w) :] = value
        elif kind == 1:
            m[rng.integers(0, h) :, k] = value
        else:
            np.fill_diagonal(m[:, k:] if rng.random() < 0.5 else np.fliplr(m)[:, k:], value)
    return m


def _smooth(rng, h, w):
    """A CAM-like map: low-resolution noise upsampled bicubically."""
    low = torch.from_numpy(rng.random((1, 1, int(rng.integers(2, 8)), int(rng.integers(2, 8)))))
    return F.interpolate(low, size=(h, w), mode="bicubic")[0, 0].numpy()


MAP_KINDS = {
    "smooth": _smooth,
    "noisy": lambda rng, h, w: _smooth(rng, h, w) * 0.5 + rng.random((h, w)) * 0.5,
    "sparse": lambda rng, h, w: (rng.random((h, w)) < rng.uniform(0.2, 0.8)) * rng.random((h, w)),
    "few levels": lambda rng, h, w: rng.integers(0, int(rng.integers(2, 5)), (h, w)).astype(float),
    "checkerboard": lambda rng, h, w: (np.indices((h, w)).sum(0) % 2) * rng.uniform(0.5, 1, (h, w)) * _patch(rng, h, w),
    "equal blobs": _blobs,
    "rings": _rings,
    "nested squares": _nested_squares,
    "lines": _lines,
    "constant": lambda rng, h, w: np.full((h, w), rng.choice([0.0, 0.3, 1.0])),
}


def varied_maps(count, seed=0):
    """(kind, normalised map, 1-4 GT boxes) of every kind in turn, 1 to 40 pixels a side (the first of each kind
    at most 3), values in [0, 1] with exact 0 and 1 where the kind has them."""
    rng = np.random.default_rng(seed)
    kinds = list(MAP_KINDS.items())
    for i in range(count):
        name, draw = kinds[i % len(kinds)]
        high = 4 if i < len(kinds) else 41
        h, w = int(rng.integers(1, high)), int(rng.integers(1, high))
        m = draw(rng, h, w)
        m = np.clip((m - m.min()) / (m.max() - m.min()) if m.max() > m.min() else m, 0, 1).astype(np.float32)
        yield name, m, random_boxes(rng, h, w)


def random_boxes(rng, h, w):
    """1-4 GT boxes inside the map, from one pixel to the whole map."""
    boxes = []
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        boxes.append([x0, y0, int(rng.integers(x0, w)), int(rng.integers(y0, h))])
    return np.array(boxes)


def test_counts_equal_the_per_threshold_reference_on_varied_maps():
    """Per map: MaxBoxAcc V1/V2 counts at every threshold and GT-known Loc, against cv2 one threshold at a time.
    The interval 1/256 still reaches every uint8 level (the reference costs a cv2.findContours per threshold)."""
    interval = 1 / 256
    taus = thresholds(interval)
    for i, (kind, score_map, boxes) in enumerate(varied_maps(520)):
        fast = BoxAccuracy(interval)
        fast.add(score_map, boxes)
        v1, v2 = reference.box_counts(score_map, boxes, taus)
        where = f"map {i} ({kind}, {score_map.shape})"
        np.testing.assert_array_equal(fast.correct_v1, v1, err_msg=where)
        np.testing.assert_array_equal(fast.correct_v2, v2, err_msg=where)
        assert fast.gt_known == reference.located(score_map, boxes), where


def test_counts_equal_the_reference_at_the_default_interval_on_cam_sized_maps():
    rng = np.random.default_rng(3)
    maps = [_smooth(rng, 224, 224) for _ in range(2)] + [MAP_KINDS["noisy"](rng, 64, 64), _rings(rng, 96, 96)]
    for i, score_map in enumerate(maps):
        score_map = ((score_map - score_map.min()) / (score_map.max() - score_map.min())).astype(np.float32)
        boxes = random_boxes(rng, *score_map.shape)
        boxes[0] = reference.contour_boxes(score_map, 0.3)[0][0]  # one GT box that some threshold finds exactly
        fast = BoxAccuracy()
        fast.add(score_map, boxes)
        v1, v2 = reference.box_counts(score_map, boxes, thresholds())
        np.testing.assert_array_equal(fast.correct_v1, v1, err_msg=f"map {i}")
        np.testing.assert_array_equal(fast.correct_v2, v2, err_msg=f"map {i}")
        assert fast.gt_known == reference.located(score_map, boxes), f"map {i}"


def test_pxap_counts_equal_the_per_threshold_reference():
    """Histograms against one comparison per threshold, with maps holding the threshold values themselves."""
    rng = np.random.default_rng(4)
    edges = np.append(thresholds(), [1.0, 2.0])
    pixels, tp, fp = PixelPrecision(), 0, 0
    for i, (_, score_map, boxes) in enumerate(varied_maps(60, seed=4)):
        score_map = score_map.copy()
        on_edges = rng.random(score_map.shape) < 0.3
        score_map[on_edges] = edges[rng.integers(0, len(edges) - 1, on_edges.sum())].astype(np.float32)
        mask = _mask(boxes, score_map.shape)
        ignore = rng.random(score_map.shape) < 0.2 if i % 2 else None
        pixels.add(score_map, mask, ignore)
        ref_tp, ref_fp = reference.pixel_counts(score_map, mask, ignore)
        tp, fp = tp + ref_tp, fp + ref_fp
    _, _, fast_tp, fast_fp, _ = pixels.precision_recall()
    np.testing.assert_array_equal(fast_tp, tp)
    np.testing.assert_array_equal(fast_fp, fp)


def _mask(boxes, shape):
    mask = np.zeros(shape, bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def test_accumulators_merge_exactly():
    whole, a, b = BoxAccuracy(), BoxAccuracy(), BoxAccuracy()
    pix_whole, pa, pb = PixelPrecision(), PixelPrecision(), PixelPrecision()
    for i, (_, m, bx) in enumerate(varied_maps(20, seed=1)):
        mask = _mask(bx, m.shape)
        for acc, pix in ((whole, pix_whole), ((a, pa) if i < 7 else (b, pb))):
            acc.add(m, bx, i % 2 == 0)
            pix.add(m, mask)
    assert a.merge(b).compute() == whole.compute()
    assert pa.merge(pb).compute() == pix_whole.compute()


def test_the_sweeps_release_the_gil_and_threads_count_the_same():
    """Threads score maps at once (the numba entry points are nogil) with the counts of scoring in turn."""
    from concurrent.futures import ThreadPoolExecutor

    from hf_dualsig.metrics.contours import hole_sweep, outer_sweep

    assert hole_sweep.targetoptions.get("nogil") and outer_sweep.targetoptions.get("nogil")
    rng = np.random.default_rng(5)
    maps = [
        ((m - m.min()) / (m.max() - m.min())).astype(np.float32) for m in (_smooth(rng, 96, 96) for _ in range(12))
    ] + [m for _, m, _ in varied_maps(40, seed=5)]
    boxes = [random_boxes(rng, *m.shape) for m in maps]

    def score(share):
        boxes_acc, pixels = BoxAccuracy(), PixelPrecision()
        for i in share:
            boxes_acc.add(maps[i], boxes[i], i % 3 > 0)
            pixels.add(maps[i], _mask(boxes[i], maps[i].shape))
        return boxes_acc, pixels

    in_turn = score(range(len(maps)))
    with ThreadPoolExecutor(2) as pool:
        (a, pa), (b, pb) = pool.map(score, (range(0, len(maps), 2), range(1, len(maps), 2)))
    merged, merged_pixels = a.merge(b), pa.merge(pb)
    for name in ("correct_v1", "correct_v2"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(in_turn[0], name))
    assert (merged.gt_known, merged.top1, merged.count) == (in_turn[0].gt_known, in_turn[0].top1, in_turn[0].count)
    np.testing.assert_array_equal(merged_pixels.foreground, in_turn[1].foreground)
    np.testing.assert_array_equal(merged_pixels.background, in_turn[1].background)
