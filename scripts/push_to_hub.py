"""Stage a dual checkpoint with its code, card, maps and results, and push it to the Hub in one commit.

    python scripts/push_to_hub.py --checkpoint outputs/lite0-dualsig --repo_id user/lite0-dualsig
    python scripts/push_to_hub.py --checkpoint outputs/lite0-dualsig --repo_id user/x --dry_run   # stage only
The token comes from --hub_token, HF_TOKEN or `hf auth login`; without one the script stops before any work.
"""

import json
import os
import sys
from dataclasses import dataclass, field

# Light imports only up here, so that `--help` imports no torch; the rest inside the functions.
from transformers import HfArgumentParser

from hf_dualsig.data.splits import DataArguments
from hf_dualsig.files import check_writable


@dataclass
class PushArguments:
    checkpoint: str = field(default="outputs/lite0-dualsig", metadata={"help": "The dual checkpoint folder."})
    repo_id: str = field(default="", metadata={"help": "user/name of the Hub repo."})
    results: str | None = field(default=None, metadata={"help": "results.json (default: <checkpoint>/eval/)."})
    stage_dir: str | None = field(default=None, metadata={"help": "Where to stage (default: <checkpoint>/hub)."})
    dry_run: bool = field(default=False, metadata={"help": "Stage the folder, upload nothing."})
    private: bool = False
    revision: str | None = None
    commit_message: str | None = None
    hub_token: str | None = None
    num_gallery: int = field(default=4, metadata={"help": "Images of the test split in the card's gallery."})
    gallery_split: str = "test"
    save_scoremaps: bool = field(default=False, metadata={"help": "Also push the gallery's score maps (.npz)."})
    base_model: str | None = None
    space_id: str | None = field(default=None, metadata={"help": "A Space (owner/name) the card links to."})


def check_before_work(push: PushArguments, stage_dir: str) -> str | None:
    """Repo id, checkpoint and staging folder (never one holding the checkpoint), and the token, before any work."""
    from hf_dualsig.hub import check_repo_id, check_stage_dir, require_token

    if not push.repo_id:
        raise ValueError("--repo_id user/name is required (it also names the model in the card).")
    check_repo_id(push.repo_id, "--repo_id")
    if not os.path.isfile(os.path.join(push.checkpoint, "config.json")):
        raise ValueError(f"--checkpoint {push.checkpoint}: no config.json there; pass the dual checkpoint's folder.")
    check_stage_dir(stage_dir, push.checkpoint)
    check_writable(os.path.dirname(os.path.abspath(stage_dir)), "--stage_dir")
    return None if push.dry_run else require_token(push.hub_token)


def main(argv=None):
    push, data = HfArgumentParser((PushArguments, DataArguments)).parse_args_into_dataclasses(args=argv)
    stage_dir = push.stage_dir or os.path.join(push.checkpoint, "hub")
    token = check_before_work(push, stage_dir)
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hf_dualsig
    from hf_dualsig.data.splits import load_split
    from hf_dualsig.hub import publish

    hf_dualsig.register_auto_classes()  # AutoModelForImageClassification then loads dual checkpoints
    model = AutoModelForImageClassification.from_pretrained(push.checkpoint)
    processor = AutoImageProcessor.from_pretrained(push.checkpoint)
    results_path = push.results or os.path.join(push.checkpoint, "eval", "results.json")
    results = json.load(open(results_path)) if os.path.isfile(results_path) else None
    gallery = load_split(data, push.gallery_split) if push.num_gallery else None
    training_args = os.path.join(push.checkpoint, "training_args.json")
    training = open(training_args).read() if os.path.isfile(training_args) else "See the repository that produced it."
    outcome = publish(
        model,
        processor,
        push.repo_id,
        stage_dir,
        results=results,
        gallery_dataset=gallery,
        num_gallery=push.num_gallery,
        training=training,
        base_model=push.base_model,
        dataset_name=data.dataset,
        dry_run=push.dry_run,
        token=token,
        private=push.private,
        revision=push.revision,
        commit_message=push.commit_message,
        save_scoremaps=push.save_scoremaps,
        space_id=push.space_id,
    )
    print(json.dumps(outcome, indent=2))


if __name__ == "__main__":
    sys.exit(main())
