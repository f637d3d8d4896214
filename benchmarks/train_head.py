"""Sigmoid-head training: feature cache vs training through the frozen backbone, in one process.

On the synthetic training split, with the default model (small ConvNeXt at 64x64) or a ResNet-50-sized config at
224x224:
1. deterministic transform: the cached run vs through the backbone (`--epochs` each), and the cached run's cost
   relative to one inference pass over the training set (images decoded and transformed in both);
2. the authors' augmentation (resize to size * 256 / 224, random crop, flip): a cache of K augmented views for
   each K in `--views` (time to build it, then time per epoch) vs one epoch through the backbone;
3. half-precision storage: the largest feature error and the largest difference in the trained head vs float32.
Usage: python benchmarks/train_head.py [--model default|resnet50] [--epochs 5] [--num_train N] [--views 1,2,4]
"""

import argparse
import tempfile
import time

import numpy as np
import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForImageClassification, PrinterCallback, ResNetConfig

from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.data.synthetic import SyntheticWSOLConfig, load_synthetic_wsol
from hf_dualsig.data.transforms import ImageClassificationCollator, ImageTransform
from hf_dualsig.train_job import DualSigTrainingArguments
from hf_dualsig.training import DualSigmoidTrainer
from hf_dualsig.zoo import convnext_small_config


def train(classifier, dataset, transform, epochs, **options) -> dict:
    """Build the trainer (and its cache, if any), then train: seconds for each, and the trained head."""
    torch.manual_seed(0)
    dual = DualSigmoidForImageClassification.from_classifier(classifier)
    with tempfile.TemporaryDirectory() as out:
        args = DualSigTrainingArguments(
            output_dir=out,
            num_train_epochs=epochs,
            eval_strategy="no",
            save_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            logging_strategy="no",
        )
        start = time.perf_counter()
        trainer = DualSigmoidTrainer(dual, args, train_dataset=dataset, train_transform=transform, **options)
        trainer.remove_callback(PrinterCallback)
        built = time.perf_counter()
        trainer.train()
        return {
            "build": built - start,
            "train": time.perf_counter() - built,
            "head": dual.sigmoid_head.state_dict(),
            "features": all_rows(trainer.train_dataset) if trainer.uses_feature_cache else None,
        }


def all_rows(cache) -> torch.Tensor:
    """Every cached training row (view 0) as float32."""
    index = np.arange(len(cache))
    return cache.rows(index, np.zeros_like(index))["head_inputs"][0]


@torch.inference_mode()
def inference_seconds(classifier, dataset, transform) -> float:
    start = time.perf_counter()
    for batch in DataLoader(dataset, batch_size=64, collate_fn=ImageClassificationCollator(transform)):
        classifier(pixel_values=batch["pixel_values"])
    return time.perf_counter() - start


def largest_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--model", choices=("default", "resnet50"), default="default")
    parser.add_argument("--num_train", type=int)
    parser.add_argument("--views", default="1,2,4")
    args = parser.parse_args()
    num_train = args.num_train or (2000 if args.model == "default" else 256)
    dataset = load_synthetic_wsol(SyntheticWSOLConfig(num_train=num_train))["train"]
    torch.manual_seed(0)
    config = convnext_small_config(6, 64) if args.model == "default" else ResNetConfig(num_labels=6)
    classifier = AutoModelForImageClassification.from_config(config).eval()
    size = 64 if args.model == "default" else 224
    transform, augmented = ImageTransform(size, size), ImageTransform(size, size, augment="crop_flip")
    print(f"{args.model} model, {len(dataset)} images, {args.epochs:g} epochs, {torch.get_num_threads()} threads")

    inference_seconds(classifier, dataset.select(range(64)), transform)  # warm-up
    inference = inference_seconds(classifier, dataset, transform)
    cached = train(classifier, dataset, transform, args.epochs, use_feature_cache=True)
    direct = train(classifier, dataset, transform, args.epochs, use_feature_cache=False)
    cached_total = cached["build"] + cached["train"]
    print(f"speedup of the feature cache vs training through the backbone: {direct['train'] / cached_total:.1f}x")
    print(f"cached {args.epochs:g} epochs / one inference pass over the training set: {cached_total / inference:.2f}x")

    print(f"\naugmented ({augmented.augment}): K views cached vs through the backbone")
    print("| run | build (s) | per epoch (s) | total for the epochs (s) |\n|---|---|---|---|")
    through = train(classifier, dataset, augmented, 1, use_feature_cache=False)
    print(f"| through the backbone | 0 | {through['train']:.2f} | {through['train'] * args.epochs:.1f} |")
    for views in (int(v) for v in args.views.split(",")):
        run = train(classifier, dataset, augmented, args.epochs, feature_cache_views=views)
        per_epoch = run["train"] / args.epochs
        print(f"| {views} view(s) cached | {run['build']:.1f} | {per_epoch:.3f} | {run['build'] + run['train']:.1f} |")

    print("\nhalf-precision storage vs float32 (deterministic transform, same training)")
    exact = train(classifier, dataset, transform, args.epochs, feature_cache_dtype="float32")
    for dtype in ("float16", "bfloat16"):
        half = train(classifier, dataset, transform, args.epochs, feature_cache_dtype=dtype)
        error, normal = (half["features"] - exact["features"]).abs(), exact["features"].abs() >= 2.0**-14
        print(
            f"{dtype}: feature error at most {(error[normal] / exact['features'].abs()[normal]).max().item():.2e} "
            f"relative (|x| >= 2^-14), {error[~normal].max().item() if (~normal).any() else 0:.2e} absolute below; "
            f"largest head difference {largest_difference(half['head'], exact['head']):.2e} (largest head weight "
            f"{max(v.abs().max().item() for v in exact['head'].values()):.2e})"
        )


if __name__ == "__main__":
    main()
