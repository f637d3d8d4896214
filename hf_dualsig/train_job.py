"""The two-stage training job behind `scripts/train.py`: fine-tune a softmax classifier, then train its sigmoid
branch."""

import logging
import os

import numpy as np
from dataclasses import dataclass, field

from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    ViTImageProcessorPil,
    set_seed,
)

from .data.loaders import check_label_names, check_split
from .data.splits import DataArguments, load_split, load_splits
from .data.transforms import ImageTransform, transform_from_processor
from .evaluation import EvalArguments, run_evaluation
from .hub import publish, require_token
from .modeling_dualsig import DualSigmoidForImageClassification
from .training import DualSigmoidTrainer, TransformedDataset
from .zoo import convnext_small_config

logger = logging.getLogger(__name__)
STAGES = ("softmax", "sigmoid", "both")


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A classifier (hub id or dir). Default: a small ConvNeXt built from a config."},
    )
    stage: str = field(
        default="both",
        metadata={
            "help": "softmax: fine-tune the classifier; sigmoid: train the branch of a trained classifier; both."
        },
    )
    softmax_epochs: float = field(default=20, metadata={"help": "Epochs of stage 1 (softmax fine-tuning)."})
    softmax_learning_rate: float = field(default=3e-3, metadata={"help": "AdamW learning rate of stage 1."})
    pos_weight: str = field(
        default="num_classes_minus_one",
        metadata={"help": "num_classes_minus_one (paper), inverse_frequency, none, or a number."},
    )
    use_feature_cache: bool | None = field(
        default=None,
        metadata={"help": "Train the head on cached features (default: when the transform is deterministic)."},
    )
    augment: bool = field(default=False, metadata={"help": "Random crops and flips in stage 2 (turns the cache off)."})


@dataclass
class DualSigTrainingArguments(TrainingArguments):
    """TrainingArguments whose defaults run stage 2 on the synthetic set in seconds (paper: SGD, Nesterov)."""

    output_dir: str = "outputs/convnext-dualsig"
    num_train_epochs: float = 10
    learning_rate: float = 0.05
    optim: str = "sgd"
    optim_args: str | None = "momentum=0.9,nesterov=True"
    weight_decay: float = 5e-4
    max_grad_norm: float = 0.0  # the paper does not clip
    per_device_train_batch_size: int = 32
    per_device_eval_batch_size: int = 64
    eval_strategy: str = "epoch"
    save_strategy: str = "epoch"
    save_total_limit: int | None = 2
    logging_steps: int = 20
    report_to: str = "none"
    seed: int = 0


def _label_names(dataset) -> list[str]:
    names = getattr(dataset.features["label"], "names", None)
    return names or [str(i) for i in range(int(max(dataset["label"])) + 1)]


def build_classifier(model: ModelArguments, data: DataArguments, label_names: list[str]):
    """(classifier, image processor) for stage 1: the default ConvNeXt, or a pretrained one with a new head."""
    id2label = dict(enumerate(label_names))
    if model.model_name_or_path is None:
        config = convnext_small_config(len(label_names), data.image_size)
        config.id2label, config.label2id = id2label, {v: k for k, v in id2label.items()}
        processor = ViTImageProcessorPil(size={"height": data.image_size, "width": data.image_size})
        return AutoModelForImageClassification.from_config(config), processor
    classifier = AutoModelForImageClassification.from_pretrained(
        model.model_name_or_path,
        num_labels=len(label_names),
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True,
    )
    return classifier, AutoImageProcessor.from_pretrained(model.model_name_or_path)


def train_softmax(classifier, processor, splits, model: ModelArguments, args: TrainingArguments):
    """Stage 1: standard image-classification fine-tuning (cross-entropy, all weights, random crops and flips)."""
    stage_args = TrainingArguments(
        **{
            **args.to_dict(),
            "output_dir": os.path.join(args.output_dir, "softmax"),
            "num_train_epochs": model.softmax_epochs,
            "learning_rate": model.softmax_learning_rate,
            "optim": "adamw_torch",
            "optim_args": None,
            "weight_decay": 0.05,
            "push_to_hub": False,
            "remove_unused_columns": False,
        }
    )
    eval_transform = transform_from_processor(processor)
    train_transform = ImageTransform(**{**vars(eval_transform), "augment": True})
    trainer = Trainer(
        model=classifier,
        args=stage_args,
        train_dataset=TransformedDataset(splits["train"], train_transform),
        eval_dataset=TransformedDataset(splits["eval"], eval_transform),
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )
    trainer.train(resume_from_checkpoint=_last_checkpoint(stage_args.output_dir, args.resume_from_checkpoint))
    metrics = trainer.evaluate()
    trainer.save_model(stage_args.output_dir)
    processor.save_pretrained(stage_args.output_dir)
    logger.info("stage 1 (softmax) eval: %s", metrics)
    return trainer.model, metrics


