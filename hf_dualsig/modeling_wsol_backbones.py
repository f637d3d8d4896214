"""The WSOL backbones of wsolevaluation (Choe et al., CVPR 2020), CAM variant, as transformers image classifiers.

VGG16-GAP, ResNet50 (layer4 at stride 1) and InceptionV3 (WSOL form), each: body -> CAM layer (a feature map) ->
global average pooling -> one linear classifier, so CAM reads the classifier's weights directly. Module names inside
the bodies are the authors' (`features.0`, `layer4.2.conv3`, `Mixed_6e.branch7x7_1`, ...). Shipped with every
checkpoint that wraps one; imports only torch and transformers; registers the models with
`AutoModelForImageClassification` on import.
"""

import torch
from torch import nn
from transformers import (
    CONFIG_MAPPING,
    MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
    AutoModelForImageClassification,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import ImageClassifierOutput

from .configuration_wsol_backbones import (
    WsolBackboneConfig,
    WsolInceptionV3Config,
    WsolResNet50Config,
    WsolVgg16Config,
)

VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
CAM_CHANNELS = {"vgg16": 1024, "resnet50": 2048, "inception_v3": 1024}


class WsolPreTrainedModel(PreTrainedModel):
    """Weights start as wsolevaluation's `initialize_weights`: convolutions He ("he") or Xavier ("xavier"), zero
    biases, BatchNorm 1/0, linear layers N(0, 0.01)."""

    config: WsolBackboneConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    conv_init = "xavier"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            if self.conv_init == "he":
                init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            else:
                init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            init.zeros_(module.running_mean)
            init.ones_(module.running_var)
            init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear):
            init.normal_(module.weight, 0.0, 0.01)
            init.zeros_(module.bias)


