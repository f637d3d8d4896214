"""Dual-branch sigmoid wrapper around any supported image classifier (shipped with every checkpoint).

Imports only torch, transformers and its sibling files, so that a checkpoint loads with `trust_remote_code=True`
where the `hf_dualsig` package is not installed.
"""

import copy
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModelForImageClassification, PreTrainedModel
from transformers import initialization as init
from transformers.initialization import no_init_weights
from transformers.utils import ModelOutput

from .backbones import get_adapter, resolve_module
from .cam import CAMOutput, explain
from .configuration_dualsig import DualSigmoidConfig
from .losses import class_balanced_bce, resolve_pos_weight
from .modeling_wsol_backbones import WSOL_MODELS  # noqa: F401  (registers the WSOL backbones' models)


logger = logging.getLogger(__name__)
RANDOM_INIT_STD = 0.01  # the authors' `initialize_weights` for nn.Linear: N(0, 0.01), bias 0

AUTO_MAP = {
    "AutoConfig": "configuration_dualsig.DualSigmoidConfig",
    "AutoModel": "modeling_dualsig.DualSigmoidForImageClassification",
    "AutoModelForImageClassification": "modeling_dualsig.DualSigmoidForImageClassification",
}


@dataclass
class DualSigmoidOutput(ModelOutput):
    r"""
    Output of [`DualSigmoidForImageClassification`].

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*, returned when `labels` are given):
            Class-balanced binary cross-entropy of `sigmoid_logits` against one-hot labels.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            The original (softmax) head's logits, exactly those of the wrapped classifier.
        sigmoid_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`):
            The sigmoid branch's logits (apply `torch.sigmoid` for per-class probabilities).
        head_inputs (`tuple(torch.FloatTensor)`):
            What fed each classification head (pooled features), one tensor per head.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            The wrapped classifier's hidden states, when `output_hidden_states=True`.
        attentions (`tuple(torch.FloatTensor)`, *optional*):
            The wrapped classifier's attention maps, when `output_attentions=True` (transformers only).
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    sigmoid_logits: torch.FloatTensor | None = None
    head_inputs: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class DualSigmoidForImageClassification(PreTrainedModel):
    """A frozen image classifier plus a trainable sigmoid clone of its head.

    `logits` come from the untouched softmax head, so predictions and accuracy are the original model's;
    `sigmoid_logits` come from `sigmoid_head`, the only trainable part, which the CAM engine explains.
    """

    config_class = DualSigmoidConfig
    config: DualSigmoidConfig
    _auto_class = "AutoModelForImageClassification"  # save_pretrained ships this file and its siblings
    base_model_prefix = "dualsig"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    accepts_loss_kwargs = True  # Trainer passes num_items_in_batch (exact loss under accumulation and DDP)

    def __init__(self, config: DualSigmoidConfig, classifier: PreTrainedModel | None = None):
        super().__init__(config)
        if classifier is None:
            classifier = AutoModelForImageClassification.from_config(config.backbone_config)
        self.classifier = classifier
        self.adapter = get_adapter(self.classifier)
        if config.head_paths is None:
            config.head_paths = list(self.adapter.head_paths)
        self.sigmoid_head = nn.ModuleList(copy.deepcopy(head) for head in self.softmax_heads)
        for tensor in [*self.sigmoid_head.modules(), *self.sigmoid_head.parameters(), *self.sigmoid_head.buffers()]:
            tensor.__dict__.pop("_is_hf_initialized", None)  # copied flags would stop `_init_weights` from running
        self._freeze_classifier()
        self.post_init()

    @classmethod
    def from_classifier(
        cls, classifier: PreTrainedModel | str | os.PathLike, config_kwargs: dict | None = None, **load_kwargs
    ) -> "DualSigmoidForImageClassification":
        """Wrap a trained classifier (instance, hub id or local path): add a sigmoid head of its head's shape,
        initialised as `config.sigmoid_head_init` says (default: N(0, 0.01) weights, zero bias, from torch's global
        generator), and freeze everything else.

        `config_kwargs` go to [`DualSigmoidConfig`] (`pos_weight`, `sigmoid_head_init`, ...);
        `load_kwargs` go to `AutoModelForImageClassification.from_pretrained` when a hub id or path is given.
        The classifier instance is copied, never modified.
        """
        if isinstance(classifier, (str, os.PathLike)):
            classifier = AutoModelForImageClassification.from_pretrained(classifier, **load_kwargs)
        if not isinstance(classifier, PreTrainedModel):
            raise TypeError(
                f"from_classifier expects a transformers `*ForImageClassification` model, a hub id or a path; "
                f"got {type(classifier).__name__}. Wrap timm models with TimmWrapperForImageClassification."
            )
        if isinstance(classifier, cls):
            raise TypeError("This model is already a DualSigmoidForImageClassification; use it as it is.")
        get_adapter(classifier)  # fails early, listing the supported families
        backbone_config = copy.deepcopy(classifier.config)
        backbone_config.architectures = [type(classifier).__name__]
        config = DualSigmoidConfig(backbone_config=backbone_config, **(config_kwargs or {}))
        with no_init_weights():
            model = cls(config, classifier=copy.deepcopy(classifier))
        model.reset_sigmoid_head()
        return model.to(classifier.device)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Load a dual checkpoint. One without sigmoid-head weights gets a copy of its softmax head (a warning says
        so), whatever `sigmoid_head_init` says: the branch of a checkpoint is never random by accident."""
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        if any(key.startswith("sigmoid_head.") for key in info["missing_keys"]):
            logger.warning("The checkpoint has no sigmoid-head weights: the branch starts as a copy of the softmax head.")
            model.reset_sigmoid_head("clone")
            model.config.sigmoid_head_trained = False
        model._freeze_classifier()  # loading may replace parameters, dropping their requires_grad flags
        return (model, info) if wants_info else model

    @torch.no_grad()
    def reset_sigmoid_head(self, init: str | None = None) -> None:
        """Re-initialise the sigmoid branch: `"random"` (linear weights N(0, 0.01), biases 0; other parameters copied
        from the softmax head) or `"clone"` (the softmax head's weights); default `config.sigmoid_head_init`."""
        init = init or self.config.sigmoid_head_init
        if init not in ("random", "clone"):
            raise ValueError(f"init={init!r}: expected 'random' or 'clone'.")
        for sigmoid_head, softmax_head in zip(self.sigmoid_head, self.softmax_heads):
            sigmoid_head.load_state_dict(softmax_head.state_dict())
            if init == "random":
                for module in sigmoid_head.modules():
                    if isinstance(module, nn.Linear):
                        module.weight.normal_(0.0, RANDOM_INIT_STD)
                        if module.bias is not None:
                            module.bias.zero_()

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save weights (safetensors), config and the code files, so that `AutoModel`,
        `AutoModelForImageClassification` and `AutoConfig` load it with `trust_remote_code=True` anywhere."""
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, **kwargs)

    @property
    def softmax_heads(self) -> list[nn.Module]:
        """The wrapped classifier's own classification head(s)."""
        return [resolve_module(self.classifier, path) for path in self.config.head_paths]

    def _freeze_classifier(self) -> None:
        for head, path in zip(self.softmax_heads, self.config.head_paths):
            if not any(isinstance(m, nn.Linear) for m in head.modules()):
                raise ValueError(
                    f"{type(self.classifier).__name__} has no classification head at '{path}' (found "
                    f"{type(head).__name__}); load it with num_labels > 0 so that it has one."
                )
        self.classifier.requires_grad_(False)
        self.classifier.eval()

    def train(self, mode: bool = True) -> "DualSigmoidForImageClassification":
        """Switch the sigmoid head's mode; the frozen classifier (BatchNorm, dropout) always stays in eval mode."""
        super().train(mode)
        self.classifier.eval()
        return self

    def _init_weights(self, module: nn.Module) -> None:
        """A sigmoid-head module starts as `config.sigmoid_head_init` says: linear layers N(0, 0.01) with zero bias
        ("random"), anything else (and everything with "clone") as a copy of its softmax twin."""
        twin = self._softmax_twin(module)
        if twin is None:
            return
        if isinstance(module, nn.Linear) and self.config.sigmoid_head_init == "random":
            init.normal_(module.weight, 0.0, RANDOM_INIT_STD)
            if module.bias is not None:
                init.zeros_(module.bias)
            return
        for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
            init.copy_(tensor, getattr(twin, name))

    def _softmax_twin(self, module: nn.Module) -> nn.Module | None:
        for sigmoid_head, softmax_head in zip(self.sigmoid_head, self.softmax_heads):
            twins = dict(softmax_head.named_modules())
            for name, candidate in sigmoid_head.named_modules():
                if candidate is module:
                    return twins[name]
        return None

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        head_inputs: tuple[torch.Tensor, ...] | None = None,
        num_items_in_batch: int | torch.Tensor | None = None,
    ) -> DualSigmoidOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, num_labels)`; when given, `loss` is the class-balanced BCE of `sigmoid_logits`.
        head_inputs (`tuple(torch.FloatTensor)`, *optional*):
            Precomputed inputs of the classification head(s) (`DualSigmoidOutput.head_inputs`), instead of
            `pixel_values`: both heads run on them and the frozen backbone is skipped (the feature-cache path).
        num_items_in_batch (`int`, *optional*):
            Samples in the whole (accumulated, all-process) batch; `Trainer` passes it so that the loss is exact
            under gradient accumulation and data parallelism.
        """
        if labels is not None:
            self._check_labels(labels, head_inputs[0] if head_inputs is not None else pixel_values)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        if head_inputs is not None:
            if pixel_values is not None:
                raise ValueError("Pass either pixel_values or head_inputs, not both.")
            return self._forward_from_head_inputs(tuple(head_inputs), labels, num_items_in_batch, return_dict)
        self._check_pixel_values(pixel_values)
        pixel_values = pixel_values.to(self.dtype)  # float64 (or float32 for a half model) in, the model's dtype
        options = {
            "output_hidden_states": output_hidden_states,
            "output_attentions": output_attentions,
            "interpolate_pos_encoding": interpolate_pos_encoding,
        }
        heads = self.softmax_heads
        head_inputs: list[torch.Tensor | None] = [None] * len(heads)

        def capture(index):
            def hook(module, args, output):
                head_inputs[index] = args[0]

            return hook

        handles = [head.register_forward_hook(capture(i)) for i, head in enumerate(heads)]
        try:
            outputs = self.classifier(
                pixel_values=pixel_values, return_dict=True, **{k: v for k, v in options.items() if v is not None}
            )
        finally:
            for handle in handles:
                handle.remove()
        sigmoid_logits = _mean_of_heads(self.sigmoid_head, head_inputs)
        output = DualSigmoidOutput(
            loss=self._loss(sigmoid_logits, labels, num_items_in_batch),
            logits=outputs.logits,
            sigmoid_logits=sigmoid_logits,
            head_inputs=tuple(head_inputs),
            hidden_states=getattr(outputs, "hidden_states", None),
            attentions=getattr(outputs, "attentions", None),
        )
        return output if return_dict else output.to_tuple()

    def _forward_from_head_inputs(self, head_inputs, labels, num_items_in_batch, return_dict):
        if len(head_inputs) != len(self.config.head_paths):
            raise ValueError(
                f"head_inputs has {len(head_inputs)} tensors but the model has {len(self.config.head_paths)} head(s)."
            )
        sigmoid_logits = _mean_of_heads(self.sigmoid_head, head_inputs)
        output = DualSigmoidOutput(
            loss=self._loss(sigmoid_logits, labels, num_items_in_batch),
            logits=_mean_of_heads(self.softmax_heads, head_inputs),
            sigmoid_logits=sigmoid_logits,
            head_inputs=head_inputs,
        )
        return output if return_dict else output.to_tuple()

    def _loss(self, sigmoid_logits, labels, num_items_in_batch) -> torch.Tensor | None:
        if labels is None:
            return None
        pos_weight = resolve_pos_weight(
            self.config.pos_weight, self.config.num_labels, self.config.class_counts, sigmoid_logits.device
        )
        return class_balanced_bce(sigmoid_logits, labels, pos_weight, num_items_in_batch)

    def explain(self, pixel_values: torch.Tensor, methods=("gradcam",), heads=("sigmoid",), **kwargs) -> CAMOutput:
        """Class activation maps of `methods` x `heads` from one shared pass; see `cam.explain` for the options
        (targets, top_k, target_layer, normalize, truncate_negative_weights, upsample, return_raw)."""
        return explain(self, pixel_values, methods=methods, heads=heads, **kwargs)

    def _check_pixel_values(self, pixel_values) -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(
                f"pixel_values must be a torch.Tensor of shape (batch, channels, height, width); got "
                f"{type(pixel_values).__name__}. Use the model's image processor with return_tensors='pt'."
            )
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must be 4-D (batch, channels, height, width); got shape {tuple(pixel_values.shape)}."
                " For a single image add a batch dimension: pixel_values.unsqueeze(0)."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values has dtype {pixel_values.dtype}; the model expects normalised floating-point images: "
                "use the model's image processor (return_tensors='pt') rather than raw uint8 pixels."
            )
        channels = getattr(self.config.backbone_config, "num_channels", None)
        if channels is not None and pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[1]} channels (shape {tuple(pixel_values.shape)}) but the "
                f"model expects {channels}; pass channels-first images (B, {channels}, H, W)."
            )

    def _check_labels(self, labels, inputs) -> None:
        if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError(f"labels must be an integer tensor of class indices; got {_describe(labels)}.")
        if labels.ndim != 1:
            raise ValueError(f"labels must be 1-D (batch,) class indices; got shape {tuple(labels.shape)}.")
        if isinstance(inputs, torch.Tensor) and inputs.ndim and len(labels) != len(inputs):
            raise ValueError(
                f"labels has {len(labels)} entries but the batch has {len(inputs)} images; pass one label per image."
            )
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.config.num_labels):
            raise ValueError(
                f"labels must lie in [0, {self.config.num_labels}); got values from {labels.min().item()} to "
                f"{labels.max().item()}. Map the dataset's labels onto the model's label2id first."
            )


def _mean_of_heads(heads, head_inputs) -> torch.Tensor:
    """Heads applied to their inputs; several heads are averaged, as DeiT-with-teacher averages them."""
    logits = [head(features) for head, features in zip(heads, head_inputs)]
    return logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)


def _describe(value) -> str:
    return f"tensor of dtype {value.dtype}" if isinstance(value, torch.Tensor) else type(value).__name__


__all__ = ["DualSigmoidForImageClassification", "DualSigmoidOutput"]
