"""WSOL metrics on 224x224 maps (half smooth upsampled CAMs, half noisy): the fast exact accumulators against the
per-threshold references (`hf_dualsig.metrics.reference`: a cv2.findContours, or a pass over the pixels, per
threshold) on one core, with identical counts asserted; then the fast path over all maps split over 2 processes.

One-core figures are CPU seconds of this process with torch, OpenCV and numba held to one thread, map by map: the
reference once, the fast path the median of 5 runs right after it (the machine's load then weighs on both alike).
The box reference runs on the first maps of each kind only (a noisy map takes it seconds).

Usage: python benchmarks/wsol_eval.py [--maps 500] [--smooth-reference 40] [--noisy-reference 5] [--pxap-reference 100]
"""

import argparse
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor

import cv2
import numba
import numpy as np
import torch
import torch.nn.functional as F

from hf_dualsig.cam import normalize_maps
from hf_dualsig.metrics import reference
from hf_dualsig.metrics.wsol import BoxAccuracy, PixelPrecision, thresholds

SIZE = 224
SHARED = {}  # maps and boxes, inherited by forked workers instead of pickled to them


def cam_like_maps(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth maps (7x7 noise upsampled bicubically) and noisy ones (half smooth, half uniform noise), normalised."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(count, 1, 7, 7, generator=g), size=(SIZE, SIZE), mode="bicubic")[:, 0]
    noisy = smooth * 0.5 + torch.rand(count, SIZE, SIZE, generator=g) * 0.5
    return normalize_maps(smooth).numpy(), normalize_maps(noisy).numpy()


def random_boxes(rng) -> np.ndarray:
    """1-2 GT boxes of at least 5 x 5 pixels."""
    boxes = []
    for _ in range(int(rng.integers(1, 3))):
        x0, y0 = rng.integers(0, SIZE - 8, 2)
        boxes.append([x0, y0, rng.integers(x0 + 4, SIZE), rng.integers(y0 + 4, SIZE)])
    return np.array(boxes)


def box_mask(boxes) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0 : y1 + 1, x0 : x1 + 1] = True
    return mask


def fast_boxes(maps, boxes) -> BoxAccuracy:
    accuracy = BoxAccuracy()
    for score_map, b in zip(maps, boxes):
        accuracy.add(score_map, b)
    return accuracy


def fast_shard(start: int, step: int) -> BoxAccuracy:
    return fast_boxes(SHARED["maps"][start::step], SHARED["boxes"][start::step])


def fast_pixels(maps, boxes) -> PixelPrecision:
    pixels = PixelPrecision()
    for score_map, b in zip(maps, boxes):
        pixels.add(score_map, box_mask(b))
    return pixels


def cpu_seconds(fn, *args, repeats=1):
    """(result, median CPU seconds over `repeats` runs)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        result = fn(*args)
        times.append(time.process_time() - start)
    return result, statistics.median(times)


def reference_boxes(score_map, boxes):
    v1, v2 = reference.box_counts(score_map, boxes, thresholds())
    return v1, v2, reference.located(score_map, boxes)


def compare_boxes(kind, maps, boxes) -> None:
    """MaxBoxAcc V1 + V2 and GT-known Loc on one core, map by map: identical counts, then the speed-up."""
    t_reference = t_fast = 0.0
    for score_map, b in zip(maps, boxes):
        (v1, v2, located), seconds = cpu_seconds(reference_boxes, score_map, b)
        t_reference += seconds
        fast, seconds = cpu_seconds(fast_boxes, [score_map], [b], repeats=5)
        t_fast += seconds
        assert np.array_equal(fast.correct_v1, v1) and np.array_equal(fast.correct_v2, v2)
        assert fast.gt_known == located
    print(
        f"  {kind} ({len(maps)} maps): reference {1e3 * t_reference / len(maps):.1f} ms/map, fast "
        f"{1e3 * t_fast / len(maps):.2f} ms/map, identical counts; "
        f"speedup vs per-threshold OpenCV reference: {t_reference / t_fast:.1f}x"
    )


def compare_pixels(maps, boxes) -> None:
    """PxAP histograms on one core, map by map: identical counts, then the speed-up."""
    t_reference = t_fast = 0.0
    for score_map, b in zip(maps, boxes):
        (tp, fp), seconds = cpu_seconds(reference.pixel_counts, score_map, box_mask(b))
        t_reference += seconds
        pixels, seconds = cpu_seconds(fast_pixels, [score_map], [b], repeats=5)
        t_fast += seconds
        _, _, fast_tp, fast_fp, _ = pixels.precision_recall()
        assert np.array_equal(fast_tp, tp) and np.array_equal(fast_fp, fp)
    print(
        f"PxAP, one core ({len(maps)} maps): reference {1e3 * t_reference / len(maps):.1f} ms/map, fast "
        f"{1e3 * t_fast / len(maps):.2f} ms/map, identical counts; "
        f"speedup vs per-threshold reference: {t_reference / t_fast:.1f}x"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=int, default=500)
    parser.add_argument("--smooth-reference", type=int, default=40, help="smooth maps timed against the reference")
    parser.add_argument("--noisy-reference", type=int, default=5, help="noisy maps timed against the reference")
    parser.add_argument("--pxap-reference", type=int, default=100, help="maps timed against the PxAP reference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    numba.set_num_threads(1)
    smooth, noisy = cam_like_maps(args.maps // 2)
    maps = np.stack([m for pair in zip(smooth, noisy) for m in pair])  # interleaved: every shard gets both kinds
    rng = np.random.default_rng(0)
    boxes = [random_boxes(rng) for _ in maps]
    fast_boxes(maps[:2], boxes[:2])  # compile or load the kernels before timing

    result = fast_boxes(maps, boxes)
    print(f"{len(maps)} maps at {SIZE}x{SIZE}, half smooth CAMs, half noisy: {result.compute()}")
    print("MaxBoxAcc V1 + V2 and GT-known Loc, one core:")
    compare_boxes("smooth CAMs", maps[0 : 2 * args.smooth_reference : 2], boxes[0 : 2 * args.smooth_reference : 2])
    compare_boxes("noisy maps", maps[1 : 2 * args.noisy_reference : 2], boxes[1 : 2 * args.noisy_reference : 2])
    compare_pixels(maps[: args.pxap_reference], boxes[: args.pxap_reference])

    SHARED.update(maps=maps, boxes=boxes)
    start = time.perf_counter()
    result = fast_shard(0, 1)
    t_one = time.perf_counter() - start
    start = time.perf_counter()  # interleaved shards, so both processes get smooth and noisy maps
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as pool:
        parts = list(pool.map(fast_shard, (0, 1), (2, 2)))
    t_two = time.perf_counter() - start
    merged = parts[0].merge(parts[1])
    print(
        f"MaxBoxAcc over all {len(maps)} maps, wall clock: 1 process {t_one:.2f} s, 2 processes {t_two:.2f} s, "
        f"speedup {t_one / t_two:.2f}x (identical after merge: {merged.compute() == result.compute()})"
    )


if __name__ == "__main__":
    main()
