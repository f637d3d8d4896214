"""The CAM engine: every method, from either head, in one batched pass (shipped with every checkpoint; torch only).

One forward runs the classifier with the target layer's output swapped for an autograd leaf, so the backward
passes (one per head and target) start there and never enter the backbone below it. Every method is a small
function of what that pass produced; adding one is a function and a registry entry.
"""

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import get_adapter, num_prefix_tokens, resolve_module

logger = logging.getLogger(__name__)
HEADS = ("softmax", "sigmoid")


@dataclass
class CAMPass:
    """What one forward/backward produced, for one head and one target column.

    activations: (B, C, h, w) at the target layer (tokens already on their grid).
    gradients: d(target score)/d(activations), or None when no method needs them.
    head_weight: (B, C) the head's weight row of each sample's target class; head_bias: (B,) (`cam`, `tscam`).
    attentions: the classifier's attention maps (transformers only), or None.
    scorecam_scores: (B, C) target scores of the masked inputs (Score-CAM only), or None.
    truncate: clamp negative channel weights at 0 (the sigmoid branch, by default).
    """

    activations: torch.Tensor
    gradients: torch.Tensor | None
    head_weight: torch.Tensor | None
    head_bias: torch.Tensor | None
    attentions: tuple[torch.Tensor, ...] | None
    scorecam_scores: torch.Tensor | None
    truncate: bool
    prefix_tokens: int = 0


@dataclass(frozen=True)
class CAMMethod:
    """A registered method: its map function and what the shared pass must provide for it."""

    fn: Callable[[CAMPass], torch.Tensor]
    gradients: bool = False
    attentions: bool = False
    masked_inputs: bool = False
    head_weights: bool = False


def _weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bc,bchw->bhw", weights, activations)


def _clamp(weights: torch.Tensor, p: CAMPass) -> torch.Tensor:
    return weights.clamp(min=0) if p.truncate else weights


def cam(p: CAMPass) -> torch.Tensor:
    """Class activation map: each location's share of the target logit, (w . A_xy + b) / (h * w)."""
    h, w = p.activations.shape[-2:]
    return (_weighted_sum(_clamp(p.head_weight, p), p.activations) + p.head_bias[:, None, None]) / (h * w)


def gradcam(p: CAMPass) -> torch.Tensor:
    return _weighted_sum(_clamp(p.gradients.mean(dim=(2, 3)), p), p.activations)


def gradcam_plus_plus(p: CAMPass) -> torch.Tensor:
    grads, acts = p.gradients, p.activations
    grads_2 = grads.pow(2)
    alpha = grads_2 / (2 * grads_2 + acts.sum(dim=(2, 3), keepdim=True) * grads_2 * grads + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return _weighted_sum(_clamp((grads.clamp(min=0) * alpha).sum(dim=(2, 3)), p), acts)


def xgradcam(p: CAMPass) -> torch.Tensor:
    acts = p.activations
    weights = (p.gradients * acts / (acts.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3))
    return _weighted_sum(_clamp(weights, p), acts)


def layercam(p: CAMPass) -> torch.Tensor:
    return (p.gradients.clamp(min=0) * p.activations).sum(dim=1)


def hirescam(p: CAMPass) -> torch.Tensor:
    """Element-wise gradient x activation; with truncation the element-wise weights are clamped too."""
    return (_clamp(p.gradients, p) * p.activations).sum(dim=1)


def eigencam(p: CAMPass) -> torch.Tensor:
    """Projection on the first principal component of the activations, signed to agree with their mean."""
    b, c, h, w = p.activations.shape
    flat = torch.nan_to_num(p.activations).reshape(b, c, h * w).transpose(1, 2)  # (B, hw, C)
    centered = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    projection = torch.einsum("bnc,bc->bn", centered, vh[:, 0])
    sign = torch.sign((projection * flat.mean(dim=2)).sum(dim=1, keepdim=True))
    return (projection * torch.where(sign == 0, torch.ones_like(sign), sign)).reshape(b, h, w)


def scorecam(p: CAMPass) -> torch.Tensor:
    return _weighted_sum(_clamp(torch.softmax(p.scorecam_scores, dim=-1), p), p.activations)


def attention_rollout(p: CAMPass) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020): head-averaged attention plus identity, chained over layers;
    the CLS token's row over the patch tokens."""
    return _cls_to_patches(_rollout(p.attentions), p)


