"""Configurations of the WSOL backbones of wsolevaluation (Choe et al., CVPR 2020), CAM variant, shipped with every
checkpoint that wraps one. Imports only transformers; registers the configs with `AutoConfig` on import.
"""

from huggingface_hub.dataclasses import strict
from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig


@strict
class WsolBackboneConfig(PreTrainedConfig):
    r"""
    Fields shared by the three WSOL backbones.

    Args:
        num_channels (`int`, *optional*, defaults to 3):
            Input channels.
        image_size (`int`, *optional*, defaults to 224):
            Training and evaluation resolution of the WSOL protocol.
        large_feature_map (`bool`, *optional*, defaults to `False`):
            wsolevaluation's `large_feature_map`: one stride-2 step fewer, so the CAM layer is 28x28 at 224 instead
            of 14x14. It changes no weight shape, so it must match how the checkpoint was trained.
        dropout_rate (`float`, *optional*, defaults to 0.0):
            Dropout on the CAM layer's map before pooling (training only; InceptionV3 also drops out the inputs of
            its two extra convolutions).
    """

    num_channels: int = 3
    image_size: int = 224
    large_feature_map: bool = False
    dropout_rate: float = 0.0


@strict
class WsolVgg16Config(WsolBackboneConfig):
    r"""
    VGG16 with a GAP head (wsolevaluation's `VggCam`): VGG16's 13 convolutions without the last max-pool, a 3x3
    convolution `conv6` to 1024 channels with ReLU (the CAM layer), global average pooling and a linear classifier.
    With `large_feature_map` the fourth max-pool is dropped too.
    """

    model_type = "wsol_vgg16"


@strict
class WsolResNet50Config(WsolBackboneConfig):
    r"""
    ResNet50 of wsolevaluation (`ResNetCam`): torchvision's ResNet50 (v1.5, stride on the 3x3 convolution) whose
    layer4 keeps stride 1, so layer4 (the CAM layer, 2048 channels) is 14x14 at 224; `large_feature_map` sets
    layer3's stride to 1 as well (28x28). Global average pooling and a linear classifier.
    """

    model_type = "wsol_resnet50"


@strict
class WsolInceptionV3Config(WsolBackboneConfig):
    r"""
    InceptionV3 of wsolevaluation (`InceptionCam`): torchvision's InceptionV3 up to Mixed_6e with Mixed_6a at
    stride 1 (a max-pool before it instead, dropped with `large_feature_map`), then two 3x3 convolutions to 1024
    channels with ReLU (`SPG_A3_1b`, `SPG_A3_2b`, the CAM layer), dropout before each, global average pooling and
    a linear classifier (the authors' 1x1 convolution `SPG_A4` before the pooling, which gives the same logits).
    `dropout_rate` defaults to 0.5 here.
    """

    model_type = "wsol_inception_v3"
    dropout_rate: float = 0.5


WSOL_CONFIGS = {"vgg16": WsolVgg16Config, "resnet50": WsolResNet50Config, "inception_v3": WsolInceptionV3Config}
# The first copy of this file imported in a process registers its configs, later copies reuse them: transformers
# loads a local checkpoint's config code and model code as two module copies, and the dual config's nested
# `backbone_config` must be an instance of the class the models are registered for (modeling_wsol_backbones.py).
for _config in WSOL_CONFIGS.values():
    if _config.model_type not in CONFIG_MAPPING:
        AutoConfig.register(_config.model_type, _config, exist_ok=True)

__all__ = ["WSOL_CONFIGS", "WsolInceptionV3Config", "WsolResNet50Config", "WsolVgg16Config"]
