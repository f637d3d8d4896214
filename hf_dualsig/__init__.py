"""hf_dualsig: dual-branch sigmoid class activation maps for Hugging Face image classifiers."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from transformers.pipelines import PIPELINE_REGISTRY

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

AutoConfig.register(DualSigmoidConfig.model_type, DualSigmoidConfig, exist_ok=True)
AutoModel.register(DualSigmoidConfig, DualSigmoidForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(DualSigmoidConfig, DualSigmoidForImageClassification, exist_ok=True)
if "dualsig-cam" not in PIPELINE_REGISTRY.get_supported_tasks():
    PIPELINE_REGISTRY.register_pipeline(
        "dualsig-cam", pipeline_class=DualSigmoidCAMPipeline, pt_model=AutoModelForImageClassification, type="image"
    )

__all__ = [
    "CAM_METHODS",
    "CAMMethod",
    "CAMOutput",
    "DualSigmoidCAMPipeline",
    "DualSigmoidConfig",
    "DualSigmoidForImageClassification",
    "DualSigmoidOutput",
    "WsolInceptionV3Config",
    "WsolInceptionV3ForImageClassification",
    "WsolResNet50Config",
    "WsolResNet50ForImageClassification",
    "WsolVgg16Config",
    "WsolVgg16ForImageClassification",
    "available_heads",
    "explain",
]
