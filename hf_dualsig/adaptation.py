"""Stage 1 on a small budget: adapt a pretrained classifier to a new label set from cached features.

`linear_probe` trains only the classification head; `top` also trains the last 1x1 convolution block that makes
the CAM layer (EfficientNet), so that the maps follow the new classes. Both run the frozen part of the network once
and train on what it produced, in eval mode (BatchNorm statistics untouched).
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import default_data_collator

from .backbones import get_adapter, resolve_module
from .training import TransformedDataset

logger = logging.getLogger(__name__)
ADAPT_MODES = ("linear_probe", "top", "full")
# Families whose CAM layer is made by a final conv block: its (conv, norm, activation), then global average pooling
# and the head. `top` mode trains the conv, the norm's affine parameters and the head.
TOP_BLOCKS = {
    "EfficientNetForImageClassification": (
        "efficientnet.encoder.top_conv",
        "efficientnet.encoder.top_bn",
        "efficientnet.encoder.top_activation",
    ),
}


def default_adapt_mode(classifier: nn.Module) -> str:
    """`top` where the family has a top block, else `full` fine-tuning."""
    return "top" if type(classifier).__name__ in TOP_BLOCKS else "full"


def check_adapt_mode(mode: str, classifier: nn.Module) -> None:
    """A ValueError naming the supported choices when `mode` cannot adapt this classifier."""
    if mode not in ADAPT_MODES:
        raise ValueError(f"--softmax_train {mode!r}: expected one of {ADAPT_MODES}.")
    if mode == "top" and type(classifier).__name__ not in TOP_BLOCKS:
        raise ValueError(
            f"--softmax_train top needs a family with a final 1x1 conv block ({', '.join(TOP_BLOCKS)}); "
            f"{type(classifier).__name__} has none: use linear_probe or full."
        )
    if mode == "linear_probe" and len(get_adapter(classifier).head_paths) != 1:
        raise ValueError("--softmax_train linear_probe needs a classifier with one head; use full.")


@torch.no_grad()
def cached_inputs(classifier, module: nn.Module, dataset, transform, batch_size: int = 64, num_workers: int = 0):
    """(inputs of `module` for every image, labels), running the frozen classifier once in eval mode; images are
    read and transformed by `num_workers` DataLoader workers."""
    captured, parts, labels = {}, [], []
    handle = module.register_forward_hook(lambda m, args, out: captured.__setitem__("x", args[0]))
    loader = DataLoader(
        TransformedDataset(dataset.select_columns(["image", "label"]), transform),
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=classifier.device.type == "cuda",
        collate_fn=default_data_collator,
    )
    classifier.eval()
    try:
        for batch in tqdm(loader, desc=f"features for stage 1 ({len(dataset)} images)"):
            classifier(pixel_values=batch["pixel_values"].to(classifier.device, non_blocking=True))
            parts.append(captured["x"].float().cpu())
            labels.append(batch["labels"])
    finally:
        handle.remove()
    return torch.cat(parts), torch.cat(labels)


class HeadInputs(Dataset):
    """Rows {"head_inputs": (features,), "labels": label} for `DualSigmoidTrainer` (cached features)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        return {"head_inputs": (self.features[index],), "labels": self.labels[index]}


def adapt(
    classifier,
    mode: str,
    train,
    eval_split,
    transform,
    epochs: int,
    learning_rate: float,
    seed: int,
    num_workers: int = 0,
) -> tuple[dict, dict[str, HeadInputs]]:
    """Train the head (`linear_probe`) or the top block and head (`top`) of `classifier` in place, with AdamW and
    cross-entropy on cached features. Returns train and eval accuracy, and what now feeds the head for every image
    of both splits (the adapted classifier's head inputs, ready for stage 2 without another pass)."""
    check_adapt_mode(mode, classifier)
    classifier.requires_grad_(False)
    head = resolve_module(classifier, get_adapter(classifier).head_paths[0])
    if mode == "linear_probe":
        start, modules = head, [head]
        tail, features = head, nn.Identity()
    else:
        conv, norm, activation = (resolve_module(classifier, name) for name in TOP_BLOCKS[type(classifier).__name__])
        start, modules = conv, [conv, norm, head]

        def features(x):
            return activation(norm(conv(x))).mean(dim=(2, 3))

        def tail(x):
            return head(features(x))

    x_train, y_train = cached_inputs(classifier, start, train, transform, num_workers=num_workers)
    x_eval, y_eval = cached_inputs(classifier, start, eval_split, transform, num_workers=num_workers)
    parameters = [p for m in modules for p in m.parameters()]
    for p in parameters:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=0.05)
    generator = torch.Generator().manual_seed(seed)
    batch = 32
    for _ in tqdm(range(int(epochs)), desc=f"stage 1 ({mode})"):
        order = torch.randperm(len(y_train), generator=generator)
        for i in range(0, len(order), batch):
            index = order[i : i + batch]
            loss = F.cross_entropy(tail(x_train[index].to(classifier.device)), y_train[index].to(classifier.device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    classifier.requires_grad_(True)
    with torch.no_grad():
        metrics = {
            "train_accuracy": _accuracy(tail, x_train, y_train, classifier.device),
            "eval_accuracy": _accuracy(tail, x_eval, y_eval, classifier.device),
            "mode": mode,
            "epochs": int(epochs),
        }
        head_inputs = {
            "train": HeadInputs(_batched(features, x_train, classifier.device), y_train),
            "eval": HeadInputs(_batched(features, x_eval, classifier.device), y_eval),
        }
    logger.info("stage 1 (%s): %s", mode, metrics)
    return metrics, head_inputs


def _batched(fn, x: torch.Tensor, device) -> torch.Tensor:
    return torch.cat([fn(x[i : i + 256].to(device)).float().cpu() for i in range(0, len(x), 256)])


def _accuracy(tail, x, y, device) -> float:
    return float((_batched(tail, x, device).argmax(-1) == y).float().mean())
