"""Convert a wsolevaluation / Beyond-Softmax checkpoint (VGG16, ResNet50 or InceptionV3, CAM variant) into a native
transformers checkpoint with the WSOL image processor (224x224 resize, ImageNet mean/std).

A plain checkpoint becomes a `Wsol*ForImageClassification`; an authors' dual checkpoint (`fc` + `fc2`, InceptionV3:
`SPG_A4` + `SPG_A4_2`) becomes a `DualSigmoidForImageClassification` (fc -> softmax head, fc2 -> sigmoid head).

    python scripts/convert_wsol_checkpoint.py last_checkpoint.pth.tar outputs/resnet50-cam --large_feature_map
"""

import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="wsolevaluation checkpoint (.pth.tar) or a bare state dict")
    parser.add_argument("output_dir")
    parser.add_argument(
        "--architecture",
        choices=["vgg16", "resnet50", "inception_v3"],
        help="default: the one the checkpoint records (wsolevaluation checkpoints do)",
    )
    parser.add_argument(
        "--large_feature_map", action="store_true", help="the checkpoint was trained with --large_feature_map TRUE"
    )
    parser.add_argument("--labels_file", help="class names, one per line, line i for class i (default LABEL_i)")
    args = parser.parse_args(argv)
    from hf_dualsig import available_heads  # torch: after parsing, so that --help starts fast
    from hf_dualsig.convert_wsol import convert_and_save

    id2label = None
    if args.labels_file:
        with open(args.labels_file) as handle:
            id2label = dict(enumerate(line.strip() for line in handle if line.strip()))
    model = convert_and_save(args.checkpoint, args.output_dir, args.architecture, args.large_feature_map, id2label)
    kind = (
        "dual checkpoint (fc -> softmax head, fc2 -> sigmoid head)"
        if "sigmoid" in available_heads(model)
        else "classifier"
    )
    print(f"saved {type(model).__name__} ({kind}) + image processor to {args.output_dir}")


if __name__ == "__main__":
    main()
