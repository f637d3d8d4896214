"""wsolevaluation / Beyond-Softmax checkpoints (CAM variant) as native transformers models.

A checkpoint is what their `main.py` saves (`{"architecture", "epoch", "state_dict", ...}`, keys prefixed `module.`
under DataParallel) or a bare state dict. The backbone keys keep their names under the model's body prefix; the
classification head (`fc`, or InceptionV3's 1x1 convolution `SPG_A4`) becomes `classifier`. A dual checkpoint of the
authors (`--model_structure b2`) also holds the sigmoid branch (`fc2` / `SPG_A4_2`), which becomes the sigmoid head of
a `DualSigmoidForImageClassification`.
"""

import os
from collections.abc import Mapping

import torch
from transformers import ViTImageProcessor
from transformers.initialization import no_init_weights

from .configuration_wsol_backbones import WSOL_CONFIGS
from .modeling_dualsig import DualSigmoidForImageClassification
from .modeling_wsol_backbones import WSOL_MODELS

SOFTMAX_HEADS = {"vgg16": "fc", "resnet50": "fc", "inception_v3": "SPG_A4"}
SIGMOID_HEADS = {"vgg16": "fc2", "resnet50": "fc2", "inception_v3": "SPG_A4_2"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPTIONAL_KEYS = ("num_batches_tracked",)  # BatchNorm counters: absent from old checkpoints, unused in eval


def load_wsol_state_dict(source: str | os.PathLike | Mapping) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state dict with any `module.` prefix removed, the architecture the checkpoint records or None)."""
    checkpoint = source if isinstance(source, Mapping) else torch.load(source, map_location="cpu", weights_only=True)
    recorded = checkpoint.get("architecture")
    state = checkpoint.get("state_dict", checkpoint)
    not_tensors = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if not_tensors:
        raise ValueError(f"the checkpoint's state dict has non-tensor entries {not_tensors[:10]}: not a state dict.")
    return {key.removeprefix("module."): value for key, value in state.items()}, recorded


def convert_classifier(
    source: str | os.PathLike | Mapping,
    architecture: str | None = None,
    large_feature_map: bool = False,
    id2label: dict[int, str] | None = None,
):
    """A wsolevaluation CAM checkpoint as a native `Wsol*ForImageClassification` (eval mode).

    `architecture` ("vgg16", "resnet50", "inception_v3") defaults to the one the checkpoint records;
    `large_feature_map` must be how it was trained (it changes strides, not weights). Keys the model does not have,
    keys it misses and shapes that differ are a ValueError listing them. A dual checkpoint's sigmoid branch counts
    as unknown keys here: use `convert_dual`.
    """
    state, architecture = _checked_source(source, architecture)
    return _classifier(state, architecture, large_feature_map, id2label)


def convert_dual(
    source: str | os.PathLike | Mapping,
    architecture: str | None = None,
    large_feature_map: bool = False,
    id2label: dict[int, str] | None = None,
) -> DualSigmoidForImageClassification:
    """An authors' dual checkpoint (`fc` + `fc2`, or `SPG_A4` + `SPG_A4_2`) as a `DualSigmoidForImageClassification`:
    `fc` becomes the softmax head (the frozen classifier's), `fc2` the trained sigmoid head."""
    state, architecture = _checked_source(source, architecture)
    prefix = SIGMOID_HEADS[architecture] + "."
    branch = {k[len(prefix) :]: state.pop(k) for k in list(state) if k.startswith(prefix)}
    classifier = _classifier(state, architecture, large_feature_map, id2label)
    dual = DualSigmoidForImageClassification.from_classifier(classifier)
    head = dual.sigmoid_head[0]
    expected = {name: tuple(tensor.shape) for name, tensor in head.state_dict().items()}
    given = {
        name: tuple(tensor.flatten(1).shape if name == "weight" and tensor.ndim > 1 else tensor.shape)
        for name, tensor in branch.items()
    }
    if given != expected:
        raise ValueError(
            f"the sigmoid branch {prefix[:-1]} has {given or 'no weights'}; expected {expected} (the softmax head's "
            f"shape). A checkpoint without {prefix[:-1]} is a plain classifier: use convert_classifier."
        )
    head.load_state_dict({"weight": branch["weight"].flatten(1), "bias": branch["bias"]})
    dual.config.sigmoid_head_trained = True
    return dual.eval()


def has_sigmoid_branch(source: str | os.PathLike | Mapping, architecture: str | None = None) -> bool:
    """Whether a checkpoint holds the authors' sigmoid branch (`fc2` / `SPG_A4_2`)."""
    state, architecture = _checked_source(source, architecture)
    return any(key.startswith(SIGMOID_HEADS[architecture] + ".") for key in state)


def wsol_image_processor(image_size: int = 224) -> ViTImageProcessor:
    """The WSOL evaluation transform: resize to image_size x image_size (bilinear, no crop), ImageNet mean/std."""
    return ViTImageProcessor(
        size={"height": image_size, "width": image_size},
        resample=2,
        image_mean=list(IMAGENET_MEAN),
        image_std=list(IMAGENET_STD),
    )


def convert_and_save(
    source: str | os.PathLike,
    output_dir: str,
    architecture: str | None = None,
    large_feature_map: bool = False,
    id2label: dict[int, str] | None = None,
):
    """Convert a checkpoint (dual when it holds the sigmoid branch, else the plain classifier) and save it with the
    WSOL image processor to `output_dir`; returns the model."""
    state, architecture = _checked_source(source, architecture)
    convert = convert_dual if has_sigmoid_branch(state, architecture) else convert_classifier
    model = convert(state, architecture, large_feature_map, id2label)
    model.save_pretrained(output_dir)
    wsol_image_processor().save_pretrained(output_dir)
    return model


def _checked_source(source, architecture: str | None) -> tuple[dict[str, torch.Tensor], str]:
    state, recorded = load_wsol_state_dict(source)
    if architecture is not None and recorded is not None and architecture != recorded:
        raise ValueError(f"architecture={architecture!r}, but the checkpoint records {recorded!r}.")
    architecture = architecture or recorded
    if architecture not in WSOL_MODELS:
        raise ValueError(
            f"architecture={architecture!r}: expected one of {list(WSOL_MODELS)}"
            + ("" if recorded else " (the checkpoint does not record its architecture; pass it)")
            + "."
        )
    return state, architecture


def _classifier(state: dict, architecture: str, large_feature_map: bool, id2label: dict[int, str] | None):
    head = SOFTMAX_HEADS[architecture]
    num_labels = state[f"{head}.weight"].shape[0] if f"{head}.weight" in state else 1
    if id2label is not None and len(id2label) != num_labels:
        raise ValueError(f"id2label has {len(id2label)} names but the checkpoint's {head} has {num_labels} classes.")
    labels = {"id2label": id2label, "label2id": {v: k for k, v in id2label.items()}} if id2label else {}
    config = WSOL_CONFIGS[architecture](num_labels=num_labels, large_feature_map=large_feature_map, **labels)
    config.architectures = [WSOL_MODELS[architecture].__name__]
    with no_init_weights():  # every weight comes from the checkpoint
        model = WSOL_MODELS[architecture](config)
    model.load_state_dict(_native_state_dict(state, architecture, model, large_feature_map))
    return model.eval()


def _native_state_dict(state: dict, architecture: str, model, large_feature_map: bool) -> dict:
    head, prefix = SOFTMAX_HEADS[architecture], model.base_model_prefix

    def native(key: str) -> str:
        return "classifier" + key[len(head) :] if key.split(".")[0] == head else f"{prefix}.{key}"

    def authors(key: str) -> str:
        return head + key[len("classifier") :] if key.startswith("classifier.") else key[len(prefix) + 1 :]

    expected = model.state_dict()
    renamed = {
        native(k): v.flatten(1) if native(k) == "classifier.weight" and v.ndim > 2 else v for k, v in state.items()
    }
    problems = {
        "unknown keys": sorted(authors(k) for k in renamed if k not in expected),
        "missing keys": sorted(authors(k) for k in expected if k not in renamed and not k.endswith(OPTIONAL_KEYS)),
        "shapes that differ": sorted(
            f"{authors(k)} {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
            for k, v in renamed.items()
            if k in expected and v.shape != expected[k].shape
        ),
    }
    if any(problems.values()):
        listed = "; ".join(f"{name}: {keys}" for name, keys in problems.items() if keys)
        raise ValueError(
            f"not a wsolevaluation {architecture} CAM checkpoint with large_feature_map={large_feature_map}: {listed}. "
            "Check the architecture and large_feature_map (VGG16's feature indices depend on it); a dual checkpoint "
            "goes through convert_dual."
        )
    return {**{k: torch.zeros_like(v) for k, v in expected.items() if k.endswith(OPTIONAL_KEYS)}, **renamed}
