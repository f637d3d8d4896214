"""Configuration of the dual-branch sigmoid wrapper (shipped with every checkpoint)."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_wsol_backbones import WSOL_CONFIGS  # noqa: F401  (registers the WSOL backbones' configs)

POS_WEIGHT_MODES = ("num_classes_minus_one", "inverse_frequency", "none")
SIGMOID_HEAD_INITS = ("random", "clone")


@strict
class DualSigmoidConfig(PreTrainedConfig):
    r"""
    Configuration of [`DualSigmoidForImageClassification`]: a trained image classifier whose classification head is
    cloned into a parallel, per-class sigmoid branch (Oh & Noh, "Beyond Softmax", BMVC 2025).

    Args:
        backbone_config (`dict` or `PreTrainedConfig`):
            The full config of the wrapped `*ForImageClassification` model (it keeps its own `model_type`).
        head_paths (`list[str]`, *optional*):
            Dotted paths of the classification head(s) inside the wrapped classifier; several heads are averaged
            (DeiT with teacher). Filled in from the backbone family when omitted.
        pos_weight (`str` or `float`, *optional*, defaults to `"num_classes_minus_one"`):
            Weight of the positive term of the binary cross-entropy: `"num_classes_minus_one"` (C - 1, the paper),
            `"inverse_frequency"` (per class, negatives / positives from `class_counts`), `"none"` (1) or a number.
        class_counts (`list[int]`, *optional*):
            Training-set count of each class, needed by `pos_weight="inverse_frequency"`.
        truncate_negative_weights (`bool`, *optional*, defaults to `True`):
            Clamp negative channel weights at 0 when the CAM engine draws maps from the sigmoid branch.
        sigmoid_head_init (`str`, *optional*, defaults to `"random"`):
            How a new sigmoid branch starts: `"random"` (the authors' code: linear weights N(0, 0.01), bias 0) or
            `"clone"` (a copy of the softmax head's weights).
        sigmoid_head_trained (`bool`, *optional*, defaults to `False`):
            Whether the sigmoid branch has been trained (set by `DualSigmoidTrainer`); an untrained branch draws
            maps from its initial weights.

    `num_labels`, `id2label` and `label2id` mirror the backbone config; an override that disagrees is an error.
    """

    model_type = "dualsig"
    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="convnext")}

    backbone_config: dict | PreTrainedConfig | None = None
    head_paths: list[str] | None = None
    pos_weight: str | float | int = "num_classes_minus_one"
    class_counts: list[int] | None = None
    truncate_negative_weights: bool = True
    sigmoid_head_init: str = "random"
    sigmoid_head_trained: bool = False

    def __post_init__(self, **kwargs):
        requested_num_labels = kwargs.pop("num_labels", None)
        requested_id2label = self.id2label
        super().__post_init__(**kwargs)
        self._sync_labels(requested_id2label, requested_num_labels)
        self._validate_pos_weight()
        if self.sigmoid_head_init not in SIGMOID_HEAD_INITS:
            raise ValueError(f"sigmoid_head_init={self.sigmoid_head_init!r}: expected one of {SIGMOID_HEAD_INITS}.")

    def _sync_labels(self, requested_id2label: dict | None, requested_num_labels: int | None) -> None:
        backbone_labels = {int(k): v for k, v in (self.backbone_config.id2label or {}).items()}
        if requested_id2label is not None and {int(k): v for k, v in requested_id2label.items()} != backbone_labels:
            raise ValueError(
                f"id2label={requested_id2label} disagrees with the wrapped classifier's id2label={backbone_labels}; "
                "change the labels on the classifier's config (backbone_config), not on the wrapper."
            )
        if requested_num_labels is not None and requested_num_labels != len(backbone_labels):
            raise ValueError(
                f"num_labels={requested_num_labels} disagrees with the wrapped classifier, which has "
                f"{len(backbone_labels)} labels; the sigmoid branch is a clone of its head, so drop the override "
                "or fine-tune a classifier with the label set you want first."
            )
        self.id2label = backbone_labels
        self.label2id = {v: k for k, v in backbone_labels.items()}

    def _validate_pos_weight(self) -> None:
        if isinstance(self.pos_weight, bool) or not (
            self.pos_weight in POS_WEIGHT_MODES or isinstance(self.pos_weight, (int, float))
        ):
            raise ValueError(f"pos_weight={self.pos_weight!r}: expected one of {POS_WEIGHT_MODES} or a number.")
        if isinstance(self.pos_weight, (int, float)) and self.pos_weight <= 0:
            raise ValueError(f"pos_weight={self.pos_weight}: a numeric pos_weight must be > 0.")
        if self.class_counts is not None and len(self.class_counts) != len(self.id2label):
            raise ValueError(
                f"class_counts has {len(self.class_counts)} entries but the classifier has {len(self.id2label)} labels."
            )


__all__ = ["DualSigmoidConfig"]