def tscam(p: CAMPass) -> torch.Tensor:
    """TS-CAM style coupling: the head's token map (`cam`) times the CLS token's mean attention to each patch."""
    attention = torch.stack([a.mean(dim=1) for a in p.attentions]).mean(dim=0)  # (B, N, N)
    return cam(p).clamp(min=0) * _cls_to_patches(attention, p)


def _rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    result = None
    for attention in attentions:
        a = attention.mean(dim=1)
        a = a + torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def _cls_to_patches(attention: torch.Tensor, p: CAMPass) -> torch.Tensor:
    b, _, h, w = p.activations.shape
    return attention[:, 0, p.prefix_tokens :].reshape(b, h, w)


CAM_METHODS: dict[str, CAMMethod] = {
    "cam": CAMMethod(cam, head_weights=True),
    "gradcam": CAMMethod(gradcam, gradients=True),
    "gradcam++": CAMMethod(gradcam_plus_plus, gradients=True),
    "xgradcam": CAMMethod(xgradcam, gradients=True),
    "layercam": CAMMethod(layercam, gradients=True),
    "hirescam": CAMMethod(hirescam, gradients=True),
    "scorecam": CAMMethod(scorecam, masked_inputs=True),
    "eigencam": CAMMethod(eigencam),
    "rollout": CAMMethod(attention_rollout, attentions=True),
    "tscam": CAMMethod(tscam, attentions=True, head_weights=True),
}


@dataclass
class CAMOutput:
    """Maps keyed by (method, head): (B, H, W), or (B, K, H, W) for K targets per image.

    `targets` holds the class ids explained; `raw_maps` (on request) the maps at the layer's resolution, after
    ReLU and before upsampling and normalisation.
    """

    maps: dict[tuple[str, str], torch.Tensor]
    targets: torch.Tensor
    raw_maps: dict[tuple[str, str], torch.Tensor] | None = None
    target_layer: str = ""
    logits: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, key: tuple[str, str]) -> torch.Tensor:
        return self.maps[key]

    def keys(self):
        return self.maps.keys()

    def items(self):
        return self.maps.items()


def explain(
    model: nn.Module,
    pixel_values: torch.Tensor,
    methods: Sequence[str] = ("gradcam",),
    heads: Sequence[str] | None = None,
    targets: int | Sequence[int] | torch.Tensor | None = None,
    top_k: int | None = None,
    target_layer: str | nn.Module | None = None,
    normalize: bool = True,
    truncate_negative_weights: bool | None = None,
    upsample: str = "bilinear",
    return_raw: bool = False,
    scorecam_batch_size: int = 64,
    interpolate_pos_encoding: bool | None = None,
) -> CAMOutput:
    """Class activation maps of `methods` x `heads` for `pixel_values` (B, 3, H, W), from one shared pass.

    Args:
        model: a `DualSigmoidForImageClassification` (heads "sigmoid" and "softmax"; default "sigmoid") or a
            plain supported `*ForImageClassification` (head "softmax" only).
        methods: names in `CAM_METHODS`.
        targets: class ids to explain: one for all images, one per image (B,), or several per image (B, K).
            Default: the softmax head's prediction (or its `top_k` classes).
        target_layer: a module or dotted name (negative indices allowed); default: the family's CAM layer.
        normalize: min-max each map to [0, 1] (NaN or constant maps -> zeros), as in WSOL evaluation.
        truncate_negative_weights: clamp negative channel weights of the sigmoid head at 0; default
            `model.config.truncate_negative_weights`. The softmax head is never clamped.
        upsample: interpolation to the input size: "bilinear" or "bicubic" (the WSOL reference).
        return_raw: also return the maps at the layer's resolution.
        scorecam_batch_size: masked images per forward in Score-CAM.
        interpolate_pos_encoding: passed to ViT-family models, for inputs of another size than they were trained on.
    """
    with torch.inference_mode(False):  # CAMs need autograd, even when the caller runs in inference mode
        session = _Session(model, pixel_values, methods, heads, target_layer, truncate_negative_weights)
        return session.run(
            targets, top_k, normalize, upsample, return_raw, scorecam_batch_size, interpolate_pos_encoding
        )


