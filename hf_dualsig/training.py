"""Training the sigmoid branch: `DualSigmoidTrainer` and its feature cache."""

import logging
import os

import numpy as np
import torch
from accelerate import PartialState
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import EvalPrediction, Trainer, TrainingArguments, default_data_collator

from .data.transforms import ImageClassificationCollator, ImageTransform
from .files import write_atomically
from .modeling_dualsig import DualSigmoidForImageClassification

logger = logging.getLogger(__name__)


class TransformedDataset(Dataset):
    """Rows of an image dataset as {"pixel_values", "labels"}, through a transform."""

    def __init__(self, dataset, transform: ImageTransform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        row = self.dataset[index]
        return {"pixel_values": self.transform(row["image"]), "labels": int(row["label"])}


class FeatureDataset(Dataset):
    """Precomputed head inputs and labels, one row per image."""

    def __init__(self, head_inputs: list[torch.Tensor], labels: torch.Tensor):
        self.head_inputs, self.labels = head_inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"head_inputs": tuple(t[index] for t in self.head_inputs), "labels": self.labels[index]}

    def __getitems__(self, indices: list[int]) -> dict:
        """A whole batch in one indexing operation (DataLoader's batched fetch)."""
        index = torch.as_tensor(indices)
        return {"head_inputs": tuple(t[index] for t in self.head_inputs), "labels": self.labels[index]}


def collate_features(batch: dict | list[dict]) -> dict:
    """FeatureDataset batches (from `__getitems__`) or rows -> {"head_inputs", "labels"}."""
    if isinstance(batch, dict):
        return batch
    return {
        "head_inputs": tuple(torch.stack(parts) for parts in zip(*(row["head_inputs"] for row in batch))),
        "labels": torch.stack([torch.as_tensor(row["labels"]) for row in batch]),
    }


@torch.no_grad()
def compute_head_inputs(
    model: DualSigmoidForImageClassification,
    dataset,
    transform: ImageTransform,
    cache_path: str,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> FeatureDataset:
    """Run the frozen classifier once over `dataset` and keep what feeds its head(s).

    Each process computes a contiguous shard (with a progress bar on the main process) and writes it to
    `cache_path`.rank<k> (atomically); then every process loads all shards, so all see the same features.
    """
    state = PartialState()
    rank, world = state.process_index, state.num_processes
    bounds = np.linspace(0, len(dataset), world + 1).astype(int)
    shard = dataset.select_columns(["image", "label"]).select(range(bounds[rank], bounds[rank + 1]))
    loader = DataLoader(shard, batch_size=batch_size, collate_fn=ImageClassificationCollator(transform))
    model = model.to(device).eval()
    parts, labels = [], []
    for batch in tqdm(loader, desc=f"caching head inputs ({len(dataset)} images)", disable=not state.is_main_process):
        out = model(pixel_values=batch["pixel_values"].to(device))
        parts.append([t.float().cpu() for t in out.head_inputs])
        labels.append(batch["labels"])
    tensors = {f"head_input_{i}": torch.cat(p) for i, p in enumerate(zip(*parts))} if parts else {}
    tensors["labels"] = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    write_atomically(
        f"{cache_path}.rank{rank}", lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, tmp)
    )
    state.wait_for_everyone()
    shards = [load_file(f"{cache_path}.rank{r}") for r in range(world)]
    num_heads = len(model.config.head_paths)
    head_inputs = [
        torch.cat([s[f"head_input_{i}"] for s in shards if f"head_input_{i}" in s]) for i in range(num_heads)
    ]
    return FeatureDataset(head_inputs, torch.cat([s["labels"] for s in shards]))


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

    Takes raw image datasets (columns `image` and `label`) and the transforms to apply. Only `sigmoid_head`
    has trainable parameters, so the optimiser sees nothing else; the backbone stays in eval mode; evaluation
    reports both heads' accuracy and the BCE. With `use_feature_cache` (default: whenever the training transform
    is deterministic) the frozen classifier runs once over each split and the head trains on its cached inputs;
    the result is the same head as training through the backbone.
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
        **kwargs,
    ):
        if not isinstance(model, DualSigmoidForImageClassification):
            raise TypeError(
                f"DualSigmoidTrainer trains a DualSigmoidForImageClassification, got {type(model).__name__}; "
                "convert it with DualSigmoidForImageClassification.from_classifier(model)."
            )
        if train_transform is None:
            raise ValueError("train_transform is required: use data.transform_from_processor(image_processor).")
        eval_transform = eval_transform or ImageTransform(**{**vars(train_transform), "augment": False})
        self.uses_feature_cache = _decide_feature_cache(use_feature_cache, train_transform)
        args.remove_unused_columns = False  # our datasets yield exactly the model's inputs
        kwargs.setdefault("compute_metrics", compute_head_accuracies)
        kwargs.setdefault("preprocess_logits_for_metrics", preprocess_logits_for_metrics)
        if self.uses_feature_cache:
            cache = os.path.join(args.output_dir, "feature_cache")
            batch = args.per_device_eval_batch_size
            train_dataset = train_dataset and compute_head_inputs(
                model, train_dataset, train_transform, os.path.join(cache, "train"), batch, args.device
            )
            eval_dataset = eval_dataset and compute_head_inputs(
                model, eval_dataset, eval_transform, os.path.join(cache, "eval"), batch, args.device
            )
            collator = collate_features
        else:
            train_dataset = train_dataset and TransformedDataset(train_dataset, train_transform)
            eval_dataset = eval_dataset and TransformedDataset(eval_dataset, eval_transform)
            collator = default_data_collator
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            data_collator=collator,
            **kwargs,
        )


    def train(self, *args, **kwargs):
        """Train the sigmoid branch; afterwards the config records that it was trained (`sigmoid_head_trained`)."""
        output = super().train(*args, **kwargs)
        self.model.config.sigmoid_head_trained = True
        return output


def _decide_feature_cache(requested: bool | None, transform: ImageTransform) -> bool:
    if requested and transform.augment:
        raise ValueError(
            "use_feature_cache=True needs a deterministic training transform, but train_transform.augment=True; "
            "drop the augmentation or set use_feature_cache=False."
        )
    if requested is None and transform.augment:
        logger.warning(
            "Random augmentation in the training transform: feature cache off, training through the backbone."
        )
    return transform.augment is False if requested is None else requested
