"""hf_dualsig: dual-branch sigmoid class activation maps for Hugging Face image classifiers.

The public names below load on first use (PEP 562 `__getattr__`, as transformers does), so that importing a light
submodule (`hf_dualsig.eval_arguments`, `hf_dualsig.scoremaps`, what the scripts' `--help` needs) imports neither
torch nor transformers' model code. The first use of any of them also registers the dual model with the Auto
classes and the `dualsig-cam` pipeline task; code that loads a dual checkpoint through the Auto classes or
`pipeline("dualsig-cam")` before touching any of them calls `hf_dualsig.register_auto_classes()` first.
"""

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "cam": ("CAM_METHODS", "CAMMethod", "CAMOutput", "available_heads", "explain"),
    "configuration_dualsig": ("DualSigmoidConfig",),
    "configuration_wsol_backbones": ("WsolInceptionV3Config", "WsolResNet50Config", "WsolVgg16Config"),
    "modeling_dualsig": ("DualSigmoidForImageClassification", "DualSigmoidOutput"),
    "modeling_wsol_backbones": (
        "WsolInceptionV3ForImageClassification",
        "WsolResNet50ForImageClassification",
        "WsolVgg16ForImageClassification",
    ),
    "pipeline_dualsig": ("DualSigmoidCAMPipeline",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
_registered = False

__all__ = sorted(_MODULE_OF) + ["register_auto_classes"]


def register_auto_classes() -> None:
    """Register `DualSigmoidConfig` and `DualSigmoidForImageClassification` with AutoConfig, AutoModel and
    AutoModelForImageClassification, and the `dualsig-cam` pipeline task (the WSOL backbones register themselves on
    import). Idempotent; imports torch and transformers' model and pipeline code."""
    global _registered
    if _registered:
        return
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
    from transformers.pipelines import PIPELINE_REGISTRY

    from .configuration_dualsig import DualSigmoidConfig
    from .modeling_dualsig import DualSigmoidForImageClassification
    from .pipeline_dualsig import DualSigmoidCAMPipeline

    AutoConfig.register(DualSigmoidConfig.model_type, DualSigmoidConfig, exist_ok=True)
    AutoModel.register(DualSigmoidConfig, DualSigmoidForImageClassification, exist_ok=True)
    AutoModelForImageClassification.register(DualSigmoidConfig, DualSigmoidForImageClassification, exist_ok=True)
    if "dualsig-cam" not in PIPELINE_REGISTRY.get_supported_tasks():
        PIPELINE_REGISTRY.register_pipeline(
            "dualsig-cam", pipeline_class=DualSigmoidCAMPipeline, pt_model=AutoModelForImageClassification, type="image"
        )
    _registered = True


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    register_auto_classes()
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later uses skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_MODULE_OF))


if TYPE_CHECKING:  # what the names are, for type checkers and IDEs
    from .cam import CAM_METHODS, CAMMethod, CAMOutput, available_heads, explain
    from .configuration_dualsig import DualSigmoidConfig
    from .configuration_wsol_backbones import WsolInceptionV3Config, WsolResNet50Config, WsolVgg16Config
    from .modeling_dualsig import DualSigmoidForImageClassification, DualSigmoidOutput
    from .modeling_wsol_backbones import (
        WsolInceptionV3ForImageClassification,
        WsolResNet50ForImageClassification,
        WsolVgg16ForImageClassification,
    )
    from .pipeline_dualsig import DualSigmoidCAMPipeline
