"""The "dualsig-cam" pipeline: image(s) -> label, both heads' scores, a class activation map and its overlay.

Shipped with checkpoints as a custom pipeline (imports only torch, numpy, PIL, transformers and its siblings):
    pipeline("dualsig-cam", model="user/convnext-dualsig", trust_remote_code=True)(image, method="gradcam")
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import Pipeline
from transformers.image_utils import load_image

from .backbones import get_adapter
from .cam import CAM_METHODS, available_heads, explain


def supported_methods(model) -> list[str]:
    """The CAM methods `model`'s family supports, in registry order: all of them for a ViT-family model with a CLS
    token, all but the attention-based ones (rollout, tscam) otherwise."""
    adapter = get_adapter(model.classifier if "sigmoid" in available_heads(model) else model)
    attentions = adapter.has_attentions and adapter.fixed_prefix_tokens > 0
    return [name for name, spec in CAM_METHODS.items() if attentions or "attentions" not in spec.needs]


def class_id(config, target) -> int:
    """A class id from an id (int or digit string, range-checked by the CAM engine) or a label name (any case)."""
    if isinstance(target, str) and target.strip().lstrip("-").isdigit():
        return int(target)
    if not isinstance(target, str):
        return target
    wanted = target.strip().lower()
    ids = [int(i) for i, name in config.id2label.items() if str(name).lower() == wanted]
    if len(ids) > 1:
        raise ValueError(f"class name {target!r} is ambiguous: classes {ids} share it; pass the class id.")
    if not ids:
        examples = ", ".join(repr(config.id2label[i]) for i in sorted(config.id2label)[:5])
        raise ValueError(
            f"unknown class name {target!r}; pass one of the model's {len(config.id2label)} class names "
            f"(e.g. {examples}) or a class id in [0, {len(config.id2label)})."
        )
    return ids[0]


def colorize(saliency: np.ndarray) -> np.ndarray:
    """A map in [0, 1] (H, W) -> RGB uint8 with the 'jet' colour scale (blue = low, red = high)."""
    x = np.clip(saliency, 0, 1)[..., None]
    rgb = np.clip(1.5 - np.abs(4 * x - np.array([3.0, 2.0, 1.0])), 0, 1)
    return (rgb * 255).astype(np.uint8)


def overlay(image: Image.Image, saliency: torch.Tensor, alpha: float = 0.5) -> Image.Image:
    """The image with the map (resized bilinearly to the image) blended on top."""
    image = image.convert("RGB")
    resized = F.interpolate(saliency[None, None].float().cpu(), size=(image.height, image.width), mode="bilinear")
    heat = colorize(resized[0, 0].numpy())
    blended = (1 - alpha) * np.asarray(image, dtype=np.float32) + alpha * heat.astype(np.float32)
    return Image.fromarray(blended.clip(0, 255).astype(np.uint8))


class DualSigmoidCAMPipeline(Pipeline):
    """Explain images with a dual-branch (or plain) classifier.

    Parameters (per call): `method` (default "gradcam"), `head` ("sigmoid" for a dual model, else "softmax"),
    `target` (class id or label name, any case; default the softmax prediction), `alpha` (overlay opacity),
    `top_k` (also return each head's k most probable classes).
    Returns per image: label, softmax_score, sigmoid_score (None for a plain classifier), target, map (H, W tensor
    at the model's input size) and overlay (PIL image at the original size); with `top_k`, also top_k: per head a
    list of {"id", "label", "score"} (softmax probabilities; per-class sigmoid probabilities).
    """

    def supported_methods(self) -> list[str]:
        """The CAM methods this model's family supports (see `supported_methods`)."""
        return supported_methods(self.model)

    def _sanitize_parameters(self, method=None, head=None, target=None, alpha=None, top_k=None, **kwargs):
        forward = {}
        if method is not None:
            forward["method"] = method
        if head is not None:
            forward["head"] = head
        if target is not None:
            forward["target"] = class_id(self.model.config, target)
        post = {"alpha": alpha} if alpha is not None else {}
        if top_k is not None:
            post["top_k"] = top_k
        return {}, forward, post

    def preprocess(self, image):
        if image is None:
            raise ValueError("no image given: pass a PIL image, a local path or a URL.")
        image = load_image(image)
        inputs = self.image_processor(images=image, return_tensors="pt")
        return {"pixel_values": inputs["pixel_values"], "image": image}

    def _forward(self, model_inputs, method="gradcam", head=None, target=None):
        head = head or available_heads(self.model)[-1]
        out = explain(self.model, model_inputs["pixel_values"], methods=[method], heads=[head], targets=target)
        return {"out": out, "key": (method, head), "image": model_inputs["image"]}

    def postprocess(self, outputs, alpha=0.5, top_k=None):
        out, key = outputs["out"], outputs["key"]
        target = int(out.targets[0])
        sigmoid = out.logits.get("sigmoid")
        result = {
            "label": self.model.config.id2label[int(out.logits["softmax"][0].argmax())],
            "softmax_score": float(out.logits["softmax"][0].softmax(-1)[target]),
            "sigmoid_score": None if sigmoid is None else float(sigmoid[0, target].sigmoid()),
            "target": target,
            "map": out.maps[key][0],
            "overlay": overlay(outputs["image"], out.maps[key][0], alpha),
        }
        if top_k is not None:
            probabilities = {"softmax": out.logits["softmax"][0].softmax(-1)}
            if sigmoid is not None:
                probabilities["sigmoid"] = sigmoid[0].sigmoid()
            result["top_k"] = {head: self._top(p, top_k) for head, p in probabilities.items()}
        return result

    def _top(self, probabilities: torch.Tensor, k: int) -> list[dict]:
        scores, ids = probabilities.float().topk(min(k, probabilities.numel()))
        return [
            {"id": int(i), "label": self.model.config.id2label[int(i)], "score": float(s)} for s, i in zip(scores, ids)
        ]
