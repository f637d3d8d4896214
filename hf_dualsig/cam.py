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


class CAMPass:
    """What one shared forward/backward produced, for one head and one target column.

    Always present: `activations` (B, C, h, w) at the target layer (tokens already on their grid, float32),
    `truncate` (clamp negative channel weights: the sigmoid branch, by default) and `prefix_tokens`. Every quantity
    a method declares in its registry row (`needs`) is an attribute too, made by its producer in `PRODUCERS`:
    `gradients` (B, C, h, w), `head_weight` (B, C) (the head's weight row of each sample's target class),
    `attentions` (the classifier's attention maps), `masked_scores` (B, C) (target scores of the masked inputs).
    """

    def __init__(self, activations: torch.Tensor, truncate: bool, prefix_tokens: int, **quantities):
        self.activations, self.truncate, self.prefix_tokens = activations, truncate, prefix_tokens
        self.__dict__.update(quantities)


@dataclass(frozen=True)
class CAMMethod:
    """A registered method.

    fn: CAMPass -> channel weights (B, C), or element-wise weights (B, C, h, w), when `output="weights"`: the engine
        clamps them at 0 for the sigmoid branch (truncation) and sums weights x activations over channels;
        or -> a finished map (B, h, w) when `output="map"`.
    needs: the quantities of the pass it reads (keys of `PRODUCERS`).
    reference: how the WSOL reference post-processes its map: "signed" (CAM: no ReLU, bicubic resize) or "relu"
        (pytorch-grad-cam: ReLU, bilinear resize); both end in a min-max.
    """

    fn: Callable[[CAMPass], torch.Tensor]
    output: str = "weights"
    needs: tuple[str, ...] = ()
    reference: str = "relu"

    def __post_init__(self):
        if self.output not in ("weights", "map"):
            raise ValueError(f"CAMMethod output={self.output!r}: expected 'weights' or 'map'.")
        unknown = [n for n in self.needs if n not in PRODUCERS]
        if unknown:
            raise ValueError(f"CAMMethod needs {unknown}: unknown quantities; known: {', '.join(PRODUCERS)}.")
        if self.reference not in RECIPES["reference"]:
            raise ValueError(f"CAMMethod reference={self.reference!r}: expected one of {list(RECIPES['reference'])}.")


def cam(p: CAMPass) -> torch.Tensor:
    """CAM (Zhou et al., CVPR 2016): the target class's head weights; map = mean over channels of w_c A_c (no bias,
    as wsolevaluation and the authors compute it)."""
    return p.head_weight / p.activations.shape[1]


def gradcam(p: CAMPass) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al., ICCV 2017): w_c = spatial mean of d score / d A_c."""
    return p.gradients.mean(dim=(2, 3))


def gradcam_plus_plus(p: CAMPass) -> torch.Tensor:
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018): w_c = sum_xy alpha_xy relu(g_xy), with
    alpha = g^2 / (2 g^2 + sum(A) g^3) (pytorch-grad-cam's exponential-free form)."""
    grads, acts = p.gradients, p.activations
    grads_2 = grads.pow(2)
    alpha = grads_2 / (2 * grads_2 + acts.sum(dim=(2, 3), keepdim=True) * grads_2 * grads + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return (grads.clamp(min=0) * alpha).sum(dim=(2, 3))


def xgradcam(p: CAMPass) -> torch.Tensor:
    """XGrad-CAM (Fu et al., BMVC 2020): w_c = sum_xy g_xy A_xy / sum_xy A_xy."""
    acts = p.activations
    return (p.gradients * acts / (acts.sum(dim=(2, 3), keepdim=True) + 1e-7)).sum(dim=(2, 3))


def layercam(p: CAMPass) -> torch.Tensor:
    """LayerCAM (Jiang et al., TIP 2021): element-wise weights relu(g_xy)."""
    return p.gradients.clamp(min=0)


def hirescam(p: CAMPass) -> torch.Tensor:
    """HiResCAM (Draelos & Carin, 2020): element-wise weights g_xy (clamped at 0 too when truncating)."""
    return p.gradients


def scorecam(p: CAMPass) -> torch.Tensor:
    """Score-CAM (Wang et al., CVPRW 2020): w = softmax over channels of the target score of the image masked by
    each (upsampled, min-max scaled) channel."""
    return torch.softmax(p.masked_scores, dim=-1)


def eigencam(p: CAMPass) -> torch.Tensor:
    """Eigen-CAM (Muhammad & Yeasin, IJCNN 2020): projection on the first principal component of the activations,
    signed to agree with their mean (class-agnostic)."""
    b, c, h, w = p.activations.shape
    flat = torch.nan_to_num(p.activations).reshape(b, c, h * w).transpose(1, 2)  # (B, hw, C)
    centered = flat - flat.mean(dim=1, keepdim=True)
    _, _, vh = torch.linalg.svd(centered, full_matrices=False)
    projection = torch.einsum("bnc,bc->bn", centered, vh[:, 0])
    sign = torch.sign((projection * flat.mean(dim=2)).sum(dim=1, keepdim=True))
    return (projection * torch.where(sign == 0, torch.ones_like(sign), sign)).reshape(b, h, w)


def attention_rollout(p: CAMPass) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, ACL 2020): head-averaged attention plus identity, chained over layers;
    the CLS token's row over the patch tokens (class-agnostic)."""
    return _cls_to_patches(_rollout(p.attentions), p)


