"""Helper for the training tests: trains a sigmoid head on the small synthetic set (in one process or under
`accelerate launch`); can SIGKILL itself after a save, cache K augmented views, and dump the features each process
reads from the cache."""

import argparse
import os
import signal

import numpy as np
import torch
from accelerate import PartialState
from transformers import AutoImageProcessor, AutoModelForImageClassification, TrainerCallback

from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.data.synthetic import load_synthetic_wsol
from hf_dualsig.data.transforms import transform_from_processor
from hf_dualsig.train_job import DualSigTrainingArguments
from hf_dualsig.training import DualSigmoidTrainer
from conftest import SMALL_SYNTHETIC


class KillAfterSave(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("classifier_dir")
    parser.add_argument("output_dir")
    parser.add_argument("--kill_after_step", type=int)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--no_cache", action="store_true")
    parser.add_argument("--views", type=int, help="feature_cache_views (with --augment)")
    parser.add_argument("--augment", default=False, help="crop_flip or resized_crop_flip")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--dump_features", action="store_true", help="save every view of the cached training rows")
    return parser.parse_args(argv)


def build_trainer(args: argparse.Namespace, splits=None) -> DualSigmoidTrainer:
    if splits is None:
        with PartialState().main_process_first():  # one process writes the synthetic set, the other reads it
            splits = load_synthetic_wsol(SMALL_SYNTHETIC)
    torch.manual_seed(0)  # the sigmoid head's random init
    dual = DualSigmoidForImageClassification.from_classifier(
        AutoModelForImageClassification.from_pretrained(args.classifier_dir)
    )
    transform = transform_from_processor(AutoImageProcessor.from_pretrained(args.classifier_dir), args.augment)
    training_args = DualSigTrainingArguments(
        output_dir=args.output_dir,
        max_steps=12,
        per_device_train_batch_size=args.batch_size,
        save_strategy="steps",
        save_steps=4,
        eval_strategy="no",
        use_cpu=True,
        learning_rate=0.1,
        save_total_limit=None,
        seed=3,
    )
    return DualSigmoidTrainer(
        dual,
        training_args,
        train_dataset=splits["train"],
        train_transform=transform,
        use_feature_cache=not args.no_cache,
        feature_cache_views=args.views,
        callbacks=[KillAfterSave(args.kill_after_step)] if args.kill_after_step else None,
    )


def dump_features(trainer: DualSigmoidTrainer, path: str) -> None:
    """Every view of every cached training row, as this process reads them: (views, rows, width) and labels."""
    cache = trainer.train_dataset
    index = np.arange(len(cache))
    rows = [cache.rows(index, np.full_like(index, view)) for view in range(cache.schedule.views)]
    np.savez(path, features=np.stack([r["head_inputs"][0].numpy() for r in rows]), labels=rows[0]["labels"].numpy())


def main(argv=None) -> None:
    args = parse(argv)
    trainer = build_trainer(args)
    if args.dump_features:
        dump_features(trainer, os.path.join(args.output_dir, f"features.rank{trainer.args.process_index}.npz"))
    trainer.train(resume_from_checkpoint=args.resume or None)
    trainer.save_model(args.output_dir)


if __name__ == "__main__":
    main()
