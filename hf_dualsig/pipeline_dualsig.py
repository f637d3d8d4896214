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

from .cam import available_heads, explain


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
    `target` (class id; default the softmax prediction), `alpha` (overlay opacity).
    Returns per image: label, softmax_score, sigmoid_score (None for a plain classifier), target, map (H, W tensor
    at the model's input size) and overlay (PIL image at the original size).
    """

    def _sanitize_parameters(self, method=None, head=None, target=None, alpha=None, **kwargs):
        forward = {}
        if method is not None:
            forward["method"] = method
        if head is not None:
            forward["head"] = head
        if target is not None:
            forward["target"] = target
        return {}, forward, ({"alpha": alpha} if alpha is not None else {})

    def preprocess(self, image):
        image = load_image(image)
        inputs = self.image_processor(images=image, return_tensors="pt")
        return {"pixel_values": inputs["pixel_values"], "image": image}

    def _forward(self, model_inputs, method="gradcam", head=None, target=None):
        head = head or available_heads(self.model)[-1]
        out = explain(self.model, model_inputs["pixel_values"], methods=[method], heads=[head], targets=target)
        return {"out": out, "key": (method, head), "image": model_inputs["image"]}

    def postprocess(self, outputs, alpha=0.5):
        out, key = outputs["out"], outputs["key"]
        target = int(out.targets[0])
        sigmoid = out.logits.get("sigmoid")
        return {
            "label": self.model.config.id2label[int(out.logits["softmax"][0].argmax())],
            "softmax_score": float(out.logits["softmax"][0].softmax(-1)[target]),
            "sigmoid_score": None if sigmoid is None else float(sigmoid[0, target].sigmoid()),
            "target": target,
            "map": out.maps[key][0],
            "overlay": overlay(outputs["image"], out.maps[key][0], alpha),
        }
