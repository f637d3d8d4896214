"""CAM throughput: hf_dualsig's engine vs pytorch-grad-cam producing the same maps, in one process.

(a) one Grad-CAM map from one head; (b) the paper's protocol: CAM, Grad-CAM, Grad-CAM++, XGrad-CAM and LayerCAM
from both heads (pytorch-grad-cam has no CAM class: its closest equivalent, a forward plus the head weights, is
timed as one more Grad-CAM call per head). Models: the real EfficientNet-Lite0, a ResNet-50-sized config and the
paper's WSOL ResNet50 (layer4 at stride 1: a 14x14 CAM layer, 4x the cells of the 7x7 one), all at 224x224,
wrapped as dual models. Peak memory is the peak resident-set growth while each side runs (CPU; glibc).
Usage: python benchmarks/cam_throughput.py [--batch 8] [--repeats 3]
"""

import argparse
import ctypes
import gc
import threading
import time

import psutil
import torch
import transformers as T
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from hf_dualsig import (
    DualSigmoidForImageClassification,
    WsolResNet50Config,
    WsolResNet50ForImageClassification,
    explain,
)
from hf_dualsig.backbones import resolve_module
from hf_dualsig.cam import HeadLogits
from hf_dualsig.convert_efficientnet_lite import convert_efficientnet_lite0

ORACLES = {"cam": GradCAM, "gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "xgradcam": XGradCAM, "layercam": LayerCAM}


class PeakRSS:
    """Peak growth of the process's resident memory while the block runs (sampled every millisecond); freed
    memory is first handed back to the OS (glibc malloc_trim) so that the growth reflects this block alone."""

    def __enter__(self):
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        self.process, self.base, self.peak, self.running = psutil.Process(), psutil.Process().memory_info().rss, 0, True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss - self.base)
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def ours(model, x, methods, heads):
    return explain(model, x, methods=methods, heads=heads)


def theirs(model, x, methods, heads, layer, targets):
    maps = {}
    for head in heads:
        for method in methods:
            cam = ORACLES[method](model=HeadLogits(model, head), target_layers=[layer])
            maps[(method, head)] = cam(input_tensor=x.clone().requires_grad_(True), targets=targets)
    return maps


def best_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def forward_backward_ratio(model, x, repeats) -> float:
    """A plain forward vs a forward with autograd plus a full backward: the ceiling of speedup (a) when our single
    map costs one forward."""

    def forward():
        with torch.no_grad():
            model(pixel_values=x)

    def forward_backward():
        model(pixel_values=x.clone().requires_grad_(True)).sigmoid_logits[:, 0].sum().backward()

    forward(), forward_backward()
    return best_time(forward_backward, repeats) / best_time(forward, repeats)


def compare(name, model, x, repeats):
    out = explain(model, x, methods=["gradcam"])
    layer = resolve_module(model.classifier, out.target_layer)
    targets = [ClassifierOutputTarget(int(t)) for t in out.targets]
    print(f"{name}: forward + full backward / forward alone = {forward_backward_ratio(model, x, repeats):.2f}x")
    for label, methods, heads in (
        ("(a) Grad-CAM, one head", ["gradcam"], ["sigmoid"]),
        ("(b) 5 methods x 2 heads", list(ORACLES), ["softmax", "sigmoid"]),
    ):
        ours(model, x, methods, heads)  # warm-up
        with PeakRSS() as ours_mem:
            t_ours = best_time(lambda: ours(model, x, methods, heads), repeats)
        with PeakRSS() as theirs_mem:
            t_theirs = best_time(lambda: theirs(model, x, methods, heads, layer, targets), repeats)
        print(
            f"{name} {label}: speedup vs pytorch-grad-cam: {t_theirs / t_ours:.1f}x "
            f"(peak memory: ours {ours_mem.peak / 2**20:.0f} MiB, pytorch-grad-cam {theirs_mem.peak / 2**20:.0f} MiB)"
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, 224, 224)
    lite0, _ = convert_efficientnet_lite0()
    resnet50 = T.ResNetForImageClassification(T.ResNetConfig(num_labels=1000)).eval()
    wsol_resnet50 = WsolResNet50ForImageClassification(WsolResNet50Config(num_labels=1000)).eval()
    print(f"batch {args.batch}, 224x224, {torch.get_num_threads()} threads, best of {args.repeats}")
    models = (("EfficientNet-Lite0", lite0), ("ResNet-50 config", resnet50), ("WSOL ResNet50 (14x14)", wsol_resnet50))
    for name, classifier in models:
        compare(name, DualSigmoidForImageClassification.from_classifier(classifier), x, args.repeats)


if __name__ == "__main__":
    main()
