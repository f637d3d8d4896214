"""Train the sigmoid branch of an image classifier (stage 2), after fine-tuning the classifier itself (stage 1).

With no arguments: the ImageNet EfficientNet-Lite0 (converted offline) adapted to the synthetic WSOL set, its sigmoid
branch, checkpoint in outputs/lite0-dualsig/, then the softmax-vs-sigmoid evaluation on the test split and a gallery
of both heads' maps (outputs/lite0-dualsig/eval/).
Runs unchanged under `accelerate launch` (several GPUs, or processes with --use_cpu).
"""

import json
import logging
import sys

from transformers import HfArgumentParser

import hf_dualsig
from hf_dualsig.data.splits import DataArguments
from hf_dualsig.eval_arguments import EvalArguments

# DualSigTrainingArguments extends transformers' TrainingArguments, which imports torch: so does `--help` here.
from hf_dualsig.train_job import DualSigTrainingArguments, ModelArguments, run


def main(argv=None):
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    parser = HfArgumentParser((ModelArguments, DataArguments, EvalArguments, DualSigTrainingArguments))
    model_args, data_args, eval_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    hf_dualsig.register_auto_classes()  # --push_to_hub stages through pipeline("dualsig-cam")
    result = run(model_args, data_args, training_args, eval_args)
    if training_args.process_index == 0:
        print(json.dumps(result, indent=2, default=str))
        print(f"checkpoint: {result['output_dir']}")


if __name__ == "__main__":
    sys.exit(main())
