"""Explanation fidelity: Average Drop, Increase in Confidence, insertion and deletion AUC, batched in torch.

Which head's probability gives the scores is a parameter: "softmax" (default) or "sigmoid" (the authors' option).
The explanation image is x * M, the normalised pixel values times the map at input resolution.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

HEAD_CHOICES = ("softmax", "sigmoid")


def probabilities(logits: torch.Tensor, head: str) -> torch.Tensor:
    """(B, num_labels) probabilities from one head's logits: softmax for "softmax", sigmoid for "sigmoid"."""
    if head not in HEAD_CHOICES:
        raise ValueError(f"head={head!r}: expected one of {HEAD_CHOICES}.")
    return torch.sigmoid(logits) if head == "sigmoid" else torch.softmax(logits, dim=-1)


def class_probabilities(model, pixel_values: torch.Tensor, head: str) -> torch.Tensor:
    """(B, num_labels) probabilities of one head of `model` on `pixel_values`."""
    if head not in HEAD_CHOICES:
        raise ValueError(f"head={head!r}: expected one of {HEAD_CHOICES}.")
    out = model(pixel_values=pixel_values)
    if head == "sigmoid" and getattr(out, "sigmoid_logits", None) is None:
        raise ValueError("head='sigmoid' needs a DualSigmoidForImageClassification; this model has no sigmoid head.")
    return probabilities(out.sigmoid_logits if head == "sigmoid" else out.logits, head)


@dataclass
class ConfidenceChange:
    """Average Drop (%) = 100/N sum max(0, Y - O) / Y and Increase in Confidence (%) = 100/N sum [O > Y]."""

    drop_sum: float = 0.0
    increase_count: int = 0
    count: int = 0

    def add(self, original: torch.Tensor, explained: torch.Tensor) -> None:
        """Scores Y on the images and O on the explanation images, for the explained classes (B,)."""
        self.drop_sum += float(((original - explained).clamp(min=0) / original).sum())
        self.increase_count += int((explained > original).sum())
        self.count += len(original)

    def merge(self, other: "ConfidenceChange") -> "ConfidenceChange":
        return ConfidenceChange(
            self.drop_sum + other.drop_sum, self.increase_count + other.increase_count, self.count + other.count
        )

    def compute(self) -> dict:
        if self.count == 0:
            raise ValueError("no image was added.")
        return {
            "average_drop": 100 * self.drop_sum / self.count,
            "increase_in_confidence": 100 * self.increase_count / self.count,
        }


def gaussian_blur(pixel_values: torch.Tensor, kernel_size: int = 11, sigma: float = 5.0) -> torch.Tensor:
    """The insertion baseline: a separable Gaussian blur (reflect padding)."""
    x = torch.arange(kernel_size, dtype=pixel_values.dtype, device=pixel_values.device) - kernel_size // 2
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = pixel_values.shape[1]
    padded = F.pad(pixel_values, [kernel_size // 2] * 4, mode="reflect")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


@torch.no_grad()
def insertion_deletion_auc(
    model, pixel_values, maps, targets, head: str = "softmax", steps: int = 32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image (insertion AUC, deletion AUC), RISE style: pixels ranked by saliency, H*W/steps changed per step
    (deletion: to 0, the normalised mean colour; insertion: onto a blurred image); the score is the class
    probability; AUC by the trapezoid rule over the fraction of pixels changed."""
    b, c, h, w = pixel_values.shape
    order = maps.reshape(b, -1).argsort(dim=1, descending=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(b, -1))
    rank = rank.reshape(b, 1, h, w)
    blurred = gaussian_blur(pixel_values)
    per_step = -(-h * w // steps)
    curves = {"insertion": [], "deletion": []}
    for step in range(steps + 1):
        changed = rank < step * per_step
        images = {
            "insertion": torch.where(changed, pixel_values, blurred),
            "deletion": torch.where(changed, torch.zeros_like(pixel_values), pixel_values),
        }
        batch = torch.cat([images["insertion"], images["deletion"]])
        probs = class_probabilities(model, batch, head).gather(1, targets.repeat(2)[:, None])[:, 0]
        curves["insertion"].append(probs[:b])
        curves["deletion"].append(probs[b:])
    aucs = [torch.trapezoid(torch.stack(curves[k], dim=1), dx=1.0 / steps, dim=1) for k in ("insertion", "deletion")]
    return aucs[0], aucs[1]