class _Session:
    """Validated settings of one `explain` call and the pass that serves them."""

    def __init__(self, model, pixel_values, methods, heads, target_layer, truncate):
        self.model = model
        self.dual = hasattr(model, "sigmoid_head")
        self.classifier = model.classifier if self.dual else model
        self.adapter = get_adapter(self.classifier)
        self.methods = _check_methods(methods)
        self.heads = _check_heads(heads, self.dual)
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            seen = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a (batch, channels, height, width) tensor; got {seen}.")
        self.pixel_values = pixel_values.clone() if pixel_values.is_inference() else pixel_values
        if any(CAM_METHODS[m].attentions for m in self.methods) and not (
            self.adapter.has_attentions and self.adapter.fixed_prefix_tokens > 0
        ):
            raise ValueError(
                f"methods {[m for m in self.methods if CAM_METHODS[m].attentions]} need a ViT-family model with a "
                f"CLS token (ViT, DeiT, BEiT, Dinov2); {type(self.classifier).__name__} has none."
            )
        self.layer_name, self.layer = _resolve_layer(self.classifier, self.adapter, target_layer)
        default_truncate = getattr(getattr(model, "config", None), "truncate_negative_weights", True)
        self.truncate = default_truncate if truncate is None else truncate
        self.prefix_tokens = num_prefix_tokens(self.adapter, self.classifier.config) if self.adapter.tokens else 0

    def run(self, targets, top_k, normalize, upsample, return_raw, scorecam_batch_size, interpolate_pos_encoding):
        needs = {
            k: any(getattr(CAM_METHODS[m], k) for m in self.methods)
            for k in ("gradients", "attentions", "head_weights")
        }
        forward_kwargs = (
            {} if interpolate_pos_encoding is None else {"interpolate_pos_encoding": interpolate_pos_encoding}
        )
        with _eager_attention(self.classifier, needs["attentions"]):
            acts, logits, attentions = self._forward(needs, forward_kwargs)
        targets, several = _resolve_targets(targets, top_k, logits["softmax"])
        grid = self._to_grid(acts.detach())
        scores = self._scorecam_scores(grid, targets, scorecam_batch_size, forward_kwargs)
        maps, raw = {}, {}
        for head in self.heads:
            weight, bias = _head_linear(self.model, head, grid.shape[1]) if needs["head_weights"] else (None, None)
            per_target = {m: [] for m in self.methods}
            for k in range(targets.shape[1]):
                target = targets[:, k]
                gradients = None
                if needs["gradients"]:
                    score = logits[head].gather(1, target[:, None]).sum()
                    (gradients,) = torch.autograd.grad(score, acts, retain_graph=True)
                    gradients = self._to_grid(gradients)
                p = CAMPass(
                    activations=grid,
                    gradients=gradients,
                    head_weight=None if weight is None else weight[target],
                    head_bias=None if bias is None else bias[target],
                    attentions=attentions,
                    scorecam_scores=None if scores is None else scores[head][:, k],
                    truncate=self.truncate and head == "sigmoid",
                    prefix_tokens=self.prefix_tokens,
                )
                for method in self.methods:
                    per_target[method].append(CAM_METHODS[method].fn(p).detach().clamp(min=0))
            for method, column in per_target.items():
                low = torch.stack(column, dim=1)  # (B, K, h, w)
                raw[(method, head)] = low
                maps[(method, head)] = resize_maps(low, self.pixel_values.shape[-2:], upsample, normalize)
        if not several:
            maps = {k: v[:, 0] for k, v in maps.items()}
            raw = {k: v[:, 0] for k, v in raw.items()}
        return CAMOutput(
            maps=maps,
            targets=targets if several else targets[:, 0],
            raw_maps=raw if return_raw else None,
            target_layer=self.layer_name,
            logits={h: v.detach() for h, v in logits.items()},
        )

    def _forward(self, needs, forward_kwargs):
        """One forward with the layer's output swapped for an autograd leaf; returns it, both heads' logits and
        the attentions."""
        captured = {}

        def swap_in_leaf(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            leaf = tensor.detach().requires_grad_(needs["gradients"])
            captured["acts"] = leaf
            # Everything below this layer ran without autograd; from here on the graph is recorded,
            # so backward passes start at the leaf. (The surrounding no_grad restores the mode afterwards.)
            torch.set_grad_enabled(needs["gradients"])
            return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

        handle = self.layer.register_forward_hook(swap_in_leaf)
        try:
            with torch.no_grad():
                kwargs = dict(forward_kwargs, output_attentions=True) if needs["attentions"] else forward_kwargs
                out = self.model(pixel_values=self.pixel_values, **kwargs)
        finally:
            handle.remove()
        if "acts" not in captured:
            raise ValueError(f"target layer '{self.layer_name}' did not run in the forward pass; pick another layer.")
        logits = {"softmax": out.logits}
        if self.dual:
            logits["sigmoid"] = out.sigmoid_logits
        return captured["acts"], logits, getattr(out, "attentions", None)

    def _to_grid(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) from a feature map, or from tokens (B, N, C) without their prefix tokens."""
        if tensor.ndim == 4:
            return tensor
        if tensor.ndim != 3:
            raise ValueError(
                f"target layer '{self.layer_name}' outputs shape {tuple(tensor.shape)}; expected a feature map "
                "(B, C, h, w) or tokens (B, N, C)."
            )
        patches = tensor[:, self.prefix_tokens :]
        h, w = _token_grid(patches.shape[1], *self.pixel_values.shape[-2:])
        return patches.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], h, w)

    @torch.no_grad()
    def _scorecam_scores(self, grid, targets, batch_size, forward_kwargs) -> dict | None:
        """Target scores of each head for every image masked by each (upsampled, min-max scaled) channel."""
        if not any(CAM_METHODS[m].masked_inputs for m in self.methods):
            return None
        b, c = grid.shape[:2]
        size = self.pixel_values.shape[-2:]
        masks = F.interpolate(grid, size=size, mode="bilinear", align_corners=True)
        flat = masks.reshape(b, c, -1)
        low, high = flat.min(-1, keepdim=True)[0], flat.max(-1, keepdim=True)[0]
        masks = ((flat - low) / torch.where(high > low, high - low, torch.ones_like(high))).reshape(masks.shape)
        scores = {head: torch.empty(b, targets.shape[1], c, device=grid.device) for head in self.heads}
        for i in range(b):
            for start in range(0, c, batch_size):
                batch = self.pixel_values[i : i + 1] * masks[i, start : start + batch_size, None]
                out = self.model(pixel_values=batch, **forward_kwargs)
                outputs = {"softmax": out.logits, "sigmoid": getattr(out, "sigmoid_logits", None)}
                for head in self.heads:
                    scores[head][i, :, start : start + batch_size] = outputs[head][:, targets[i]].T
        return scores


def resize_maps(maps: torch.Tensor, size, upsample: str = "bilinear", normalize: bool = True) -> torch.Tensor:
    """Maps (..., h, w) resized to `size` (H, W) and, by default, min-max normalised (see `normalize_maps`)."""
    if upsample not in ("bilinear", "bicubic"):
        raise ValueError(f"upsample={upsample!r}: expected 'bilinear' or 'bicubic'.")
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    up = F.interpolate(maps.reshape(-1, 1, h, w).float(), size=tuple(size), mode=upsample, align_corners=False)
    up = up.reshape(*lead, *size)
    return normalize_maps(up) if normalize else up


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max each map (last two dims) to [0, 1]; maps with NaN, or constant maps, become all zeros (WSOL)."""
    flat = maps.flatten(-2)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    bad = torch.isnan(flat).any(-1, keepdim=True) | (high <= low)
    scaled = (flat - low) / torch.where(bad, torch.ones_like(high), high - low)
    return torch.where(bad, torch.zeros_like(flat), scaled).reshape(maps.shape)


def _token_grid(num_tokens: int, height: int, width: int) -> tuple[int, int]:
    h = max(1, round(math.sqrt(num_tokens * height / width)))
    for candidate in sorted(range(max(1, h - 2), h + 3), key=lambda x: abs(x - h)):
        if num_tokens % candidate == 0:
            return candidate, num_tokens // candidate
    raise ValueError(f"cannot lay {num_tokens} patch tokens on a grid for a {height}x{width} input.")


def _check_methods(methods) -> list[str]:
    methods = [methods] if isinstance(methods, str) else list(methods)
    unknown = [m for m in methods if m not in CAM_METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown CAM method(s) {unknown or methods}; available: {', '.join(CAM_METHODS)}.")
    return methods


def _check_heads(heads, dual: bool) -> list[str]:
    heads = (
        (["sigmoid"] if dual else ["softmax"])
        if heads is None
        else ([heads] if isinstance(heads, str) else list(heads))
    )
    unknown = [h for h in heads if h not in HEADS]
    if unknown or not heads:
        raise ValueError(f"unknown head(s) {unknown or heads}; expected 'sigmoid' and/or 'softmax'.")
    if not dual and "sigmoid" in heads:
        raise ValueError(
            "this is a plain classifier with only its softmax head; convert it with "
            "DualSigmoidForImageClassification.from_classifier(model) to get the sigmoid head."
        )
    return heads


def _resolve_layer(classifier, adapter, target_layer) -> tuple[str, nn.Module]:
    if isinstance(target_layer, nn.Module):
        for name, module in classifier.named_modules():
            if module is target_layer:
                return name, module
        raise ValueError(f"target_layer {type(target_layer).__name__} is not a module of {type(classifier).__name__}.")
    name = target_layer or adapter.cam_layer or _last_feature_map(classifier)
    if name.startswith("classifier.") and not hasattr(classifier, "classifier"):
        name = name[len("classifier.") :]
    return name, resolve_module(classifier, name)


def _last_feature_map(classifier) -> str:
    """Name of the last module (in forward order) that outputs a 4-D feature map larger than 1x1 (timm models)."""
    order = []
    hooks = [
        m.register_forward_hook(
            lambda mod, a, out, n=n: (
                order.append(n)
                if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1
                else None
            )
        )
        for n, m in classifier.named_modules()
        if n
    ]
    try:
        size = getattr(classifier.config, "image_size", None) or 64
        size = size if isinstance(size, int) else size[0]
        with torch.no_grad():
            classifier(pixel_values=torch.zeros(1, 3, size, size, device=classifier.device))
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ValueError(f"{type(classifier).__name__} has no 4-D feature map; pass target_layer explicitly.")
    return order[-1]


def _resolve_targets(targets, top_k, softmax_logits) -> tuple[torch.Tensor, bool]:
    """(B, K) class ids, and whether the caller asked for several per image."""
    batch, num_labels = softmax_logits.shape
    device = softmax_logits.device
    if targets is not None and top_k is not None:
        raise ValueError("pass either targets or top_k, not both.")
    if targets is None:
        k = top_k or 1
        if not 1 <= k <= num_labels:
            raise ValueError(f"top_k={top_k} must lie in [1, {num_labels}].")
        return softmax_logits.detach().topk(k, dim=-1).indices, top_k is not None
    targets = torch.as_tensor(targets, device=device, dtype=torch.long)
    several = targets.ndim == 2
    if targets.ndim == 0:
        targets = targets.expand(batch)
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.shape[0] != batch or targets.ndim != 2:
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match the batch of {batch} images.")
    if targets.min() < 0 or targets.max() >= num_labels:
        raise ValueError(
            f"targets must lie in [0, {num_labels}); got {targets.min().item()} to {targets.max().item()}."
        )
    return targets, several


def _head_linear(model, head: str, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight (K, C), bias (K,)) of a head's last linear layer, averaged over several heads; for heads that read
    [CLS, mean of patches] (Dinov2) the patch half."""
    modules = (
        list(model.sigmoid_head)
        if head == "sigmoid"
        else (
            model.softmax_heads
            if hasattr(model, "softmax_heads")
            else [resolve_module(model, p) for p in get_adapter(model).head_paths]
        )
    )
    linears = [[m for m in h.modules() if isinstance(m, nn.Linear)][-1] for h in modules]
    weight = torch.stack([lin.weight for lin in linears]).mean(0).detach()
    bias = torch.stack([lin.bias if lin.bias is not None else torch.zeros_like(lin.weight[:, 0]) for lin in linears])
    if weight.shape[1] == 2 * channels:
        weight = weight[:, channels:]
    elif weight.shape[1] != channels:
        raise ValueError(
            f"the {head} head reads {weight.shape[1]} features but the target layer has {channels} channels; "
            "'cam' and 'tscam' need the layer that feeds the head (the default CAM layer)."
        )
    return weight, bias.mean(0).detach()


class _eager_attention:
    """Switch a transformers model to eager attention while attention maps are needed, then switch back."""

    def __init__(self, classifier, needed: bool):
        self.classifier, self.needed, self.previous = classifier, needed, None

    def __enter__(self):
        current = getattr(self.classifier.config, "_attn_implementation", None)
        if self.needed and current not in (None, "eager"):
            logger.warning(
                "Attention-based CAM needs attention maps: switching %s from %s to eager attention for this call.",
                type(self.classifier).__name__,
                current,
            )
            self.previous = current
            self.classifier.set_attn_implementation("eager")

    def __exit__(self, *exc):
        if self.previous is not None:
            self.classifier.set_attn_implementation(self.previous)
