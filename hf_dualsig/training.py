"""Training the sigmoid branch: `DualSigmoidTrainer`, fed through the frozen backbone or from its feature cache."""

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import PartialState
from torch.utils.data import DataLoader, Dataset, IterableDataset, Subset
from tqdm.auto import tqdm
from transformers import EvalPrediction, Trainer, TrainerCallback, TrainingArguments, default_data_collator

from .data.transforms import ImageTransform
from .feature_cache import (
    CachedFeatures,
    ShardWriter,
    ViewSchedule,
    cache_key,
    check_dtype,
    is_complete,
    mark_complete,
    tensors_digest,
)
from .modeling_dualsig import DualSigmoidForImageClassification

logger = logging.getLogger(__name__)
AUTOCAST_DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformedDataset(Dataset):
    """Rows of an image dataset as {"pixel_values", "labels"}, through a transform.

    With a `schedule`, row i is view `view` of image i (default: the view the schedule gives it this epoch), drawn
    with a generator seeded `schedule.augmentation_seed(view, i)`: exactly the draws of the feature cache.
    """

    def __init__(
        self, dataset, transform: ImageTransform, schedule: ViewSchedule | None = None, view: int | None = None
    ):
        self.dataset, self.transform, self.schedule, self.view = dataset, transform, schedule, view

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        return {"pixel_values": self.transform(row["image"], self._generator(index)), "labels": int(row["label"])}

    def set_epoch(self, epoch: int) -> None:
        if self.schedule is not None:
            self.schedule.set_epoch(epoch)

    def _generator(self, index: int) -> torch.Generator | None:
        if self.schedule is None or not self.transform.is_random:
            return None
        view = self.view if self.view is not None else int(self.schedule.views_of(index))
        return torch.Generator().manual_seed(self.schedule.augmentation_seed(view, index))


def collate_rows(rows: list[dict]) -> dict:
    """Rows -> a batch: head inputs stacked per head, or `pixel_values` and `labels` (`label` renamed) through
    `default_data_collator`; other keys (such as the image a `with_transform` keeps) are dropped."""
    if "head_inputs" in rows[0]:
        return {
            "head_inputs": tuple(torch.stack(parts) for parts in zip(*(row["head_inputs"] for row in rows))),
            "labels": torch.stack([torch.as_tensor(row["labels"]) for row in rows]),
        }
    return default_data_collator([{k: row[k] for k in ("pixel_values", "labels", "label") if k in row} for row in rows])


@dataclass
class BatchCollator:
    """The trainer's collator: a cached batch fetched whole (`__getitems__` returns a dict) passes through; lists of
    rows go to `collate` (the caller's `data_collator`, or `collate_rows`)."""

    collate: Callable = collate_rows

    def __call__(self, batch):
        return batch if isinstance(batch, dict) else self.collate(batch)


class _EpochToDataset(TrainerCallback):
    """Tells the training dataset the epoch starting, which picks its views (exact after a resume too:
    `state.epoch` is then e + done/steps). Accelerate forwards `set_epoch` to datasets in one process only."""

    def __init__(self, dataset):
        self.dataset = dataset

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.dataset.set_epoch(int(state.epoch or 0))


def check_autocast(dtype: str, device: torch.device | str, name: str = "feature_cache_autocast") -> None:
    """Refuse an autocast dtype for building the cache that is unknown, or float16 off CUDA (`name`: the field)."""
    if dtype not in AUTOCAST_DTYPES:
        raise ValueError(f"{name}={dtype!r}: expected one of {sorted(AUTOCAST_DTYPES)}.")
    device_type = torch.device(device).type
    if dtype == "float16" and device_type != "cuda":
        raise ValueError(
            f"{name}='float16' needs a CUDA device (the cache would be built on {device_type}): float16 autocast "
            "is a GPU mode; use 'bfloat16' (which also runs on CPU) or 'float32'."
        )


@dataclass
class CacheSettings:
    """Where and how the feature cache is built: `dtype` is how features are stored, `autocast_dtype` how the frozen
    backbone computes them ("float32": exactly, no autocast; "bfloat16" or, on CUDA, "float16": under
    `torch.autocast`, stored as `dtype` all the same). Both are part of the cache's key."""

    directory: str
    dtype: str = "float32"
    batch_size: int = 64
    device: torch.device | str = "cpu"
    num_workers: int = 0
    pin_memory: bool = False
    autocast_dtype: str = "float32"


