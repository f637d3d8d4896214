"""MaxBoxAccV2 over 500 maps at 224x224 (half smooth upsampled CAMs, half noisy): the fast exact path vs the
straightforward per-threshold oracle, in one process; then the fast path split over 2 processes.

Usage: python benchmarks/wsol_eval.py [--maps 500]
"""

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from hf_dualsig.metrics.wsol import BoxAccuracy, thresholds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_metrics import _oracle_counts, random_boxes, random_maps  # noqa: E402  (the oracle lives in the tests)


def fast(maps, boxes) -> BoxAccuracy:
    accuracy = BoxAccuracy()
    for score_map, b in zip(maps, boxes):
        accuracy.add(score_map, b)
    return accuracy


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--maps", type=int, default=500)
    args = parser.parse_args()
    maps = random_maps(args.maps, 224)
    rng = np.random.default_rng(0)
    boxes = [random_boxes(rng, 224) for _ in maps]

    start = time.perf_counter()
    result = fast(maps, boxes)
    t_fast = time.perf_counter() - start

    start = time.perf_counter()
    taus = thresholds()
    oracle_v2 = sum(_oracle_counts(m, b, taus)[1] for m, b in zip(maps, boxes))
    t_oracle = time.perf_counter() - start
    identical = np.array_equal(result.correct_v2, oracle_v2)

    start = time.perf_counter()  # interleaved shards, so both processes get smooth and noisy maps
    with ProcessPoolExecutor(2) as pool:
        parts = list(pool.map(fast, (maps[0::2], maps[1::2]), (boxes[0::2], boxes[1::2])))
    t_two = time.perf_counter() - start
    merged = parts[0].merge(parts[1])

    print(f"{len(maps)} maps at 224x224, MaxBoxAccV2 = {result.compute()['maxboxacc_v2']:.2f}")
    print(
        f"speedup of the fast path vs the per-threshold oracle: {t_oracle / t_fast:.1f}x "
        f"(identical counts: {identical})"
    )
    print(
        f"speedup from 2 processes: {t_fast / t_two:.2f}x (identical after merge: "
        f"{merged.compute() == result.compute()})"
    )


if __name__ == "__main__":
    main()