class _WsolForImageClassification(WsolPreTrainedModel):
    """Body (returns its stage outputs, the CAM layer's map last) -> dropout -> global average pooling -> linear."""

    architecture: str
    body_class: type[nn.Module]

    def __init__(self, config: WsolBackboneConfig):
        super().__init__(config)
        setattr(self, self.base_model_prefix, self.body_class(config))
        self.dropout = nn.Dropout(config.dropout_rate)
        self.classifier = nn.Linear(CAM_CHANNELS[self.architecture], config.num_labels)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, num_labels)`; when given, `loss` is the cross-entropy of `logits`.
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        stages = getattr(self, self.base_model_prefix)(pixel_values)
        logits = self.classifier(self.dropout(stages[-1]).mean(dim=(2, 3)))
        output = ImageClassifierOutput(
            loss=self.loss_function(labels, logits, self.config) if labels is not None else None,
            logits=logits,
            hidden_states=stages if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class WsolVgg16Body(nn.Module):
    """VGG16's convolutions (ReLU after each, 2x2 max-pools; the fifth pool dropped, the fourth too with
    `large_feature_map`), then `conv6`: 3x3 to 1024 channels, and its ReLU `relu`, the CAM layer."""

    def __init__(self, config: WsolVgg16Config):
        super().__init__()
        spec = list(VGG16_LAYERS)
        if config.large_feature_map:
            del spec[13]  # the fourth max-pool
        layers, channels = [], config.num_channels
        for item in spec:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(channels, item, kernel_size=3, padding=1), nn.ReLU()]
                channels = item
        self.features = nn.Sequential(*layers)
        self.conv6 = nn.Conv2d(channels, CAM_CHANNELS["vgg16"], kernel_size=3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.features(pixel_values)
        return features, self.relu(self.conv6(features))


class WsolBottleneck(nn.Module):
    """ResNet v1.5 bottleneck: 1x1, 3x3 (carrying the stride), 1x1 to 4x `planes`, BatchNorm after each, ReLU after
    the sum with the shortcut (a strided 1x1 convolution + BatchNorm when the shape changes)."""

    def __init__(self, in_channels: int, planes: int, stride: int):
        super().__init__()
        out_channels = 4 * planes
        self.conv1 = nn.Conv2d(in_channels, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        shortcut = hidden if self.downsample is None else self.downsample(hidden)
        out = self.relu(self.bn1(self.conv1(hidden)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + shortcut)


class WsolResNet50Body(nn.Module):
    """7x7/2 stem + 3x3/2 max-pool, then 3, 4, 6, 3 bottlenecks at strides 1, 2, 2 (1 with `large_feature_map`), 1;
    layer4 (2048 channels) is the CAM layer."""

    def __init__(self, config: WsolResNet50Config):
        super().__init__()
        self.conv1 = nn.Conv2d(config.num_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages = ((64, 3, 1), (128, 4, 2), (256, 6, 1 if config.large_feature_map else 2), (512, 3, 1))
        channels = 64
        for index, (planes, blocks, stride) in enumerate(stages, start=1):
            layers = [WsolBottleneck(channels, planes, stride)]
            layers += [WsolBottleneck(4 * planes, planes, 1) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*layers))
            channels = 4 * planes

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.maxpool(self.relu(self.bn1(self.conv1(pixel_values))))
        stages = [hidden]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            stages.append(layer(stages[-1]))
        return tuple(stages)


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(hidden)))


def _chain(hidden: torch.Tensor, *modules: nn.Module) -> torch.Tensor:
    for module in modules:
        hidden = module(hidden)
    return hidden


class InceptionA(nn.Module):
    """Mixed_5x: 1x1 (64) | 1x1 (48) -> 5x5 (64) | 1x1 (64) -> 3x3 (96) -> 3x3 (96) | 3x3 avg-pool -> 1x1."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)
        self.pool = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                _chain(x, self.branch5x5_1, self.branch5x5_2),
                _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                _chain(x, self.pool, self.branch_pool),
            ],
            dim=1,
        )


class InceptionB(nn.Module):
    """Mixed_6a in its WSOL form (stride 1, padding 1): 3x3 (384) | 1x1 (64) -> 3x3 (96) -> 3x3 (96) | 3x3
    max-pool."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, padding=1)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                _chain(x, self.branch3x3dbl_1, self.branch3x3dbl_2, self.branch3x3dbl_3),
                self.pool(x),
            ],
            dim=1,
        )


class InceptionC(nn.Module):
    """Mixed_6b-e: 1x1 (192) | 1x1 -> 1x7 -> 7x1 (192) | 1x1 -> 7x1 -> 1x7 -> 7x1 -> 1x7 (192) | 3x3 avg-pool ->
    1x1 (192); `channels_7x7` inside the factorised branches."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        row = {"kernel_size": (1, 7), "padding": (0, 3)}
        col = {"kernel_size": (7, 1), "padding": (3, 0)}
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(in_channels, 192, 1)
        self.pool = nn.AvgPool2d(kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                _chain(x, self.branch7x7_1, self.branch7x7_2, self.branch7x7_3),
                _chain(
                    x,
                    self.branch7x7dbl_1,
                    self.branch7x7dbl_2,
                    self.branch7x7dbl_3,
                    self.branch7x7dbl_4,
                    self.branch7x7dbl_5,
                ),
                _chain(x, self.pool, self.branch_pool),
            ],
            dim=1,
        )


class WsolInceptionV3Body(nn.Module):
    """InceptionV3 stem and Mixed_5b-6e (3x3/2 max-pools with ceil mode; the one before Mixed_6a dropped with
    `large_feature_map`), then dropout -> `SPG_A3_1b` (3x3 to 1024 + ReLU) -> dropout -> `SPG_A3_2b` (3x3 + ReLU),
    the CAM layer."""

    def __init__(self, config: WsolInceptionV3Config):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(config.num_channels, 32, 3, stride=2, padding=1)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.pool2 = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.pool3 = nn.Identity() if config.large_feature_map else nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.dropout = nn.Dropout(config.dropout_rate)
        cam_channels = CAM_CHANNELS["inception_v3"]
        self.SPG_A3_1b = nn.Sequential(nn.Conv2d(768, cam_channels, 3, padding=1), nn.ReLU())
        self.SPG_A3_2b = nn.Sequential(nn.Conv2d(cam_channels, cam_channels, 3, padding=1), nn.ReLU())

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        stem = _chain(
            pixel_values,
            self.Conv2d_1a_3x3,
            self.Conv2d_2a_3x3,
            self.Conv2d_2b_3x3,
            self.pool1,
            self.Conv2d_3b_1x1,
            self.Conv2d_4a_3x3,
            self.pool2,
        )
        mixed_5 = _chain(stem, self.Mixed_5b, self.Mixed_5c, self.Mixed_5d)
        mixed_6 = _chain(mixed_5, self.pool3, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e)
        cam = _chain(mixed_6, self.dropout, self.SPG_A3_1b, self.dropout, self.SPG_A3_2b)
        return stem, mixed_5, mixed_6, cam


class WsolVgg16ForImageClassification(_WsolForImageClassification):
    """VGG16-GAP (wsolevaluation `vgg16`, CAM): the CAM layer is `vgg.relu`, conv6's ReLU (1024 channels, 14x14 at
    224)."""

    config_class = WsolVgg16Config
    config: WsolVgg16Config
    base_model_prefix = "vgg"
    architecture = "vgg16"
    conv_init = "he"
    body_class = WsolVgg16Body


class WsolResNet50ForImageClassification(_WsolForImageClassification):
    """ResNet50 (wsolevaluation `resnet50`, CAM): the CAM layer is `resnet.layer4` (2048 channels, 14x14 at 224)."""

    config_class = WsolResNet50Config
    config: WsolResNet50Config
    base_model_prefix = "resnet"
    architecture = "resnet50"
    body_class = WsolResNet50Body


class WsolInceptionV3ForImageClassification(_WsolForImageClassification):
    """InceptionV3 (wsolevaluation `inception_v3`, CAM): the CAM layer is `inception.SPG_A3_2b` (1024 channels,
    14x14 at 224)."""

    config_class = WsolInceptionV3Config
    config: WsolInceptionV3Config
    base_model_prefix = "inception"
    architecture = "inception_v3"
    body_class = WsolInceptionV3Body


WSOL_MODELS = {
    "vgg16": WsolVgg16ForImageClassification,
    "resnet50": WsolResNet50ForImageClassification,
    "inception_v3": WsolInceptionV3ForImageClassification,
}
# Each model is registered for its own config class and for the one `AutoConfig` builds (another module copy of the
# same file when transformers loads a local checkpoint's code, see configuration_wsol_backbones.py), unless a copy
# of this file already registered a model for it.
for _model in WSOL_MODELS.values():
    for _config in (_model.config_class, CONFIG_MAPPING[_model.config_class.model_type]):
        if _config not in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING:
            AutoModelForImageClassification.register(_config, _model, exist_ok=True)

__all__ = [
    "WSOL_MODELS",
    "WsolInceptionV3ForImageClassification",
    "WsolPreTrainedModel",
    "WsolResNet50ForImageClassification",
    "WsolVgg16ForImageClassification",
]