@torch.no_grad()
def build_feature_cache(
    model: DualSigmoidForImageClassification,
    dataset,
    transform: ImageTransform,
    schedule: ViewSchedule,
    settings: CacheSettings,
) -> CachedFeatures:
    """Run the frozen classifier over `dataset` (each of `schedule.views` views) and stream what feeds its head(s)
    into a cache under `settings.directory`, named by its key; a complete cache with the same key is reused.

    Each process computes a contiguous shard; then every process maps all shards, so all see the same features.
    """
    check_dtype(settings.dtype)
    check_autocast(settings.autocast_dtype, settings.device)
    state = PartialState()
    directory = os.path.join(settings.directory, _cache_name(model, dataset, transform, schedule, settings))
    if not is_complete(directory):
        bounds = np.linspace(0, len(dataset), state.num_processes + 1).astype(int)
        rows = range(bounds[state.process_index], bounds[state.process_index + 1])
        _write_shard(model, dataset, transform, schedule, rows, directory, settings, state)
        state.wait_for_everyone()
        if state.is_main_process:
            shard_rows = np.diff(bounds).tolist()
            mark_complete(
                directory, shard_rows, schedule.views, len(model.config.head_paths), schedule.seed, settings.dtype
            )
    state.wait_for_everyone()
    return CachedFeatures(directory)


def _cache_name(model, dataset, transform, schedule, settings: CacheSettings) -> str:
    """The cache's key: frozen weights, head paths, transform, dataset fingerprint, views (and their seed), storage
    dtype, and the autocast dtype when there is one (float32 caches keep the key they had before autocast existed)."""
    seed = schedule.seed if transform.is_random else None
    weights = tensors_digest(model.classifier.state_dict())
    parts = (
        weights,
        model.config.head_paths,
        repr(transform),
        dataset._fingerprint,
        len(dataset),
        schedule.views,
        seed,
        settings.dtype,
    )
    if settings.autocast_dtype != "float32":
        parts = (*parts, f"autocast {settings.autocast_dtype}")
    return cache_key("hf_dualsig feature cache v2", *parts)[:32]


def _write_shard(model, dataset, transform, schedule, rows, directory, settings, state) -> None:
    writer = ShardWriter(directory, state.process_index, len(rows), settings.dtype)
    device = torch.device(settings.device)
    model = model.to(device).eval()
    images = dataset.select_columns(["image", "label"])
    autocast_dtype = AUTOCAST_DTYPES[settings.autocast_dtype]
    for view in range(schedule.views):
        loader = DataLoader(
            Subset(TransformedDataset(images, transform, schedule, view), rows),
            batch_size=settings.batch_size,
            num_workers=settings.num_workers,
            pin_memory=settings.pin_memory and device.type == "cuda",
            collate_fn=default_data_collator,
        )
        desc = f"caching head inputs, view {view + 1}/{schedule.views} ({len(dataset)} images)"
        for batch in tqdm(loader, desc=desc, disable=not state.is_main_process):
            with torch.autocast(
                device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None
            ):
                out = model(pixel_values=batch["pixel_values"].to(device, non_blocking=True))
            for head, features in enumerate(out.head_inputs):
                writer.append(f"view{view}.head{head}", features.float())  # stored as settings.dtype
            if view == 0:
                writer.append("labels", batch["labels"])
    writer.close()


def preprocess_logits_for_metrics(logits, labels) -> torch.Tensor:
    """Keep only each head's prediction: (batch, 2) = softmax argmax, sigmoid argmax."""
    softmax_logits, sigmoid_logits = logits[0], logits[1]
    return torch.stack([softmax_logits.argmax(-1), sigmoid_logits.argmax(-1)], dim=-1)


def compute_head_accuracies(prediction: EvalPrediction) -> dict:
    """Top-1 accuracy of both heads (the BCE is reported as `eval_loss`)."""
    predictions = np.asarray(prediction.predictions)
    labels = np.asarray(prediction.label_ids)
    return {
        "accuracy_softmax": float((predictions[:, 0] == labels).mean()),
        "accuracy_sigmoid": float((predictions[:, 1] == labels).mean()),
    }


