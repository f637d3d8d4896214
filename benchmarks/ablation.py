"""Ablation of the sigmoid branch on the main job's stage-1 model: head init {random, clone} x truncation {on, off}
x pos_weight {C-1, none}, 3 seeds each.

Per configuration and head: MaxBoxAccV2 and PxAP (means over the paper's 5 methods), Average Drop and Increase in
Confidence (means over the 5 methods, scored with the softmax head's probabilities), as mean and spread over seeds.
The softmax head is the same model in every configuration, so it is evaluated once. Truncation only changes the maps,
so each trained head is evaluated with and without it.
Usage: python benchmarks/ablation.py [--stage1 outputs/lite0-dualsig/softmax] [--seeds 0 1 2] [--test_images 100]
Run `make demo` first (it writes the stage-1 model).
"""

import argparse
import itertools
import os
import tempfile

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForImageClassification, set_seed

from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.data.splits import DataArguments, load_split
from hf_dualsig.data.transforms import transform_from_processor
from hf_dualsig.evaluation import PAPER_METHODS, EvalArguments, evaluate_model
from hf_dualsig.train_job import DualSigTrainingArguments
from hf_dualsig.training import DualSigmoidTrainer

COLUMNS = ("maxboxacc_v2", "pxap", "average_drop", "increase_in_confidence")


def summarize(results: dict, head: str) -> dict:
    """Means over the paper's methods of each column, for one head."""
    return {c: float(np.mean([results["methods"][m][head][c] for m in PAPER_METHODS])) for c in COLUMNS}


def train_branch(classifier, data, init: str, pos_weight: str, seed: int, cache_dir: str):
    set_seed(seed)
    dual = DualSigmoidForImageClassification.from_classifier(
        classifier, config_kwargs={"sigmoid_head_init": init, "pos_weight": pos_weight}
    )
    args = DualSigTrainingArguments(
        output_dir=cache_dir, eval_strategy="no", save_strategy="no", disable_tqdm=True, seed=seed, use_cpu=True
    )
    transform = transform_from_processor(data["processor"])
    DualSigmoidTrainer(dual, args, train_dataset=data["train"], train_transform=transform).train()
    return dual.eval()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage1", default="outputs/lite0-dualsig/softmax")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test_images", type=int, default=100)
    args = parser.parse_args()
    if not os.path.isdir(args.stage1):
        raise SystemExit(f"{args.stage1} does not exist: run `make demo` first.")
    classifier = AutoModelForImageClassification.from_pretrained(args.stage1).eval()
    processor = AutoImageProcessor.from_pretrained(args.stage1)
    splits = DataArguments()
    test = load_split(splits, "test")
    test = test.select(range(min(args.test_images, len(test))))
    data = {"train": load_split(splits, "train"), "processor": processor}
    transform = transform_from_processor(processor)
    settings = dict(insertion_deletion_steps=0, eval_batch_size=50)
    rows = {}
    dual = DualSigmoidForImageClassification.from_classifier(classifier)
    softmax = evaluate_model(dual, test, transform, EvalArguments(heads="softmax", **settings))
    rows["softmax head (reference)"] = [summarize(softmax, "softmax")]
    print("softmax head:", {k: round(v, 2) for k, v in rows["softmax head (reference)"][0].items()}, flush=True)
    with tempfile.TemporaryDirectory() as cache_dir:
        grid = itertools.product(args.seeds, ("random", "clone"), ("num_classes_minus_one", "none"))
        for seed, init, pos_weight in grid:  # seed outermost: a partial run still covers the whole grid
            dual = train_branch(classifier, data, init, pos_weight, seed, cache_dir)
            for truncate in (True, False):
                dual.config.truncate_negative_weights = truncate
                results = evaluate_model(dual, test, transform, EvalArguments(heads="sigmoid", **settings))
                name = f"init {init}, truncation {'on' if truncate else 'off'}, pos_weight {'C-1' if pos_weight != 'none' else '1'}"
                rows.setdefault(name, []).append(summarize(results, "sigmoid"))
                print(name, f"seed {seed}:", {k: round(v, 2) for k, v in rows[name][-1].items()}, flush=True)
    print(f"\n{len(test)} test images, seeds {args.seeds}; cells: mean ± std over seeds (means over {', '.join(PAPER_METHODS)})\n")
    print("| sigmoid branch | MaxBoxAccV2 | PxAP | AD (lower better) | IC |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        cells = []
        for column in COLUMNS:
            column_values = np.array([v[column] for v in values])
            cells.append(f"{column_values.mean():.2f} ± {column_values.std():.2f}")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()
