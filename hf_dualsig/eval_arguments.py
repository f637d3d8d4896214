"""`EvalArguments`, the options of scripts/evaluate.py and of the evaluation that ends scripts/train.py, and the names
they are checked against; light: it imports neither torch nor transformers, so that `--help`, argument checks and
scoring precomputed maps start fast.

The CAM method and head names come from cam.py itself, the one list of them, read from its source rather than
imported (importing cam.py imports torch). cam.py keeps them rather than importing a module of names because it is
shipped with every checkpoint: a relative import there would ship one more file.
"""

import ast
from dataclasses import dataclass, field
from importlib import resources


def _cam_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The keys of `cam.CAM_METHODS` and the value of `cam.HEADS`, from the literals that define them in cam.py."""
    found = {}
    for node in ast.parse(resources.files(__package__).joinpath("cam.py").read_text(encoding="utf-8")).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else getattr(node, "target", None)
        if isinstance(target, ast.Name) and target.id == "HEADS":
            found["HEADS"] = tuple(ast.literal_eval(node.value))
        elif isinstance(target, ast.Name) and target.id == "CAM_METHODS" and isinstance(node.value, ast.Dict):
            found["CAM_METHODS"] = tuple(ast.literal_eval(key) for key in node.value.keys)
    if set(found) != {"CAM_METHODS", "HEADS"}:
        raise ImportError(
            "cam.py no longer defines CAM_METHODS as a dict literal with string keys and HEADS as a tuple literal: "
            "update hf_dualsig/eval_arguments.py, which reads the names from there."
        )
    return found["CAM_METHODS"], found["HEADS"]


CAM_METHOD_NAMES, HEADS = _cam_names()

PAPER_METHODS = ("cam", "gradcam", "gradcam++", "xgradcam", "layercam")


@dataclass
class EvalArguments:
    """What to evaluate and how (wsolevaluation's protocol unless changed): the options of scripts/evaluate.py and of
    the evaluation that ends scripts/train.py. Every value is checked on construction, before any work."""

    test_split: str = field(default="test", metadata={"help": "Split to evaluate."})
    methods: str = field(default=",".join(PAPER_METHODS), metadata={"help": "Comma-separated CAM methods."})
    heads: str = field(default="softmax,sigmoid", metadata={"help": "Comma-separated heads."})
    eval_size: int = field(default=224, metadata={"help": "Resolution of the WSOL metrics (reference: 224)."})
    cam_threshold_interval: float = field(default=0.001, metadata={"help": "Step of the CAM thresholds in [0, 1)."})
    fixed_threshold: float = field(default=0.2, metadata={"help": "CAM threshold of Top-1 and GT-known Loc."})
    first_gt_box_only: bool = field(default=False, metadata={"help": "Top-1/GT-known against the first GT box only."})
    fidelity: bool = field(default=True, metadata={"help": "Average Drop, Increase in Confidence, insertion/deletion."})
    fidelity_head: str = field(default="softmax", metadata={"help": "Head whose probabilities score fidelity."})
    insertion_deletion_steps: int = field(
        default=0,
        metadata={"help": "Steps of insertion/deletion AUC (0: skip; the paper reports AD and IC only; 16 is common)."},
    )
    eval_batch_size: int = field(default=32, metadata={"help": "Images per CAM batch."})
    eval_num_workers: int = field(
        default=0, metadata={"help": "DataLoader workers that read and transform test images (0: the main process)."}
    )
    metric_workers: int = field(
        default=0,
        metadata={"help": "Threads that score maps while the next batch's maps are drawn (0: score in turn)."},
    )
    save_scoremaps: bool = field(default=False, metadata={"help": "Also save every map as .npy (wsolevaluation)."})
    max_eval_images: int | None = field(default=None, metadata={"help": "Evaluate the first N images only."})
    evaluate_after_training: bool = field(
        default=True, metadata={"help": "scripts/train.py: evaluate the dual model on the test split at the end."}
    )

    def __post_init__(self):
        unknown = [m for m in self.method_names if m not in CAM_METHOD_NAMES]
        if unknown or not self.method_names:
            raise ValueError(
                f"--methods {self.methods!r}: unknown {unknown}; available: {', '.join(CAM_METHOD_NAMES)}."
            )
        bad_heads = [h for h in self.head_names if h not in HEADS]
        if bad_heads or not self.head_names:
            raise ValueError(f"--heads {self.heads!r}: expected a comma-separated subset of {', '.join(HEADS)}.")
        if self.fidelity_head not in HEADS:
            raise ValueError(f"--fidelity_head {self.fidelity_head!r}: expected one of {', '.join(HEADS)}.")
        for name in ("eval_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name} {getattr(self, name)}: must be a positive integer.")
        for name in ("eval_num_workers", "metric_workers"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} {getattr(self, name)}: must be >= 0.")
        if not 0 < self.cam_threshold_interval < 1:
            raise ValueError(f"--cam_threshold_interval {self.cam_threshold_interval}: must lie in (0, 1).")
        if not 0 <= self.fixed_threshold < 1:
            raise ValueError(f"--fixed_threshold {self.fixed_threshold}: must lie in [0, 1).")
        if self.insertion_deletion_steps < 0:
            raise ValueError(f"--insertion_deletion_steps {self.insertion_deletion_steps}: must be >= 0.")
        if self.max_eval_images is not None and self.max_eval_images < 1:
            raise ValueError(f"--max_eval_images {self.max_eval_images}: must be a positive integer.")

    @property
    def method_names(self) -> tuple[str, ...]:
        return tuple(m.strip() for m in self.methods.split(",") if m.strip())

    @property
    def head_names(self) -> tuple[str, ...]:
        return tuple(h.strip() for h in self.heads.split(",") if h.strip())