def tscam(p: CAMPass) -> torch.Tensor:
    """TS-CAM style coupling (Gao et al., ICCV 2021): the head's token map (CAM, after ReLU) times the CLS token's
    mean attention to each patch."""
    attention = torch.stack([a.mean(dim=1) for a in p.attentions]).mean(dim=0)  # (B, N, N)
    return weighted_sum(_clamp(cam(p), p), p.activations).clamp(min=0) * _cls_to_patches(attention, p)


def _rollout(attentions: Sequence[torch.Tensor]) -> torch.Tensor:
    result = None
    for attention in attentions:
        a = attention.float().mean(dim=1)
        a = a + torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)
        a = a / a.sum(dim=-1, keepdim=True)
        result = a if result is None else a @ result
    return result


def _cls_to_patches(attention: torch.Tensor, p: CAMPass) -> torch.Tensor:
    b, _, h, w = p.activations.shape
    return attention[:, 0, p.prefix_tokens :].float().reshape(b, h, w)


def _clamp(weights: torch.Tensor, p: CAMPass) -> torch.Tensor:
    return weights.clamp(min=0) if p.truncate else weights


def weighted_sum(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """sum_c w_c A_c for channel weights (B, C) or element-wise weights (B, C, h, w)."""
    if weights.ndim == 2:
        return torch.einsum("bc,bchw->bhw", weights, activations)
    return (weights * activations).sum(dim=1)


def _gradients(session: "_Session", head: str, k: int) -> torch.Tensor:
    score = session.logits[head].gather(1, session.targets[:, k : k + 1]).sum()
    (gradients,) = torch.autograd.grad(score, session.leaf, retain_graph=True)
    return session.to_grid(gradients).float()


def _head_weight(session: "_Session", head: str, k: int) -> torch.Tensor:
    return session.head_weights(head)[session.targets[:, k]]


def _attentions(session: "_Session", head: str, k: int):
    return session.attentions


def _masked_scores(session: "_Session", head: str, k: int) -> torch.Tensor:
    return session.masked_scores()[head][:, k]


# Producers of the quantities methods may need: (session, head, target column) -> value.
PRODUCERS: dict[str, Callable] = {
    "gradients": _gradients,
    "head_weight": _head_weight,
    "attentions": _attentions,
    "masked_scores": _masked_scores,
}

# How a raw map becomes the returned map: ReLU or not, then the resize mode, then min-max.
RECIPES = {
    "display": {"signed": (True, None), "relu": (True, None)},  # None: the `upsample` argument
    "reference": {"signed": (False, "bicubic"), "relu": (True, "bilinear")},
}
RECIPE_DESCRIPTIONS = {
    "signed": "mean over channels of w.A, no bias, no ReLU; bicubic resize (OpenCV INTER_CUBIC); min-max",
    "relu": "ReLU; min-max; bilinear resize (OpenCV INTER_LINEAR); min-max (pytorch-grad-cam)",
}

CAM_METHODS: dict[str, CAMMethod] = {
    "cam": CAMMethod(cam, needs=("head_weight",), reference="signed"),
    "gradcam": CAMMethod(gradcam, needs=("gradients",)),
    "gradcam++": CAMMethod(gradcam_plus_plus, needs=("gradients",)),
    "xgradcam": CAMMethod(xgradcam, needs=("gradients",)),
    "layercam": CAMMethod(layercam, needs=("gradients",)),
    "hirescam": CAMMethod(hirescam, needs=("gradients",)),
    "scorecam": CAMMethod(scorecam, needs=("masked_scores",)),
    "eigencam": CAMMethod(eigencam, output="map"),
    "rollout": CAMMethod(attention_rollout, output="map", needs=("attentions",)),
    "tscam": CAMMethod(tscam, output="map", needs=("attentions", "head_weight")),
}


class HeadLogits(nn.Module):
    """One head's logits as a plain `pixel_values -> logits` module, for tools that expect one (pytorch-grad-cam)."""

    def __init__(self, model: nn.Module, head: str = "softmax"):
        super().__init__()
        if head not in available_heads(model):
            raise ValueError(f"head={head!r}: this model has {available_heads(model)}.")
        self.model, self.head = model, head

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.model(pixel_values=pixel_values)
        return out.sigmoid_logits if self.head == "sigmoid" else out.logits


def available_heads(model: nn.Module) -> tuple[str, ...]:
    """The heads a model can be explained with: both for a dual model, the softmax head for a plain classifier."""
    return HEADS if hasattr(model, "sigmoid_head") else ("softmax",)


def reference_maps(method: str, raw: torch.Tensor, size) -> torch.Tensor:
    """Raw maps (..., h, w) of `method` finished as the WSOL reference does it (recipe "reference"), at `size`."""
    relu, mode = RECIPES["reference"][CAM_METHODS[method].reference]
    return resize_maps(raw.clamp(min=0) if relu else raw, size, mode)


def map_recipe(method: str) -> str:
    """How the evaluation (recipe "reference") post-processes `method`'s maps, in words."""
    return RECIPE_DESCRIPTIONS[CAM_METHODS[method].reference]


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
    recipe: str = "display",
    return_raw: bool = False,
    scorecam_batch_size: int = 64,
    interpolate_pos_encoding: bool | None = None,
) -> CAMOutput:
    """Class activation maps of `methods` x `heads` for `pixel_values` (B, 3, H, W), from one shared pass.

    Args:
        model: a `DualSigmoidForImageClassification` (heads "sigmoid" and "softmax"; default "sigmoid") or a
            plain supported `*ForImageClassification` (head "softmax" only). It comes back as it was (train/eval
            mode of every module, attention implementation, buffers); the pass runs in eval mode.
        methods: names in `CAM_METHODS`.
        targets: class ids to explain: one for all images, one per image (B,), or several per image (B, K).
            Default: the softmax head's prediction (or its `top_k` classes).
        target_layer: a module or dotted name (negative indices allowed); default: the family's CAM layer.
        normalize: min-max each map to [0, 1] (NaN or constant maps -> zeros), as in WSOL evaluation.
        truncate_negative_weights: clamp negative channel weights of the sigmoid head at 0; default
            `model.config.truncate_negative_weights`. The softmax head is never clamped.
        upsample: interpolation to the input size with recipe "display": "bilinear" or "bicubic".
        recipe: "display" (every map after ReLU, `upsample`) or "reference" (as the WSOL reference evaluates
            them: CAM signed and bicubic, the other methods ReLU and bilinear; see `map_recipe`).
        return_raw: also return the maps at the layer's resolution, before ReLU, resizing and normalisation.
        scorecam_batch_size: masked images per forward in Score-CAM.
        interpolate_pos_encoding: passed to ViT-family models, for inputs of another size than they were trained on.
    """
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r}: expected one of {list(RECIPES)}.")
    if upsample not in ("bilinear", "bicubic"):
        raise ValueError(f"upsample={upsample!r}: expected 'bilinear' or 'bicubic'.")
    if not isinstance(scorecam_batch_size, int) or scorecam_batch_size < 1:
        raise ValueError(f"scorecam_batch_size={scorecam_batch_size!r}: expected a positive integer.")
    session = _Session(model, pixel_values, methods, heads, target_layer, truncate_negative_weights)
    with torch.inference_mode(False), _caller_state_restored(session.model):  # CAMs need autograd
        session.forward(targets, top_k, scorecam_batch_size, interpolate_pos_encoding)
        raw = session.raw_maps()
    maps = {}
    for (method, head), low in raw.items():
        relu, mode = RECIPES[recipe][CAM_METHODS[method].reference]
        maps[(method, head)] = resize_maps(low.clamp(min=0) if relu else low, session.size, mode or upsample, normalize)
    if not session.several:
        maps = {k: v[:, 0] for k, v in maps.items()}
        raw = {k: v[:, 0] for k, v in raw.items()}
    return CAMOutput(
        maps=maps,
        targets=session.targets if session.several else session.targets[:, 0],
        raw_maps=raw if return_raw else None,
        target_layer=session.layer_name,
        logits={h: v.detach() for h, v in session.logits.items()},
    )


