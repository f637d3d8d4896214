"""hf_dualsig: dual-branch sigmoid class activation maps for Hugging Face image classifiers."""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .cam import CAM_METHODS, CAMOutput, explain
from .configuration_dualsig import DualSigmoidConfig
from .modeling_dualsig import DualSigmoidForImageClassification, DualSigmoidOutput

AutoConfig.register(DualSigmoidConfig.model_type, DualSigmoidConfig, exist_ok=True)
AutoModel.register(DualSigmoidConfig, DualSigmoidForImageClassification, exist_ok=True)
AutoModelForImageClassification.register(DualSigmoidConfig, DualSigmoidForImageClassification, exist_ok=True)

__all__ = [
    "CAM_METHODS",
    "CAMOutput",
    "DualSigmoidConfig",
    "DualSigmoidForImageClassification",
    "DualSigmoidOutput",
    "explain",
]
