"""Overlay grids of class activation maps as PNG: rows = images, columns = methods x heads.

python scripts/explain.py                     # EfficientNet-Lite0 (converted offline) on scikit-image's photos,
                                              # plus the main job's checkpoint on synthetic test images if present
python scripts/explain.py --model_name_or_path DIR --images a.jpg b.jpg --methods gradcam,cam
python scripts/explain.py --model_name_or_path DIR --images photos/   # a folder
python scripts/explain.py --model_name_or_path DIR --dataset synthetic --split test --num_images 8
"""

import argparse
import os
from pathlib import Path

# Light imports only up here (`--help` and the argument checks import no torch); the rest inside the functions.
from PIL import Image

from hf_dualsig.eval_arguments import EvalArguments
from hf_dualsig.files import check_writable

SKIMAGE_PHOTOS = ("chelsea", "coffee", "astronaut", "rocket", "camera")
DEFAULT_CHECKPOINT = "outputs/lite0-dualsig"


def render(model, processor, images, titles, methods, heads, output, batch_size=8) -> str:
    """Explain `images` in batches and save one grid PNG."""
    import torch
    from tqdm.auto import tqdm

    from hf_dualsig import available_heads, explain
    from hf_dualsig.data.transforms import transform_from_processor
    from hf_dualsig.viz import overlay_grid, save_png

    heads = [h for h in heads if h in available_heads(model)]
    transform = transform_from_processor(processor)
    maps = {}
    for start in tqdm(range(0, len(images), batch_size), desc=f"explaining -> {output}"):
        pixels = torch.stack([transform(image) for image in images[start : start + batch_size]]).to(model.device)
        for key, value in explain(model, pixels, methods=methods, heads=heads).items():
            maps.setdefault(key, []).append(value.cpu())
    return save_png(overlay_grid(images, {k: torch.cat(v) for k, v in maps.items()}, titles), output)


def _images_from(paths):
    files = []
    for path in map(Path, paths):
        files += (
            sorted(p for p in path.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
            if path.is_dir()
            else [path]
        )
    if not files:
        raise SystemExit(f"no image found in {paths}")
    return [Image.open(f).convert("RGB") for f in files], [f.name for f in files]


def check_before_work(args) -> tuple[list[str], list[str]]:
    """Methods, heads, images, checkpoint and output folder, before any model is built; returns methods and heads."""
    methods, heads = EvalArguments(methods=args.methods, heads=args.heads).method_names, args.heads.split(",")
    if args.num_images < 1:
        raise ValueError(f"--num_images {args.num_images}: must be a positive integer.")
    if args.model_name_or_path:
        from hf_dualsig.hub import check_model_source

        check_model_source(args.model_name_or_path)
    for path in args.images or []:
        if not os.path.exists(path):
            raise ValueError(f"--images {path}: no such file or folder.")
    check_writable(args.output_dir, "--output_dir")
    return list(methods), [h.strip() for h in heads]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path")
    parser.add_argument("--images", nargs="*")
    parser.add_argument("--dataset", default=None, help="synthetic, or a load_dataset source (see scripts/train.py)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_images", type=int, default=6)
    parser.add_argument("--methods", default="cam,gradcam,gradcam++,layercam")
    parser.add_argument("--heads", default="softmax,sigmoid")
    parser.add_argument("--output_dir", default="outputs/explain")
    args = parser.parse_args(argv)
    methods, heads = check_before_work(args)
    import torch  # the heavy imports, once the arguments are known to be good
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    import hf_dualsig
    from hf_dualsig.data.splits import DataArguments, load_split
    from hf_dualsig.data.transforms import transform_from_processor

    hf_dualsig.register_auto_classes()  # AutoModelForImageClassification then loads dual checkpoints
    written = []
    if args.model_name_or_path is None:
        import numpy as np
        import skimage.data

        from hf_dualsig.convert_efficientnet_lite import convert_efficientnet_lite0

        model, processor = convert_efficientnet_lite0()
        photos = [getattr(skimage.data, name)() for name in SKIMAGE_PHOTOS]
        photos = [Image.fromarray(p if p.ndim == 3 else np.stack([p] * 3, -1)).convert("RGB") for p in photos]
        with torch.no_grad():
            pixels = torch.stack([transform_from_processor(processor)(p) for p in photos])
            predicted = model(pixels).logits.argmax(-1)
        titles = [f"{n}: {model.config.id2label[int(i)]}" for n, i in zip(SKIMAGE_PHOTOS, predicted)]
        written.append(
            render(
                model,
                processor,
                photos,
                titles,
                methods,
                ["softmax"],
                os.path.join(args.output_dir, "efficientnet_lite0.png"),
            )
        )
        if os.path.isdir(DEFAULT_CHECKPOINT):
            args.model_name_or_path, args.dataset = DEFAULT_CHECKPOINT, args.dataset or "synthetic"
    if args.model_name_or_path:
        model = AutoModelForImageClassification.from_pretrained(args.model_name_or_path).eval()
        processor = AutoImageProcessor.from_pretrained(args.model_name_or_path)
        if args.images:
            images, titles = _images_from(args.images)
        else:
            split = load_split(DataArguments(dataset=args.dataset or "synthetic"), args.split)
            rows = split.select(range(min(args.num_images, len(split))))
            names = getattr(split.features["label"], "names", None)
            images = [image.convert("RGB") for image in rows["image"]]
            titles = [names[label] if names else str(label) for label in rows["label"]]
        name = Path(args.model_name_or_path.rstrip("/")).name + ".png"
        written.append(render(model, processor, images, titles, methods, heads, os.path.join(args.output_dir, name)))
    print("wrote " + ", ".join(written))


if __name__ == "__main__":
    main()
