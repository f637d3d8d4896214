"""Small classifiers built from configs (no download): the offline default model and the test fixtures."""

import torch
import transformers as T
from transformers import PreTrainedModel


def _tiny_configs(num_labels: int, image_size: int) -> dict:
    vit = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=image_size,
        patch_size=8,
        num_labels=num_labels,
    )
    dinov2 = dict(vit, mlp_ratio=2)
    dinov2.pop("intermediate_size")
    convnext = dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2, num_labels=num_labels)
    return {
        "vit": T.ViTConfig(**vit),
        "deit": T.DeiTConfig(**vit, architectures=["DeiTForImageClassification"]),
        "deit_teacher": T.DeiTConfig(**vit, architectures=["DeiTForImageClassificationWithTeacher"]),
        "beit": T.BeitConfig(**vit, use_mean_pooling=True),
        "dinov2": T.Dinov2Config(**dinov2),
        "dinov2_registers": T.Dinov2WithRegistersConfig(**dinov2, num_register_tokens=4),
        "swin": T.SwinConfig(
            image_size=image_size,
            patch_size=4,
            embed_dim=16,
            depths=[1, 1],
            num_heads=[2, 2],
            window_size=4,
            num_labels=num_labels,
        ),
        "convnext": T.ConvNextConfig(**convnext),
        "convnextv2": T.ConvNextV2Config(**convnext),
        "resnet": T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=num_labels),
        "regnet": T.RegNetConfig(
            embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], groups_width=8, num_labels=num_labels
        ),
        "mobilenet_v2": T.MobileNetV2Config(depth_multiplier=0.25, image_size=image_size, num_labels=num_labels),
        "efficientnet": T.EfficientNetConfig(
            width_coefficient=0.1,
            depth_coefficient=0.1,
            image_size=image_size,
            hidden_dim=128,
            num_labels=num_labels,
        ),
        "timm_resnet": T.TimmWrapperConfig(architecture="resnet10t", num_labels=num_labels),
    }


TINY_FAMILIES = tuple(_tiny_configs(2, 32))


def tiny_classifier(family: str, num_labels: int = 5, image_size: int = 32, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised, deterministic (by `seed`) small `*ForImageClassification` of one family.

    Its BatchNorm running statistics are randomised too, so that tests notice any change to them.
    """
    configs = _tiny_configs(num_labels, image_size)
    if family not in configs:
        raise ValueError(f"family={family!r}: expected one of {', '.join(configs)}.")
    config = configs[family]
    config.id2label = {i: f"class_{i}" for i in range(num_labels)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(seed)
    model = T.AutoModelForImageClassification.from_config(config)
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def convnext_small_config(num_labels: int, image_size: int = 64) -> T.ConvNextConfig:
    """The default model of the main job: a narrow 3-stage ConvNeXt with a stride-2 stem, so that its last feature
    map (the CAM layer) is image_size / 8 wide (8x8 at 64 pixels), trainable in minutes on 2 CPU cores."""
    return T.ConvNextConfig(
        patch_size=2,
        num_stages=3,
        hidden_sizes=[32, 64, 128],
        depths=[1, 1, 2],
        image_size=image_size,
        num_labels=num_labels,
    )
