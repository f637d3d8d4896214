"""Inference overhead of the dual-branch wrapper: forward of the dual model vs the original classifier.

ResNet-50-sized config (transformers' default ResNetConfig), 224x224, alternating in one process.
Usage: python benchmarks/overhead.py [--batch 8] [--rounds 10]
"""

import argparse
import statistics
import time

import torch
import transformers as T

from hf_dualsig import DualSigmoidForImageClassification


def _time(model, x) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        model(x)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    classifier = T.ResNetForImageClassification(T.ResNetConfig(num_labels=1000)).eval()
    dual = DualSigmoidForImageClassification.from_classifier(classifier).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    _time(classifier, x), _time(dual, x)  # warm-up
    ratios = []
    for _ in range(args.rounds):
        base, wrapped = _time(classifier, x), _time(dual, x)
        ratios.append(wrapped / base)
    print(
        f"ResNet-50 config, batch {args.batch}, 224x224, {args.rounds} alternating rounds, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"dual / original forward time: median {statistics.median(ratios):.3f}x "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f})"
    )


if __name__ == "__main__":
    main()
