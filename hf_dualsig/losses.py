"""Class-balanced binary cross-entropy for the sigmoid branch (shipped with every checkpoint; torch only)."""

import torch
import torch.nn.functional as F


def resolve_pos_weight(
    pos_weight: str | float, num_classes: int, class_counts: list[int] | None = None, device=None
) -> torch.Tensor | None:
    """The `pos_weight` tensor of `binary_cross_entropy_with_logits` for a config's `pos_weight` mode."""
    if pos_weight == "num_classes_minus_one":
        return torch.tensor(float(num_classes - 1), device=device)
    if pos_weight == "none":
        return None
    if pos_weight == "inverse_frequency":
        if class_counts is None:
            raise ValueError(
                'pos_weight="inverse_frequency" needs config.class_counts (the training-set count of each class); '
                "set it, or use pos_weight='num_classes_minus_one'."
            )
        counts = torch.tensor(class_counts, dtype=torch.float32, device=device)
        if (counts <= 0).any():
            raise ValueError(f"class_counts={class_counts}: every class needs at least one training example.")
        return (counts.sum() - counts) / counts
    return torch.tensor(float(pos_weight), device=device)


def class_balanced_bce(
    sigmoid_logits: torch.Tensor,
    labels: torch.Tensor,
    pos_weight: torch.Tensor | None,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy of per-class sigmoids against one-hot labels, positives weighted by `pos_weight`.

    The mean over all (sample, class) terms; with `num_items_in_batch` (the number of samples across gradient
    accumulation steps and processes, as `transformers.Trainer` passes it) the sum is divided by
    `num_items_in_batch * num_classes` instead, so accumulated steps add up to the full-batch loss.
    """
    num_classes = sigmoid_logits.shape[-1]
    targets = F.one_hot(labels, num_classes).to(sigmoid_logits.dtype)
    if pos_weight is not None:
        pos_weight = pos_weight.to(sigmoid_logits.dtype)
    if num_items_in_batch is None:
        return F.binary_cross_entropy_with_logits(sigmoid_logits, targets, pos_weight=pos_weight)
    total = F.binary_cross_entropy_with_logits(sigmoid_logits, targets, pos_weight=pos_weight, reduction="sum")
    return total / (num_items_in_batch * num_classes)
