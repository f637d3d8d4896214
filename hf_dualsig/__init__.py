"""hf_dualsig: dual-branch sigmoid class activation maps for Hugging Face image classifiers."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .cam import CAM_METHODS, CAMMethod, CAMOutput, available_heads, explain
from .configuration_dualsig import DualSigmoidConfig
from .modeling_dualsig import DualSigmoidForImageClassification, DualSigmoidOutput
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
    "available_heads",
    "explain",
]