def train_sigmoid(classifier, processor, splits, model: ModelArguments, args: TrainingArguments):
    """Stage 2: convert, train the sigmoid branch, save the dual checkpoint (code, weights, processor)."""
    set_seed(args.seed)  # the sigmoid head's random init: the same on every process and every run
    dual = DualSigmoidForImageClassification.from_classifier(
        classifier, config_kwargs={"pos_weight": _number_or(model.pos_weight)}
    )
    if model.pos_weight == "inverse_frequency":
        dual.config.class_counts = [int(c) for c in _counts(splits["train"], dual.config.num_labels)]
    eval_transform = transform_from_processor(processor)
    trainer = DualSigmoidTrainer(
        dual,
        args,
        train_dataset=splits["train"],
        eval_dataset=splits["eval"],
        train_transform=ImageTransform(**{**vars(eval_transform), "augment": model.augment}),
        eval_transform=eval_transform,
        use_feature_cache=model.use_feature_cache,
    )
    trainer.train(resume_from_checkpoint=_last_checkpoint(args.output_dir, args.resume_from_checkpoint))
    metrics = trainer.evaluate()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    return trainer.model, metrics


def run(
    model: ModelArguments, data: DataArguments, args: TrainingArguments, evaluation: EvalArguments | None = None
) -> dict:
    """Run the requested stages, then (with `evaluation`) the softmax-vs-sigmoid WSOL evaluation on the test split;
    returns the final metrics and where everything went."""
    if model.stage not in STAGES:
        raise ValueError(f"--stage {model.stage!r}: expected one of {STAGES}.")
    if args.push_to_hub and model.stage == "softmax":
        raise ValueError("--push_to_hub publishes the dual checkpoint: use it with --stage sigmoid or both.")
    hub = _take_over_hub_push(args)  # checks the token before any work; the Trainers must not push on their own
    splits = load_splits(data)
    label_names = _label_names(splits["train"])
    result = {}
    if model.stage in ("softmax", "both"):
        classifier, processor = build_classifier(model, data, label_names)
        splits = {name: check_split(ds, name, len(label_names)) for name, ds in splits.items()}
        classifier, result["softmax"] = train_softmax(classifier, processor, splits, model, args)
    else:
        if model.model_name_or_path is None:
            raise ValueError("--stage sigmoid needs --model_name_or_path: a classifier trained on this label set.")
        classifier = AutoModelForImageClassification.from_pretrained(model.model_name_or_path)
        processor = AutoImageProcessor.from_pretrained(model.model_name_or_path)
        check_label_names(splits["train"], classifier.config.id2label)
        splits = {name: check_split(ds, name, classifier.config.num_labels) for name, ds in splits.items()}
    if model.stage in ("sigmoid", "both"):
        dual, result["sigmoid"] = train_sigmoid(classifier, processor, splits, model, args)
        wsol, test = None, None
        if evaluation is not None and evaluation.evaluate_after_training:
            test = load_split(data, evaluation.test_split)
            if "boxes" in test.column_names or "mask" in test.column_names:
                eval_dir = os.path.join(args.output_dir, "eval")
                wsol = run_evaluation(dual, processor, test, evaluation, eval_dir)
                result["evaluation"] = {"dir": eval_dir, "top1_cls": wsol["top1_cls"]}
        if hub and args.process_index == 0:
            result["hub"] = publish(
                dual,
                processor,
                hub["repo_id"],
                os.path.join(args.output_dir, "hub"),
                results=wsol,
                gallery_dataset=test,
                training=_training_summary(model, data, args),
                base_model=model.model_name_or_path,
                dataset_name=data.dataset,
                token=hub["token"],
                private=bool(args.hub_private_repo),
            )
    result.update(output_dir=args.output_dir, num_processes=args.world_size)
    return result


def _take_over_hub_push(args: TrainingArguments) -> dict | None:
    """--push_to_hub: check the token and repo id now, and push once at the end (checkpoint, code, card, maps)."""
    if not args.push_to_hub:
        return None
    if not args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id user/name.")
    token = require_token(args.hub_token)
    args.push_to_hub = False
    return {"repo_id": args.hub_model_id, "token": token}


def _training_summary(model: ModelArguments, data: DataArguments, args: TrainingArguments) -> str:
    return (
        f"Stage {model.stage} on `{data.dataset}`: sigmoid head trained {args.num_train_epochs:g} epochs, "
        f"optimizer {args.optim} ({args.optim_args or 'defaults'}), learning rate {args.learning_rate:g}, "
        f"weight decay {args.weight_decay:g}, batch {args.per_device_train_batch_size} per device, seed {args.seed}, "
        f"pos_weight {model.pos_weight}, backbone and softmax head frozen."
    )


def _number_or(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def _counts(dataset, num_labels: int):
    return np.bincount(np.asarray(dataset["label"]), minlength=num_labels)


def _last_checkpoint(output_dir: str, resume) -> str | bool | None:
    """`--resume_from_checkpoint` as given, or True when it is 'last' and a checkpoint exists."""
    if resume != "last":
        return resume
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
