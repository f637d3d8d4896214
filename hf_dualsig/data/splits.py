"""Where the data comes from: `DataArguments` (command-line options) and loading one split in the common schema."""

import os
from dataclasses import dataclass, field, fields

from .synthetic import SyntheticWSOLConfig, load_synthetic_wsol

_SYNTHETIC = {f"synthetic_{f.name}": f for f in fields(SyntheticWSOLConfig) if f.name != "image_size"}


@dataclass
class DataArguments:
    """Data options of scripts/train.py, evaluate.py, explain.py and push_to_hub.py."""

    dataset: str = field(
        default="synthetic",
        metadata={
            "help": "synthetic | wsol (wsolevaluation layout, see --metadata_dir) | a load_dataset path or hub id."
        },
    )
    data_dir: str | None = field(default=None, metadata={"help": "data_dir / image root for load_dataset or wsol."})
    data_files: str | None = field(default=None, metadata={"help": "data_files for load_dataset (e.g. parquet files)."})
    metadata_dir: str | None = field(
        default=None, metadata={"help": "wsol: metadata/<dataset> with one folder per split."}
    )
    image_column: str = "image"
    label_column: str = "label"
    bbox_column: str | None = None
    train_split: str = "train"
    eval_split: str = "validation"
    image_size: int = field(
        default=SyntheticWSOLConfig.image_size, metadata={"help": "Side of the synthetic images, in pixels."}
    )
    # The synthetic set's sizes and seed: SyntheticWSOLConfig's fields, prefixed, with its defaults.
    synthetic_num_train: int = SyntheticWSOLConfig.num_train
    synthetic_num_val: int = SyntheticWSOLConfig.num_val
    synthetic_num_test: int = SyntheticWSOLConfig.num_test
    synthetic_num_classes: int = SyntheticWSOLConfig.num_classes
    synthetic_seed: int = SyntheticWSOLConfig.seed

    def synthetic_config(self) -> SyntheticWSOLConfig:
        """The `SyntheticWSOLConfig` these options describe."""
        values = {f.name: getattr(self, name) for name, f in _SYNTHETIC.items()}
        return SyntheticWSOLConfig(image_size=self.image_size, **values)


def load_split(data: DataArguments, split: str):
    """One split of the chosen source in the common schema (image, label, boxes, optional masks)."""
    from .loaders import load_image_dataset, load_wsol_metadata  # imports `datasets`: here, not for --help

    if data.dataset == "synthetic":
        synthetic = load_synthetic_wsol(data.synthetic_config())
        if split not in synthetic:
            raise ValueError(f"split {split!r}: the synthetic set has {list(synthetic)}.")
        return synthetic[split]
    if data.dataset == "wsol":
        if not data.metadata_dir or not data.data_dir:
            raise ValueError("--dataset wsol needs --metadata_dir (metadata/<dataset>) and --data_dir (image root).")
        return load_wsol_metadata(os.path.join(data.metadata_dir, split), data.data_dir)
    kwargs = {k: v for k, v in (("data_dir", data.data_dir), ("data_files", data.data_files)) if v}
    return load_image_dataset(data.dataset, split, data.image_column, data.label_column, data.bbox_column, **kwargs)


def load_splits(data: DataArguments) -> dict:
    """{"train": ..., "eval": ...} for the training and evaluation splits of the chosen source."""
    return {"train": load_split(data, data.train_split), "eval": load_split(data, data.eval_split)}