class DualSigmoidTrainer(Trainer):
    """`Trainer` for the sigmoid branch of a [`DualSigmoidForImageClassification`].

    Datasets may yield `pixel_values` and `labels` (a `with_transform` dataset, any torch dataset; with any
    `data_collator`): training then goes through the frozen backbone. Or they hold raw images (a `datasets.Dataset`
    with columns `image` and `label`) and come with `train_transform` (and optionally `eval_transform`, by default
    the training one without augmentation): then, with `use_feature_cache` (default: whenever the training
    transform is deterministic, or `feature_cache_views` is given), the frozen classifier runs once over each split
    and the head trains on its cached inputs, the same head as training through the backbone. With a random
    training transform, `feature_cache_views=K` caches K augmented views and each epoch draws one per image (see
    `feature_cache.ViewSchedule`); with `use_feature_cache=False` too, training goes through the backbone with the
    same draws. Caches live in `feature_cache_dir` (default `output_dir/feature_cache`), keyed by the frozen
    weights, transform, dataset fingerprint, views, `feature_cache_dtype` (how features are stored: "float32",
    "float16", "bfloat16") and `feature_cache_autocast` (how the frozen backbone computes them: "float32", exact, the
    default; "bfloat16" under `torch.autocast`, for speed on GPUs with bf16 units, features then within about
    2**-8 relative per feature vector: 5.5e-3 at most on benchmarks/train_head.py's model; "float16", CUDA only), and are reused by any run with the same key. Only `sigmoid_head` has trainable parameters; the backbone stays
    in eval mode; evaluation reports both heads' accuracy and the BCE.
    """

    def __init__(
        self,
        model: DualSigmoidForImageClassification,
        args: TrainingArguments,
        train_dataset=None,
        eval_dataset=None,
        train_transform: ImageTransform | None = None,
        eval_transform: ImageTransform | None = None,
        use_feature_cache: bool | None = None,
        feature_cache_views: int | None = None,
        feature_cache_dtype: str = "float32",
        feature_cache_dir: str | None = None,
        feature_cache_autocast: str = "float32",
        **kwargs,
    ):
        if not isinstance(model, DualSigmoidForImageClassification):
            raise TypeError(
                f"DualSigmoidTrainer trains a DualSigmoidForImageClassification, got {type(model).__name__}; "
                "convert it with DualSigmoidForImageClassification.from_classifier(model)."
            )
        check_dtype(feature_cache_dtype)
        check_autocast(feature_cache_autocast, args.device)
        if feature_cache_views is not None and (not isinstance(feature_cache_views, int) or feature_cache_views < 1):
            raise ValueError(f"feature_cache_views={feature_cache_views!r}: expected a positive integer.")
        kinds = {"train": _row_kind(train_dataset, "train_dataset"), "eval": _row_kind(eval_dataset, "eval_dataset")}
        train_transform, eval_transform = _check_transforms(kinds, train_transform, eval_transform)
        self.uses_feature_cache = _decide_feature_cache(
            use_feature_cache, feature_cache_views, kinds, train_dataset if kinds["train"] else eval_dataset,
            train_transform if kinds["train"] else eval_transform,
        )  # fmt: skip
        schedule = ViewSchedule(feature_cache_views or 1, args.seed)
        settings = CacheSettings(
            directory=feature_cache_dir or os.path.join(args.output_dir, "feature_cache"),
            dtype=feature_cache_dtype,
            batch_size=args.per_device_eval_batch_size,
            device=args.device,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            autocast_dtype=feature_cache_autocast,
        )
        feed = _Feed(model, self.uses_feature_cache, settings)
        train_dataset = feed(train_dataset, kinds["train"], train_transform, schedule if feature_cache_views else None)
        eval_dataset = feed(eval_dataset, kinds["eval"], eval_transform, None)
        if feature_cache_views and feature_cache_views > 1:
            kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), _EpochToDataset(train_dataset)]
        # a with_transform dataset needs its raw columns; ours are the inputs. Pinned memory only with an accelerator
        # (else torch warns at every DataLoader). A copy: the caller's args stay as given.
        pin_memory = args.dataloader_pin_memory and torch.accelerator.is_available()
        args = dataclasses.replace(args, remove_unused_columns=False, dataloader_pin_memory=pin_memory)
        kwargs.setdefault("compute_metrics", compute_head_accuracies)
        kwargs.setdefault("preprocess_logits_for_metrics", preprocess_logits_for_metrics)
        kwargs["data_collator"] = BatchCollator(kwargs.get("data_collator") or collate_rows)
        super().__init__(model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, **kwargs)

    def train(self, *args, **kwargs):
        """Train the sigmoid branch; afterwards the config records that it was trained (`sigmoid_head_trained`)."""
        output = super().train(*args, **kwargs)
        self.model.config.sigmoid_head_trained = True
        return output


