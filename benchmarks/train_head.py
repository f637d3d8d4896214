"""Sigmoid-head training: feature cache vs training through the frozen backbone, in one process.

On the synthetic training split, with the default model (small ConvNeXt at 64x64) or a ResNet-50-sized config at
224x224:
1. deterministic transform: the cached run vs through the backbone (`--epochs` each), and the cached run's cost
   relative to one inference pass over the training set (images decoded and transformed in both);
2. the authors' augmentation (resize to size * 256 / 224, random crop, flip): a cache of K augmented views for
   each K in `--views` (time to build it, then time per epoch) vs one epoch through the backbone;
3. half-precision storage: the largest feature error and the largest difference in the trained head vs float32.
4. bfloat16 autocast of the frozen backbone while the cache is built (`feature_cache_autocast`, stored as float32):
   the cached features' relative difference to float32's (per feature vector, in L2 and in max-abs; per element it
   is unbounded for features near 0), and the trained sigmoid head's accuracy on the validation split (run through
   the whole model in float32) vs the head trained on the float32 cache. On CPU here: its speed-up is a GPU matter.
Usage: python benchmarks/train_head.py [--model default|resnet50] [--epochs 5] [--num_train N] [--views 1,2,4]
                                       [--sections speed,views,storage,autocast]
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
            "model": dual,
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


@torch.inference_mode()
def sigmoid_accuracy(dual, dataset, transform) -> float:
    """Top-1 accuracy of the sigmoid head, the whole dual model run in float32."""
    dual.eval()
    correct = 0
    for batch in DataLoader(dataset, batch_size=64, collate_fn=ImageClassificationCollator(transform)):
        correct += int((dual(pixel_values=batch["pixel_values"]).sigmoid_logits.argmax(-1) == batch["labels"]).sum())
    return correct / len(dataset)


def largest_difference(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--model", choices=("default", "resnet50"), default="default")
    parser.add_argument("--num_train", type=int)
    parser.add_argument("--views", default="1,2,4")
    parser.add_argument("--sections", default="speed,views,storage,autocast")
    args = parser.parse_args()
    sections = {s.strip() for s in args.sections.split(",")}
    if not sections or not sections <= {"speed", "views", "storage", "autocast"}:
        parser.error(f"--sections {args.sections!r}: expected a subset of speed, views, storage, autocast.")
    num_train = args.num_train or (2000 if args.model == "default" else 256)
    splits = load_synthetic_wsol(SyntheticWSOLConfig(num_train=num_train))
    dataset = splits["train"]
    torch.manual_seed(0)
    config = convnext_small_config(6, 64) if args.model == "default" else ResNetConfig(num_labels=6)
    classifier = AutoModelForImageClassification.from_config(config).eval()
    size = 64 if args.model == "default" else 224
    transform, augmented = ImageTransform(size, size), ImageTransform(size, size, augment="crop_flip")
    print(f"{args.model} model, {len(dataset)} images, {args.epochs:g} epochs, {torch.get_num_threads()} threads")

    if "speed" in sections:
        speed(classifier, dataset, transform, args)
    if "views" in sections:
        views(classifier, dataset, augmented, args)
    if "storage" in sections:
        storage(classifier, dataset, transform, args)
    if "autocast" in sections:
        autocast(classifier, dataset, splits["validation"], transform, args)


def speed(classifier, dataset, transform, args) -> None:
    inference_seconds(classifier, dataset.select(range(64)), transform)  # warm-up
    inference = inference_seconds(classifier, dataset, transform)
    cached = train(classifier, dataset, transform, args.epochs, use_feature_cache=True)
    direct = train(classifier, dataset, transform, args.epochs, use_feature_cache=False)
    cached_total = cached["build"] + cached["train"]
    print(f"speedup of the feature cache vs training through the backbone: {direct['train'] / cached_total:.1f}x")
    print(f"cached {args.epochs:g} epochs / one inference pass over the training set: {cached_total / inference:.2f}x")


def views(classifier, dataset, augmented, args) -> None:
    print(f"\naugmented ({augmented.augment}): K views cached vs through the backbone")
    print("| run | build (s) | per epoch (s) | total for the epochs (s) |\n|---|---|---|---|")
    through = train(classifier, dataset, augmented, 1, use_feature_cache=False)
    print(f"| through the backbone | 0 | {through['train']:.2f} | {through['train'] * args.epochs:.1f} |")
    for count in (int(v) for v in args.views.split(",")):
        run = train(classifier, dataset, augmented, args.epochs, feature_cache_views=count)
        per_epoch = run["train"] / args.epochs
        print(f"| {count} view(s) cached | {run['build']:.1f} | {per_epoch:.3f} | {run['build'] + run['train']:.1f} |")


def storage(classifier, dataset, transform, args) -> None:
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


def autocast(classifier, dataset, validation, transform, args) -> None:
    print("\nbfloat16 autocast of the backbone while caching vs float32 (float32 storage, same training)")
    exact = train(classifier, dataset, transform, args.epochs, feature_cache_autocast="float32")
    fast = train(classifier, dataset, transform, args.epochs, feature_cache_autocast="bfloat16")
    a, b = exact["features"].flatten(1), fast["features"].flatten(1)
    l2 = (b - a).norm(dim=1) / a.norm(dim=1)
    max_abs = (b - a).abs().amax(1) / a.abs().amax(1)
    accuracies = [sigmoid_accuracy(run["model"], validation, transform) for run in (exact, fast)]
    print(
        f"bfloat16 autocast: cached features differ from float32 by at most {l2.max().item():.2e} relative per "
        f"feature vector in L2 (median {l2.median().item():.2e}), {max_abs.max().item():.2e} in max-abs "
        f"(2^-8 = {2.0**-8:.2e}); not bit-identical: {not torch.equal(a, b)}; largest head difference "
        f"{largest_difference(fast['head'], exact['head']):.2e}; sigmoid-head accuracy on the {len(validation)} "
        f"validation images {accuracies[1]:.4f} vs {accuracies[0]:.4f} (float32 cache); cache build "
        f"{fast['build']:.1f} s vs {exact['build']:.1f} s on CPU (the speed-up is for GPUs with bf16 units)"
    )


if __name__ == "__main__":
    main()
