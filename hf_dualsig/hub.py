"""Checkpoints, code, maps and model cards staged in one folder and pushed to the Hub in one commit."""

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import pipeline

from . import register_auto_classes
from .cam import available_heads, explain
from .data.transforms import transform_from_processor
from .evaluation import markdown_table
from .files import pid_alive
from .viz import one_per_class, overlay_grid, save_png

TEMPLATE = Path(__file__).resolve().parent / "templates" / "dualsig_card.md"  # ships in the wheel
CARD_METRICS = {
    "top1_loc": "Top-1 Loc",
    "gt_known_loc": "GT-known Loc",
    "maxboxacc_v2": "MaxBoxAccV2",
    "pxap": "PxAP",
    "average_drop": "Average Drop",
    "increase_in_confidence": "Increase in Confidence",
}
GALLERY_METHODS = ("cam", "gradcam")
STAGE_MARKER = ".hf_dualsig_staged"  # marks a folder made by `stage`, the only kind it ever replaces


def check_repo_id(repo_id: str, what: str = "repo id") -> None:
    """A ValueError naming `what` when `repo_id` is not a valid Hub repo id (`huggingface_hub`'s own rules)."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{what} {repo_id!r} is not a valid Hub repo id: {error}") from None


def check_model_source(source: str, what: str = "--model_name_or_path") -> None:
    """A ValueError naming `what` when `source` is neither an existing folder nor a valid Hub repo id."""
    if os.path.isdir(source):
        return
    try:
        validate_repo_id(source)
    except HFValidationError:
        raise ValueError(f"{what} {source}: no such folder, and not a Hub repo id (user/name).") from None


def require_token(token: str | None = None) -> str:
    """The Hugging Face token (argument, HF_TOKEN, or the saved login), or a ValueError saying how to get one."""
    token = token or get_token()
    if not token:
        raise ValueError(
            "No Hugging Face token found: run `hf auth login`, set HF_TOKEN, or pass --hub_token. "
            "Use --dry_run (or --stage_dir DIR) to stage the folder without uploading."
        )
    return token


def eval_results(results: dict, dataset_name: str) -> list[EvalResult]:
    """model-index entries: Top-1 Cls per head and the localisation/fidelity metrics per method and head."""
    entries = [
        EvalResult(
            task_type="image-classification",
            dataset_type=dataset_name,
            dataset_name=dataset_name,
            metric_type="accuracy",
            metric_name=f"Top-1 Cls ({head} head)",
            metric_value=round(value, 4),
        )
        for head, value in results.get("top1_cls", {}).items()
    ]
    for method, per_head in results.get("methods", {}).items():
        for head, metrics in per_head.items():
            for key, title in CARD_METRICS.items():
                if key in metrics:
                    entries.append(
                        EvalResult(
                            task_type="image-classification",
                            dataset_type=dataset_name,
                            dataset_name=dataset_name,
                            metric_type=key,
                            metric_name=f"{title} ({method}, {head} head)",
                            metric_value=round(metrics[key], 4),
                        )
                    )
    return entries


def build_card(
    model,
    repo_id: str,
    results: dict | None,
    gallery: list[dict],
    training: str,
    base_model: str | None,
    dataset_name: str,
    license: str = "apache-2.0",
    template_path: Path = TEMPLATE,
    *,
    space_id: str | None = None,
) -> ModelCard:
    """The model card: metadata with model-index results, the method, results table, usage, gallery, training;
    with `space_id` (owner/name), a link to the Space that demos the model."""
    if space_id is not None and len(space_id.split("/")) != 2:
        raise ValueError(f"space_id={space_id!r}: expected a Space id of the form owner/name.")
    if not Path(template_path).is_file():
        raise ValueError(
            f"card template not found at {template_path}; pass template_path= a Jinja card template "
            "(hf_dualsig/templates/dualsig_card.md is the default)."
        )
    settings = (results or {}).get("settings", {})
    data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        tags=["hf-dualsig", "class-activation-maps", "explainability", "weakly-supervised-object-localization"],
        license=license,
        base_model=base_model,
        datasets=[dataset_name] if "/" in dataset_name else None,
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(results, dataset_name) if results else None,
    )
    return ModelCard.from_template(
        data,
        template_path=str(template_path),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        base_model=base_model,
        truncate=model.config.truncate_negative_weights,
        results_table=markdown_table(results) if results else "Not evaluated yet: run scripts/evaluate.py.",
        eval_size=settings.get("eval_size", 224),
        fixed_threshold=settings.get("fixed_threshold", 0.2),
        gt_boxes=settings.get("top1_gt_known_boxes", "any GT box"),
        fidelity_head=settings.get("fidelity_head", "softmax"),
        gallery=gallery,
        training=training,
        cam_layer=model.adapter.cam_layer or "the last",
        space_id=space_id,
    )


def stage(
    model,
    processor,
    stage_dir: str,
    repo_id: str,
    *,
    results: dict | None = None,
    gallery_images: list | None = None,
    gallery_titles: list[str] | None = None,
    scoremap_images: list | None = None,
    training: str = "",
    base_model: str | None = None,
    dataset_name: str = "synthetic-wsol",
    space_id: str | None = None,
) -> str:
    """Write everything a Hub repo holds into `stage_dir` (replaced atomically): weights (safetensors), config with
    auto_map and the custom pipeline, the shipped code, the image processor, README.md, results.json, maps/
    (overlay gallery PNG; with `scoremap_images`, score maps as compressed .npz with an index).

    Only a folder that staging made itself (it holds a marker file) is ever replaced; anything else at `stage_dir`
    is an error. Leftovers of an interrupted staging next to it are removed first."""
    check_stage_dir(stage_dir)
    parent = os.path.dirname(os.path.abspath(stage_dir))
    os.makedirs(parent, exist_ok=True)
    _remove_interrupted_stagings(parent)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".staging-{os.getpid()}-")
    Path(tmp, STAGE_MARKER).write_text(str(os.getpid()))
    register_auto_classes()  # the "dualsig-cam" task
    pipeline("dualsig-cam", model=model, image_processor=processor).save_pretrained(tmp)
    gallery = []
    if results:
        with open(os.path.join(tmp, "results.json"), "w") as handle:
            json.dump({k: v for k, v in results.items() if k not in ("curves", "pr_curves")}, handle, indent=2)
    maps = _maps(model, processor, gallery_images) if gallery_images else None
    if gallery_images:
        save_png(overlay_grid(gallery_images, maps, gallery_titles), os.path.join(tmp, "maps", "gallery.png"))
        gallery.append(
            {
                "path": "maps/gallery.png",
                "caption": "Each row: the image, then CAM and Grad-CAM from the softmax head and the sigmoid branch.",
            }
        )
    if scoremap_images is not None:
        same = scoremap_images is gallery_images
        _save_scoremaps(maps if same else _maps(model, processor, scoremap_images), os.path.join(tmp, "maps"))
    card = build_card(model, repo_id, results, gallery, training, base_model, dataset_name, space_id=space_id)
    card.save(os.path.join(tmp, "README.md"))
    if os.path.exists(stage_dir):
        old = tempfile.mkdtemp(dir=parent, prefix=f".staging-{os.getpid()}-old-")
        os.replace(stage_dir, os.path.join(old, "previous"))  # a folder staging made (checked above)
        os.replace(tmp, stage_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, stage_dir)
    return stage_dir


def check_stage_dir(stage_dir: str, checkpoint: str | None = None) -> None:
    """A ValueError when staging into `stage_dir` could destroy what it did not make: an existing folder without the
    staging marker (or a file), or a folder that contains, or lies inside, `checkpoint`."""
    if checkpoint is not None:
        stage, source = os.path.realpath(stage_dir), os.path.realpath(checkpoint)
        if stage == source or source.startswith(stage + os.sep):
            raise ValueError(
                f"--stage_dir {stage_dir} is (or contains) the checkpoint {checkpoint}: staging replaces its folder; "
                "choose a new folder."
            )
    if os.path.exists(stage_dir) and not os.path.isfile(os.path.join(stage_dir, STAGE_MARKER)):
        raise ValueError(
            f"--stage_dir {stage_dir} exists and was not made by hf_dualsig's staging; staging replaces its folder, "
            "so choose a new or empty-named folder (it is never deleted)."
        )


def _remove_interrupted_stagings(parent: str) -> None:
    """Remove `.staging-<pid>-*` folders of processes that died mid-staging (only folders holding our marker)."""
    for name in os.listdir(parent):
        parts = name.split("-")
        if not name.startswith(".staging-") or len(parts) < 3 or not parts[1].isdigit():
            continue
        folder = os.path.join(parent, name)
        owned = os.path.isfile(os.path.join(folder, STAGE_MARKER)) or os.path.isdir(os.path.join(folder, "previous"))
        if owned and int(parts[1]) != os.getpid() and not pid_alive(int(parts[1])):
            shutil.rmtree(folder)


def _maps(model, processor, images) -> dict:
    transform = transform_from_processor(processor)
    pixels = torch.stack([transform(image) for image in images]).to(model.device)
    heads = list(available_heads(model))
    return {k: v.cpu() for k, v in explain(model, pixels, methods=list(GALLERY_METHODS), heads=heads).items()}


def _save_scoremaps(maps: dict, folder: str) -> None:
    """The maps as float16 arrays in one compressed .npz, with a JSON index."""
    images = len(next(iter(maps.values())))
    arrays = {f"{method}__{head}": value.numpy().astype(np.float16) for (method, head), value in maps.items()}
    os.makedirs(folder, exist_ok=True)
    np.savez_compressed(os.path.join(folder, "scoremaps.npz"), **arrays)
    index = {
        "arrays": {k: list(v.shape) for k, v in arrays.items()},
        "images": images,
        "layout": "array[image index, height, width], values in [0, 1], float16",
    }
    with open(os.path.join(folder, "scoremaps_index.json"), "w") as handle:
        json.dump(index, handle, indent=2)


def upload(
    stage_dir: str,
    repo_id: str,
    token: str,
    private: bool = False,
    revision: str | None = None,
    commit_message: str = "Upload dual-sigmoid checkpoint, code, maps and card",
) -> str:
    """Create the repo if needed and upload the staged folder as one commit; a re-push updates it in place."""
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(
        folder_path=stage_dir,
        repo_id=repo_id,
        revision=revision,
        commit_message=commit_message,
        ignore_patterns=[STAGE_MARKER],
    )
    return str(getattr(info, "commit_url", info))


def publish(
    model,
    processor,
    repo_id: str,
    stage_dir: str,
    *,
    results: dict | None = None,
    gallery_dataset=None,
    num_gallery: int = 4,
    training: str = "",
    base_model: str | None = None,
    dataset_name: str = "synthetic-wsol",
    dry_run: bool = False,
    token: str | None = None,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    save_scoremaps: bool = False,
    space_id: str | None = None,
) -> dict:
    """Stage the checkpoint with its card and maps (gallery from the first `num_gallery` rows of `gallery_dataset`),
    then upload unless `dry_run`. The token is checked before any work."""
    check_repo_id(repo_id)
    check_stage_dir(stage_dir)
    token = None if dry_run else require_token(token)
    images, titles = None, None
    if gallery_dataset is not None and num_gallery:
        rows = gallery_dataset.select(one_per_class(gallery_dataset["label"], num_gallery))
        images = [image.convert("RGB") for image in rows["image"]]
        names = getattr(gallery_dataset.features["label"], "names", None)
        titles = [names[label] if names else str(label) for label in rows["label"]]
    stage(
        model,
        processor,
        stage_dir,
        repo_id,
        results=results,
        gallery_images=images,
        gallery_titles=titles,
        scoremap_images=images if save_scoremaps else None,
        training=training,
        base_model=base_model,
        dataset_name=dataset_name,
        space_id=space_id,
    )
    commit = None
    if not dry_run:
        commit = upload(stage_dir, repo_id, token, private, revision, commit_message or f"Upload {repo_id}")
    return {"stage_dir": stage_dir, "commit": commit}
