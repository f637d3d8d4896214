"""WSOL metrics on 224x224 maps (half smooth upsampled CAMs, half noisy): the fast exact accumulators against the
per-threshold references (`hf_dualsig.metrics.reference`: a cv2.findContours, or a pass over the pixels, per
threshold) on one core, with identical counts asserted; then the fast path (MaxBoxAcc family + PxAP) over all maps
with 1 and 2 worker threads (the numba sweeps release the GIL) and with 2 processes, each worker scoring an
interleaved share into its own accumulators, merged, with counts asserted identical to one thread's; and from the
measured per-map cost, a projection for 16 workers and for ILSVRC val.

One-core figures are CPU seconds of this process with torch, OpenCV and numba held to one thread, map by map: the
reference once, the fast path the median of 5 runs right after it (the machine's load then weighs on both alike).
The box reference runs on the first maps of each kind only (a noisy map takes it seconds). Scaling figures are wall
clock, the median of --rounds rounds, each round running 1 thread, 2 threads and 2 processes in turn.

Usage: python benchmarks/wsol_eval.py [--maps 500] [--smooth-reference 40] [--noisy-reference 5] [--pxap-reference 100]
       [--rounds 3]
"""

import argparse
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

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
ILSVRC_VAL_MAPS = 50_000 * 5 * 2  # images x the paper's 5 methods x 2 heads
PROJECTED_WORKERS = 16


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


def fast_share(start: int, step: int) -> tuple[BoxAccuracy, PixelPrecision]:
    """MaxBoxAcc family and PxAP (the GT boxes as masks) of maps start, start + step, ... into new accumulators."""
    boxes, pixels = BoxAccuracy(), PixelPrecision()
    for score_map, b in zip(SHARED["maps"][start::step], SHARED["boxes"][start::step]):
        boxes.add(score_map, b)
        pixels.add(score_map, box_mask(b))
    return boxes, pixels


def in_workers(executor, workers: int) -> tuple[BoxAccuracy, PixelPrecision]:
    """Every map scored by `workers` threads or processes, interleaved shares (each gets smooth and noisy maps), then
    the accumulators merged."""
    with executor(workers) as pool:
        parts = list(pool.map(fast_share, range(workers), [workers] * workers))
    boxes, pixels = parts[0]
    for other_boxes, other_pixels in parts[1:]:
        boxes, pixels = boxes.merge(other_boxes), pixels.merge(other_pixels)
    return boxes, pixels


def same_counts(a: tuple[BoxAccuracy, PixelPrecision], b: tuple[BoxAccuracy, PixelPrecision]) -> bool:
    (boxes_a, pixels_a), (boxes_b, pixels_b) = a, b
    return (
        np.array_equal(boxes_a.correct_v1, boxes_b.correct_v1)
        and np.array_equal(boxes_a.correct_v2, boxes_b.correct_v2)
        and (boxes_a.gt_known, boxes_a.top1, boxes_a.count) == (boxes_b.gt_known, boxes_b.top1, boxes_b.count)
        and np.array_equal(pixels_a.foreground, pixels_b.foreground)
        and np.array_equal(pixels_a.background, pixels_b.background)
    )


def timed(run):
    """(result, wall seconds, cores busy: CPU seconds of this process and of its finished children per wall second)."""
    start, before = time.perf_counter(), os.times()
    result = run()
    after, wall = os.times(), time.perf_counter() - start
    return result, wall, (sum(after[:4]) - sum(before[:4])) / wall  # user, system, children's user and system


def scaling(maps, boxes, rounds: int) -> None:
    """The fast path over all maps: 1 and 2 threads, 2 processes (forked), identical counts; one thread on the smooth
    maps alone; then the projection."""
    SHARED.update(maps=maps, boxes=boxes)
    fork = multiprocessing.get_context("fork")
    runs = {
        "1 thread": lambda: in_workers(ThreadPoolExecutor, 1),
        "2 threads": lambda: in_workers(ThreadPoolExecutor, 2),
        "2 processes": lambda: in_workers(lambda n: ProcessPoolExecutor(n, mp_context=fork), 2),
    }
    walls, busy, smooth = {name: [] for name in runs}, {name: [] for name in runs}, []
    reference_counts = None
    for _ in range(rounds):
        for name, run in runs.items():
            counts, seconds, cores = timed(run)
            if reference_counts is None:  # the first run: one thread
                reference_counts = counts
            assert same_counts(counts, reference_counts), f"{name}: counts differ from one thread's"
            walls[name].append(seconds)
            busy[name].append(cores)
        smooth.append(timed(lambda: fast_share(0, 2))[1])  # interleaved: the even maps are the smooth ones
    t = {name: statistics.median(values) for name, values in walls.items()}
    print(
        f"MaxBoxAcc V1 + V2 + GT-known and PxAP over all {len(maps)} maps, wall clock, median of {rounds} "
        f"(cores busy = CPU seconds / wall second; {os.cpu_count()} CPUs here, load average "
        f"{os.getloadavg()[0]:.1f} at the end): "
        + ", ".join(f"{name} {t[name]:.2f} s ({statistics.median(busy[name]):.2f} cores busy)" for name in runs)
        + f"; speedup 2 threads {t['1 thread'] / t['2 threads']:.2f}x, 2 processes "
        f"{t['1 thread'] / t['2 processes']:.2f}x; identical counts after merge"
    )
    efficiency = t["1 thread"] / t["2 threads"] / 2  # per worker, from 1 to 2 threads
    per_map = {
        "smooth CAM-like maps": statistics.median(smooth) / len(maps[::2]),
        "this mix": t["1 thread"] / len(maps),
    }
    scale = PROJECTED_WORKERS * efficiency
    print(
        f"projected on {PROJECTED_WORKERS} cores with {PROJECTED_WORKERS} threads, assuming the speedup stays linear "
        f"up to the core count at the per-thread efficiency measured from 1 to 2 threads ({efficiency:.2f}; "
        f"{scale:.1f}x): these {len(maps)} maps {t['1 thread'] / scale:.2f} s; ILSVRC val (50,000 images x 5 "
        f"methods x 2 heads = {ILSVRC_VAL_MAPS:,} maps): "
        + ", ".join(
            f"{kind} ({1e3 * cost:.1f} ms/map on one thread) {cost * ILSVRC_VAL_MAPS / scale / 60:.1f} min"
            for kind, cost in per_map.items()
        )
    )


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
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the scaling figures (median)")
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
    scaling(maps, boxes, args.rounds)


if __name__ == "__main__":
    main()