@dataclass
class _Feed:
    """Turns one split into what the trainer iterates: cached head inputs, transformed images, or the dataset as is."""

    model: DualSigmoidForImageClassification
    use_cache: bool
    settings: CacheSettings

    def __call__(self, dataset, kind: str | None, transform: ImageTransform | None, schedule: ViewSchedule | None):
        if kind != "image":
            return dataset
        if self.use_cache and _cacheable(dataset) and (schedule is not None or not transform.is_random):
            return build_feature_cache(self.model, dataset, transform, schedule or ViewSchedule(1, 0), self.settings)
        return TransformedDataset(dataset, transform, schedule)


def _row_kind(dataset, name: str) -> str | None:
    """What rows of `dataset` hold: "image" (raw image and label), "pixel_values" or "head_inputs"."""
    if dataset is None:
        return None
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        return "pixel_values"  # an iterable dataset: taken as ready for the model
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty.")
    row = dataset[0]
    for kind in ("head_inputs", "pixel_values", "image"):
        if kind in row:
            return kind
    raise ValueError(
        f"{name} rows have keys {sorted(row)}: expected pixel_values and labels (ready for the model), image and "
        "label (raw images, with a transform), or head_inputs and labels (cached features)."
    )


def _check_transforms(kinds: dict, train_transform, eval_transform) -> tuple:
    """The transforms for raw-image splits (eval: the training one without augmentation by default)."""
    if kinds["train"] == "image" and train_transform is None:
        raise ValueError(
            "train_dataset holds raw images (image, label): pass train_transform=ImageTransform(...) "
            "(data.transform_from_processor(image_processor)), or a dataset that yields pixel_values and labels."
        )
    if kinds["train"] not in (None, "image") and train_transform is not None:
        raise ValueError(f"train_transform is for raw images, but train_dataset already yields {kinds['train']}.")
    if eval_transform is None and train_transform is not None:
        eval_transform = ImageTransform(**{**vars(train_transform), "augment": False})
    if kinds["eval"] == "image" and eval_transform is None:
        raise ValueError("eval_dataset holds raw images (image, label): pass eval_transform=ImageTransform(...).")
    return train_transform, eval_transform


def _cacheable(dataset) -> bool:
    """Whether a raw-image dataset can key a cache (a `datasets.Dataset` fingerprint)."""
    return hasattr(dataset, "_fingerprint") and hasattr(dataset, "select_columns")


def _decide_feature_cache(requested: bool | None, views: int | None, kinds: dict, dataset, transform) -> bool:
    """Whether the trainer trains on head inputs; raises when the request contradicts the data."""
    kind = kinds["train"] or kinds["eval"]
    if kind == "head_inputs":
        if requested is False:
            raise ValueError("use_feature_cache=False, but the dataset already yields head_inputs (cached features).")
        return True
    if kind != "image" or not _cacheable(dataset):
        if requested or views:
            argument = "use_feature_cache=True" if requested else "feature_cache_views"
            raise ValueError(
                f"{argument} needs raw images (a datasets.Dataset with image and label) and an ImageTransform: only "
                "then can the trainer prove its inputs deterministic (or replay their random draws)."
            )
        return False
    if views and views > 1 and not transform.is_random:
        raise ValueError(
            f"feature_cache_views={views} needs a random train_transform (augment=...): a deterministic one gives "
            f"{views} identical views."
        )
    if transform.is_random and not views:
        if requested:
            raise ValueError(
                "use_feature_cache=True needs a deterministic training transform, but train_transform.augment="
                f"{transform.augment!r}; cache K augmented views with feature_cache_views=K, drop the augmentation, "
                "or set use_feature_cache=False."
            )
        if requested is None:
            logger.warning(
                "Random augmentation in the training transform: feature cache off, training through the backbone "
                "(feature_cache_views=K caches K augmented views)."
            )
        return False
    return requested is not False
