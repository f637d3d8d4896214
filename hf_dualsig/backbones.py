"""Backbone families: where each classifier's head is, what feeds it, and its default CAM layer.

Shipped with every checkpoint; imports only torch and transformers. Adding a family is one row in `ADAPTERS`.
"""

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class BackboneAdapter:
    """How the CAM engine and the wrapper read one family of `*ForImageClassification` models.

    Attributes:
        head_paths: dotted paths of the classification head(s); the logits are their mean.
        cam_layer: default CAM target layer (dotted path; negative integers index from the end), or `None` to
            pick the last 4-D feature map automatically.
        tokens: whether the CAM layer emits a token sequence (B, N, C) rather than a feature map (B, C, h, w).
        prefix_tokens_attr: config attribute(s) whose sum, plus `fixed_prefix_tokens`, counts the non-patch tokens
            (CLS, distillation, registers) at the start of the sequence.
    """

    head_paths: tuple[str, ...] = ("classifier",)
    cam_layer: str | None = None
    tokens: bool = False
    fixed_prefix_tokens: int = 0
    prefix_tokens_attr: str | None = None
    has_attentions: bool = False


def _vit_like(blocks: str, norm: str = "layernorm_before", fixed: int = 1, heads=("classifier",), attr=None):
    return BackboneAdapter(
        head_paths=heads,
        cam_layer=f"{blocks}.-1.{norm}",
        tokens=True,
        fixed_prefix_tokens=fixed,
        prefix_tokens_attr=attr,
        has_attentions=True,
    )


ADAPTERS: dict[str, BackboneAdapter] = {
    "ViTForImageClassification": _vit_like("vit.layers"),
    "DeiTForImageClassification": _vit_like("deit.layers", fixed=2),
    "DeiTForImageClassificationWithTeacher": _vit_like(
        "deit.layers", fixed=2, heads=("cls_classifier", "distillation_classifier")
    ),
    "BeitForImageClassification": _vit_like("beit.layers"),
    "Dinov2ForImageClassification": _vit_like("dinov2.encoder.layer", norm="norm1"),
    "Dinov2WithRegistersForImageClassification": _vit_like(
        "dinov2_with_registers.encoder.layer", norm="norm1", attr="num_register_tokens"
    ),
    "SwinForImageClassification": BackboneAdapter(
        cam_layer="swin.encoder.layers.-1.blocks.-1.layernorm_before", tokens=True, has_attentions=True
    ),
    "ConvNextForImageClassification": BackboneAdapter(cam_layer="convnext.encoder.stages.-1"),
    "ConvNextV2ForImageClassification": BackboneAdapter(cam_layer="convnextv2.encoder.stages.-1"),
    "ResNetForImageClassification": BackboneAdapter(cam_layer="resnet.encoder.stages.-1"),
    "RegNetForImageClassification": BackboneAdapter(cam_layer="regnet.encoder.stages.-1"),
    "MobileNetV2ForImageClassification": BackboneAdapter(cam_layer="mobilenet_v2.conv_1x1"),
    "EfficientNetForImageClassification": BackboneAdapter(cam_layer="efficientnet.encoder.top_activation"),
    # wsolevaluation's WSOL backbones (modeling_wsol_backbones.py): pooled CAM layer -> one linear classifier.
    "WsolVgg16ForImageClassification": BackboneAdapter(cam_layer="vgg.relu"),
    "WsolResNet50ForImageClassification": BackboneAdapter(cam_layer="resnet.layer4"),
    "WsolInceptionV3ForImageClassification": BackboneAdapter(cam_layer="inception.SPG_A3_2b"),
    # timm: the head is found through timm's own `get_classifier()`; the CAM layer is the last feature map.
    "TimmWrapperForImageClassification": BackboneAdapter(head_paths=()),
}


def get_adapter(classifier: nn.Module) -> BackboneAdapter:
    """The adapter of a classifier instance, with timm heads resolved; a clear error for unsupported models."""
    name = type(classifier).__name__
    if name not in ADAPTERS:
        raise ValueError(
            f"{name} is not a supported classifier. Supported: {', '.join(sorted(ADAPTERS))}. "
            "Pass a `*ForImageClassification` model of one of these families (or a timm model through TimmWrapper)."
        )
    adapter = ADAPTERS[name]
    if name == "TimmWrapperForImageClassification":
        adapter = BackboneAdapter(head_paths=(f"timm_model.{_timm_head_path(classifier.timm_model)}",))
    return adapter


def num_prefix_tokens(adapter: BackboneAdapter, config) -> int:
    """Number of non-patch tokens (CLS, distillation, registers) at the start of the token sequence."""
    extra = int(getattr(config, adapter.prefix_tokens_attr, 0) or 0) if adapter.prefix_tokens_attr else 0
    return adapter.fixed_prefix_tokens + extra


def _timm_head_path(timm_model: nn.Module) -> str:
    head = timm_model.get_classifier()
    for name, module in timm_model.named_modules():
        if module is head and isinstance(module, nn.Linear):
            return name
    raise ValueError(
        f"timm model {type(timm_model).__name__} has no linear classification head (get_classifier() returned "
        f"{type(head).__name__}); create it with num_classes > 0."
    )


def resolve_module(root: nn.Module, path: str) -> nn.Module:
    """The submodule at a dotted path; integer parts index containers and may be negative (`encoder.layer.-1`)."""
    module = root
    for part in path.split("."):
        if part.lstrip("-").isdigit() and isinstance(module, (nn.ModuleList, nn.Sequential)):
            index = int(part)
            if not -len(module) <= index < len(module):
                raise ValueError(f"'{path}': index {index} is out of range for a container of {len(module)} modules.")
            module = module[index]
        elif hasattr(module, part) and isinstance(getattr(module, part), nn.Module):
            module = getattr(module, part)
        else:
            raise ValueError(
                f"'{path}' is not a module of {type(root).__name__}: '{part}' not found. "
                "Use a dotted name from model.named_modules()."
            )
    return module
