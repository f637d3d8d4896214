"""Evaluate both heads of a dual checkpoint (or any supported classifier, softmax only): accuracy, WSOL metrics
(MaxBoxAcc, MaxBoxAccV2, Top-1/GT-known Loc, PxAP) and fidelity, as results.json, results.md and PNG curves.

    python scripts/evaluate.py                                   # outputs/lite0-dualsig on the synthetic test split
    python scripts/evaluate.py --model_name_or_path DIR --dataset wsol --metadata_dir metadata/CUB --data_dir CUB/
    python scripts/evaluate.py --scoremap_dir DIR --metadata_dir metadata/CUB/test   # precomputed maps, no model
    accelerate launch scripts/evaluate.py ...                    # shards images across processes
"""

import json
import os
import sys
from dataclasses import dataclass, field

# Light imports only up here, so that `--help` and `--scoremap_dir` import no torch; the model path imports it inside
# `evaluate_checkpoint`.
from transformers import HfArgumentParser

from hf_dualsig.data.splits import DataArguments
from hf_dualsig.eval_arguments import EvalArguments
from hf_dualsig.files import check_writable, write_atomically, write_text


@dataclass
class Target:
    model_name_or_path: str = field(default="outputs/lite0-dualsig", metadata={"help": "Checkpoint to evaluate."})
    output_dir: str | None = field(default=None, metadata={"help": "Default: <model>/eval or <scoremap_dir>/eval."})
    scoremap_dir: str | None = field(default=None, metadata={"help": "Score precomputed .npy maps (no model)."})
    mask_root: str | None = field(default=None, metadata={"help": "Root of OpenImages mask paths (scoremap mode)."})
    use_cpu: bool = False
    push_to_hub: bool = field(default=False, metadata={"help": "Push checkpoint, results, card and maps afterwards."})
    hub_model_id: str | None = None
    hub_token: str | None = None


def check_before_work(target: Target, output_dir: str) -> str | None:
    """The checkpoint, the output folder and the Hub settings, before any image is read; returns the token."""
    from hf_dualsig.hub import check_model_source, check_repo_id, require_token

    source = target.model_name_or_path
    if source == Target.model_name_or_path and not os.path.isdir(source):
        raise ValueError(f"{source} does not exist yet: run `make demo` (scripts/train.py) first.")
    check_model_source(source)
    check_writable(output_dir, "--output_dir")
    if not target.push_to_hub:
        return None
    if not target.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id user/name.")
    check_repo_id(target.hub_model_id, "--hub_model_id")
    return require_token(target.hub_token)


def main(argv=None):
    target, data, args = HfArgumentParser((Target, DataArguments, EvalArguments)).parse_args_into_dataclasses(args=argv)
    if target.scoremap_dir:
        score_maps(target, data, args)
    else:
        evaluate_checkpoint(target, data, args)


def score_maps(target: Target, data: DataArguments, args: EvalArguments) -> None:
    """--scoremap_dir: precomputed maps against the split's metadata, no model (and no torch)."""
    from hf_dualsig.scoremaps import evaluate_scoremaps

    if not data.metadata_dir:
        raise SystemExit("--scoremap_dir needs --metadata_dir (the split's folder with image_ids.txt etc.).")
    output_dir = target.output_dir or os.path.join(target.scoremap_dir, "eval")
    results = evaluate_scoremaps(target.scoremap_dir, data.metadata_dir, args, target.mask_root)
    path = os.path.join(output_dir, "results.json")
    write_atomically(path, lambda tmp: write_text(tmp, json.dumps(results, indent=2)))
    print(f"wrote {path}")
    print(json.dumps(results["scoremaps"], indent=2))


def evaluate_checkpoint(target: Target, data: DataArguments, args: EvalArguments) -> None:
    """A checkpoint on a split: reports in the output folder, then the Hub if asked."""
    from accelerate import PartialState
    from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

    import hf_dualsig
    from hf_dualsig.data.loaders import check_split
    from hf_dualsig.data.splits import load_split
    from hf_dualsig.evaluation import run_evaluation
    from hf_dualsig.hub import publish

    hf_dualsig.register_auto_classes()  # AutoConfig / AutoModelForImageClassification then load dual checkpoints
    output_dir = target.output_dir or os.path.join(target.model_name_or_path, "eval")
    token = check_before_work(target, output_dir)
    num_labels = AutoConfig.from_pretrained(target.model_name_or_path).num_labels
    dataset = check_split(load_split(data, args.test_split), args.test_split, num_labels, drop_undecodable=False)
    model = AutoModelForImageClassification.from_pretrained(target.model_name_or_path)
    if not target.use_cpu:
        model.to(PartialState().device)
    processor = AutoImageProcessor.from_pretrained(target.model_name_or_path)
    results = run_evaluation(model, processor, dataset, args, output_dir)
    if target.push_to_hub and PartialState().is_main_process:
        print(
            publish(
                model,
                processor,
                target.hub_model_id,
                os.path.join(output_dir, "hub"),
                results=results,
                gallery_dataset=dataset,
                base_model=target.model_name_or_path,
                dataset_name=data.dataset,
                token=token,
            )
        )


if __name__ == "__main__":
    sys.exit(main())
