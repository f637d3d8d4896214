"""Helper for test_training.py: trains a sigmoid head on the small synthetic set; can SIGKILL itself after a save."""

import argparse
import os
import signal

import torch

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


parser = argparse.ArgumentParser()
parser.add_argument("classifier_dir")
parser.add_argument("output_dir")
parser.add_argument("--kill_after_step", type=int)
parser.add_argument("--resume", action="store_true")
parser.add_argument("--no_cache", action="store_true")
args = parser.parse_args()
splits = load_synthetic_wsol(SMALL_SYNTHETIC)
torch.manual_seed(0)  # the sigmoid head's random init
dual = DualSigmoidForImageClassification.from_classifier(
    AutoModelForImageClassification.from_pretrained(args.classifier_dir)
)
transform = transform_from_processor(AutoImageProcessor.from_pretrained(args.classifier_dir))
training_args = DualSigTrainingArguments(
    output_dir=args.output_dir,
    max_steps=12,
    per_device_train_batch_size=8,
    save_strategy="steps",
    save_steps=4,
    eval_strategy="no",
    use_cpu=True,
    learning_rate=0.1,
    save_total_limit=None,
    seed=3,
)
trainer = DualSigmoidTrainer(
    dual,
    training_args,
    train_dataset=splits["train"],
    train_transform=transform,
    use_feature_cache=not args.no_cache,
    callbacks=[KillAfterSave(args.kill_after_step)] if args.kill_after_step else None,
)
trainer.train(resume_from_checkpoint=args.resume or None)
trainer.save_model(args.output_dir)
