"""Sigmoid-head training: feature cache vs training through the frozen backbone, in one process.

On the synthetic training split, 5 epochs each, with the default model (small ConvNeXt at 64x64) or a
ResNet-50-sized config at 224x224. Also prints the cached run's cost relative to one inference pass over the
training set (images decoded and transformed in both).
Usage: python benchmarks/train_head.py [--model default|resnet50] [--epochs 5] [--num_train N]
"""

import argparse
import tempfile
import time

import torch
from torch.utils.data import DataLoader
from transformers import AutoModelForImageClassification, ResNetConfig

from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.data.synthetic import SyntheticWSOLConfig, load_synthetic_wsol
from hf_dualsig.data.transforms import ImageClassificationCollator, ImageTransform
from hf_dualsig.train_job import DualSigTrainingArguments
from hf_dualsig.training import DualSigmoidTrainer
from hf_dualsig.zoo import convnext_small_config


def train_seconds(classifier, dataset, transform, epochs, cache) -> float:
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
        DualSigmoidTrainer(
            dual, args, train_dataset=dataset, train_transform=transform, use_feature_cache=cache
        ).train()
        return time.perf_counter() - start


@torch.inference_mode()
def inference_seconds(classifier, dataset, transform) -> float:
    start = time.perf_counter()
    for batch in DataLoader(dataset, batch_size=64, collate_fn=ImageClassificationCollator(transform)):
        classifier(pixel_values=batch["pixel_values"])
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=float, default=5)
    parser.add_argument("--model", choices=("default", "resnet50"), default="default")
    parser.add_argument("--num_train", type=int)
    args = parser.parse_args()
    num_train = args.num_train or (2000 if args.model == "default" else 256)
    dataset = load_synthetic_wsol(SyntheticWSOLConfig(num_train=num_train))["train"]
    torch.manual_seed(0)
    config = convnext_small_config(6, 64) if args.model == "default" else ResNetConfig(num_labels=6)
    classifier = AutoModelForImageClassification.from_config(config).eval()
    transform = ImageTransform(64, 64) if args.model == "default" else ImageTransform(224, 224)
    inference_seconds(classifier, dataset.select(range(64)), transform)  # warm-up
    inference = inference_seconds(classifier, dataset, transform)
    cached = train_seconds(classifier, dataset, transform, args.epochs, cache=True)
    direct = train_seconds(classifier, dataset, transform, args.epochs, cache=False)
    print(f"{args.model} model, {len(dataset)} images, {args.epochs:g} epochs, {torch.get_num_threads()} threads")
    print(f"speedup of the feature cache vs training through the backbone: {direct / cached:.1f}x")
    print(f"cached {args.epochs:g} epochs / one inference pass over the training set: {cached / inference:.2f}x")


if __name__ == "__main__":
    main()
