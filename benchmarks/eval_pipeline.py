"""End-to-end evaluation with the metrics scored in turn vs in threads while the next batch's maps are drawn.

A tiny dual ResNet (maps are cheap, so the WSOL metrics dominate, as they do on a GPU) over synthetic test images at
the reference's 224x224, the paper's 5 methods x 2 heads, fidelity off. Each setting runs in the same process on
the same images; the numbers are asserted identical and the wall times compared.

Usage: python benchmarks/eval_pipeline.py [--images 64] [--workers 1,2]
"""

import argparse
import time

import torch

from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.data.synthetic import SyntheticWSOLConfig, load_synthetic_wsol
from hf_dualsig.data.transforms import ImageTransform
from hf_dualsig.evaluation import EvalArguments, evaluate_model
from hf_dualsig.zoo import tiny_classifier


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="Comma-separated --metric_workers values to compare.")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = DualSigmoidForImageClassification.from_classifier(tiny_classifier("resnet", num_labels=6))
    config = SyntheticWSOLConfig(num_train=6, num_val=6, num_test=args.images, image_size=64)
    test = load_synthetic_wsol(config)["test"]
    transform = ImageTransform(64, 64)

    def run(workers: int) -> tuple[dict, float]:
        settings = EvalArguments(fidelity=False, metric_workers=workers, eval_batch_size=16)
        start = time.perf_counter()
        results = evaluate_model(model, test, transform, settings)
        return results["methods"], time.perf_counter() - start

    run(0)  # warm-up: numba's compiled kernels load, caches fill
    baseline, in_turn = run(0)
    maps = args.images * 10
    print(
        f"{args.images} images x 5 methods x 2 heads = {maps} maps at 224x224, torch threads {torch.get_num_threads()}"
    )
    print(f"metric_workers 0 (in turn): {in_turn:.2f} s ({1000 * in_turn / maps:.1f} ms per map)")
    for workers in (int(w) for w in args.workers.split(",")):
        methods, seconds = run(workers)
        assert methods == baseline, f"metric_workers {workers} changed the numbers"
        print(f"metric_workers {workers}: {seconds:.2f} s, speedup vs in turn: {in_turn / seconds:.2f}x (same numbers)")


if __name__ == "__main__":
    main()