class _Session:
    """Validated settings of one `explain` call, and the shared pass that serves all its methods and heads."""

    def __init__(self, model, pixel_values, methods, heads, target_layer, truncate):
        self.model = model
        self.dual = "sigmoid" in available_heads(model)
        self.classifier = model.classifier if self.dual else model
        self.adapter = get_adapter(self.classifier)
        self.methods = _check_methods(methods)
        self.heads = _check_heads(heads, self.dual)
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            seen = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(f"pixel_values must be a (batch, channels, height, width) tensor; got {seen}.")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values has dtype {pixel_values.dtype}; pass normalised floating-point images (the model's "
                "image processor with return_tensors='pt' gives them)."
            )
        dtype = next(self.classifier.parameters()).dtype
        self.pixel_values = pixel_values.detach().clone().to(dtype)  # the caller's tensor is never touched
        self.size = tuple(pixel_values.shape[-2:])
        self.needs = {n for m in self.methods for n in CAM_METHODS[m].needs}
        if "attentions" in self.needs and not (self.adapter.has_attentions and self.adapter.fixed_prefix_tokens > 0):
            raise ValueError(
                f"methods {[m for m in self.methods if 'attentions' in CAM_METHODS[m].needs]} need a ViT-family "
                f"model with a CLS token (ViT, DeiT, BEiT, Dinov2); {type(self.classifier).__name__} has none."
            )
        self.layer_name, self.layer = _resolve_layer(self.classifier, self.adapter, target_layer)
        default_truncate = getattr(getattr(model, "config", None), "truncate_negative_weights", True)
        self.truncate = default_truncate if truncate is None else truncate
        self.prefix_tokens = num_prefix_tokens(self.adapter, self.classifier.config) if self.adapter.tokens else 0
        self._cache = {}

    def forward(self, targets, top_k, scorecam_batch_size, interpolate_pos_encoding) -> None:
        """One forward with the layer's output swapped for an autograd leaf, so backward passes start there."""
        self.forward_kwargs = (
            {} if interpolate_pos_encoding is None else {"interpolate_pos_encoding": interpolate_pos_encoding}
        )
        self.scorecam_batch_size = scorecam_batch_size
        captured = {}
        wants_grad = "gradients" in self.needs

        def swap_in_leaf(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            leaf = tensor.detach().requires_grad_(wants_grad)
            captured["leaf"] = leaf
            # Everything below this layer ran without autograd; from here on the graph is recorded.
            # (The surrounding no_grad restores the mode afterwards.)
            torch.set_grad_enabled(wants_grad)
            return (leaf, *output[1:]) if isinstance(output, tuple) else leaf

        handle = self.layer.register_forward_hook(swap_in_leaf)
        try:
            with torch.no_grad(), _eager_attention(self.classifier, "attentions" in self.needs):
                kwargs = dict(self.forward_kwargs)
                if "attentions" in self.needs:
                    kwargs["output_attentions"] = True
                out = self.model(pixel_values=self.pixel_values, **kwargs)
        finally:
            handle.remove()
        if "leaf" not in captured:
            raise ValueError(f"target layer '{self.layer_name}' did not run in the forward pass; pick another layer.")
        self.leaf = captured["leaf"]
        self.logits = {"softmax": out.logits}
        if self.dual:
            self.logits["sigmoid"] = out.sigmoid_logits
        self.attentions = getattr(out, "attentions", None)
        self.targets, self.several = _resolve_targets(targets, top_k, self.logits["softmax"])
        self.grid = self.to_grid(self.leaf.detach()).float()

    def raw_maps(self) -> dict[tuple[str, str], torch.Tensor]:
        """(method, head) -> (B, K, h, w) maps at the layer's resolution, before any ReLU."""
        columns = {(m, h): [] for h in self.heads for m in self.methods}
        for head in self.heads:
            for k in range(self.targets.shape[1]):
                quantities = {name: PRODUCERS[name](self, head, k) for name in sorted(self.needs)}
                p = CAMPass(self.grid, self.truncate and head == "sigmoid", self.prefix_tokens, **quantities)
                for method in self.methods:
                    spec = CAM_METHODS[method]
                    result = spec.fn(p)
                    if spec.output == "weights":
                        result = weighted_sum(_clamp(result, p), p.activations)
                    columns[(method, head)].append(result.detach().float())
        return {key: torch.stack(column, dim=1) for key, column in columns.items()}

    def to_grid(self, tensor: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) from a feature map, or from tokens (B, N, C) without their prefix tokens."""
        if tensor.ndim == 4:
            return tensor
        if tensor.ndim != 3:
            raise ValueError(
                f"target layer '{self.layer_name}' outputs shape {tuple(tensor.shape)}; expected a feature map "
                "(B, C, h, w) or tokens (B, N, C)."
            )
        patches = tensor[:, self.prefix_tokens :]
        h, w = _token_grid(patches.shape[1], *self.size)
        return patches.transpose(1, 2).reshape(tensor.shape[0], tensor.shape[2], h, w)

    def head_weights(self, head: str) -> torch.Tensor:
        """(num_labels, C) weight of the head's last linear layer (cached)."""
        if ("weights", head) not in self._cache:
            self._cache[("weights", head)] = _head_linear(self.model, head, self.grid.shape[1]).float()
        return self._cache[("weights", head)]

    @torch.no_grad()
    def masked_scores(self) -> dict[str, torch.Tensor]:
        """Per head, (B, K, C) target scores of every image masked by each (upsampled, min-max scaled) channel
        (computed once for all heads and targets)."""
        if "masked" in self._cache:
            return self._cache["masked"]
        grid, targets = self.grid, self.targets
        b, c = grid.shape[:2]
        masks = normalize_maps(F.interpolate(grid, size=self.size, mode="bilinear", align_corners=True))
        masks = masks.to(self.pixel_values.dtype)
        scores = {head: torch.empty(b, targets.shape[1], c, device=grid.device) for head in self.heads}
        for i in range(b):
            for start in range(0, c, self.scorecam_batch_size):
                batch = self.pixel_values[i : i + 1] * masks[i, start : start + self.scorecam_batch_size, None]
                out = self.model(pixel_values=batch, **self.forward_kwargs)
                outputs = {"softmax": out.logits, "sigmoid": getattr(out, "sigmoid_logits", None)}
                for head in self.heads:
                    scores[head][i, :, start : start + self.scorecam_batch_size] = outputs[head][:, targets[i]].T.float()
        self._cache["masked"] = scores
        return scores


def resize_maps(maps: torch.Tensor, size, upsample: str = "bilinear", normalize: bool = True) -> torch.Tensor:
    """Maps (..., h, w) resized to `size` (H, W) like OpenCV's INTER_LINEAR / INTER_CUBIC (half-pixel centres,
    a = -0.75, replicated borders) and, by default, min-max normalised (see `normalize_maps`). A constant or NaN
    map becomes all zeros (decided before resizing, so interpolation noise cannot revive it)."""
    if upsample not in ("bilinear", "bicubic"):
        raise ValueError(f"upsample={upsample!r}: expected 'bilinear' or 'bicubic'.")
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(-1, 1, h, w).float()
    low, high = flat.amin(dim=(2, 3), keepdim=True), flat.amax(dim=(2, 3), keepdim=True)
    bad = torch.isnan(flat).any(dim=(2, 3), keepdim=True) | (high <= low)
    up = F.interpolate(torch.where(bad, torch.zeros_like(flat), flat), size=tuple(size), mode=upsample, align_corners=False)
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
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_labels):
            raise ValueError(f"top_k={top_k!r} must be an integer in [1, {num_labels}].")
        return softmax_logits.detach().topk(top_k or 1, dim=-1).indices, top_k is not None
    as_tensor = torch.as_tensor(targets)
    if as_tensor.dtype == torch.bool or as_tensor.is_floating_point() or as_tensor.is_complex():
        raise ValueError(f"targets must be integer class ids; got {targets!r} ({as_tensor.dtype}).")
    targets = as_tensor.to(device=device, dtype=torch.long)
    several = targets.ndim == 2
    if targets.ndim == 0:
        targets = targets.expand(batch)
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.shape[0] != batch or targets.ndim != 2 or targets.shape[1] == 0:
        raise ValueError(f"targets of shape {tuple(targets.shape)} do not match the batch of {batch} images.")
    if targets.min() < 0 or targets.max() >= num_labels:
        raise ValueError(
            f"targets must lie in [0, {num_labels}); got {targets.min().item()} to {targets.max().item()}."
        )
    return targets, several


def _head_linear(model, head: str, channels: int) -> torch.Tensor:
    """Weight (K, C) of a head's last linear layer, averaged over several heads; for heads that read
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
    if weight.shape[1] == 2 * channels:
        weight = weight[:, channels:]
    elif weight.shape[1] != channels:
        raise ValueError(
            f"the {head} head reads {weight.shape[1]} features but the target layer has {channels} channels; "
            "'cam' and 'tscam' need the layer that feeds the head (the default CAM layer)."
        )
    return weight


class _caller_state_restored:
    """Run the model in eval mode, then give back every module's train/eval flag as the caller left it."""

    def __init__(self, model: nn.Module):
        self.model, self.modes = model, None

    def __enter__(self):
        self.modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()

    def __exit__(self, *exc):
        for module, training in self.modes:
            module.training = training


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
