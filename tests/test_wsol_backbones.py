"""The WSOL backbones of wsolevaluation (VGG16-GAP, ResNet50, InceptionV3; CAM variant) as native models.

The reference below is written from the architecture descriptions with torch functional ops and the authors' key
names; it draws the authors' state dict as it runs (each layer's random weights, the first time the layer is used),
so the converted models are checked against weights they never saw in their own layout.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers as T

from hf_dualsig import CAM_METHODS, DualSigmoidForImageClassification, explain
from hf_dualsig.convert_wsol import convert_classifier, convert_dual
from hf_dualsig.modeling_wsol_backbones import WSOL_MODELS


def _convert_script():
    """scripts/convert_wsol_checkpoint.py as a module, loaded by path (scripts/ on sys.path would shadow the
    `evaluate` library with scripts/evaluate.py)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / "convert_wsol_checkpoint.py"
    spec = importlib.util.spec_from_file_location("convert_wsol_checkpoint", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

ARCHITECTURES = ("vgg16", "resnet50", "inception_v3")
NUM_LABELS = 5
TARGETS = torch.tensor([1, 3])
TOL = {"atol": 1e-5, "rtol": 1e-5}
CAM_LAYER_CHANNELS = {"vgg16": 1024, "resnet50": 2048, "inception_v3": 1024}


class AuthorsWeights:
    """The authors' state dict, drawn while the reference runs (seeded): conv weights He-scaled, BatchNorm
    parameters and running statistics random around (1, 0)."""

    def __init__(self, seed: int = 0):
        self.state, self.generator = {}, torch.Generator().manual_seed(seed)

    def _draw(self, key, shape, scale=1.0, shift=0.0):
        if key not in self.state:
            self.state[key] = torch.randn(shape, generator=self.generator) * scale + shift
        return self.state[key]

    def conv(self, x, key, out, kernel, stride=1, padding=0, bias=True):
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        fan_in = x.shape[1] * kh * kw
        weight = self._draw(f"{key}.weight", (out, x.shape[1], kh, kw), (2 / fan_in) ** 0.5)
        return F.conv2d(x, weight, self._draw(f"{key}.bias", (out,), 0.1) if bias else None, stride, padding)

    def bn(self, x, key, eps=1e-5):
        c = x.shape[1]
        self.state.setdefault(f"{key}.num_batches_tracked", torch.tensor(7))
        return F.batch_norm(
            x,
            self._draw(f"{key}.running_mean", (c,), 0.1),
            self._draw(f"{key}.running_var", (c,), 0.1, 1.0).abs(),
            self._draw(f"{key}.weight", (c,), 0.1, 1.0),
            self._draw(f"{key}.bias", (c,), 0.1),
            training=False,
            eps=eps,
        )

    def linear(self, x, key, out):
        weight = self._draw(f"{key}.weight", (out, x.shape[1]), x.shape[1] ** -0.5)
        return F.linear(x, weight, self._draw(f"{key}.bias", (out,), 0.1))


def vgg16_reference(w, x, large, dual):
    """VGG16 convs (3x3, pad 1, ReLU; 2x2 max-pools after blocks 1-4, the 4th dropped when large), conv6 3x3 to 1024
    + ReLU, GAP, fc (and fc2)."""
    spec = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512] + ([] if large else ["M"]) + [512] * 3
    index = 0
    for item in spec:
        if item == "M":
            x, index = F.max_pool2d(x, 2, 2), index + 1
        else:
            x, index = F.relu(w.conv(x, f"features.{index}", item, 3, padding=1)), index + 2
    features = F.relu(w.conv(x, "conv6", 1024, 3, padding=1))
    pooled = features.mean(dim=(2, 3))
    heads = ["fc", "fc2"] if dual else ["fc"]
    return features, [w.linear(pooled, head, NUM_LABELS) for head in heads]


def resnet50_reference(w, x, large, dual):
    """7x7/2 conv + BN + ReLU, 3x3/2 max-pool, bottlenecks (1x1, 3x3 with the stride, 1x1 x4; BN each; projection
    shortcut in each stage's first block) 3-4-6-3 at strides 1, 2, 2 (1 when large), 1; GAP, fc (and fc2)."""
    x = F.max_pool2d(F.relu(w.bn(w.conv(x, "conv1", 64, 7, 2, 3, bias=False), "bn1")), 3, 2, 1)
    for layer, (planes, blocks, stride) in enumerate(
        [(64, 3, 1), (128, 4, 2), (256, 6, 1 if large else 2), (512, 3, 1)]
    ):
        for block in range(blocks):
            p, s = f"layer{layer + 1}.{block}", stride if block == 0 else 1
            out = F.relu(w.bn(w.conv(x, f"{p}.conv1", planes, 1, bias=False), f"{p}.bn1"))
            out = F.relu(w.bn(w.conv(out, f"{p}.conv2", planes, 3, s, 1, bias=False), f"{p}.bn2"))
            out = w.bn(w.conv(out, f"{p}.conv3", 4 * planes, 1, bias=False), f"{p}.bn3")
            if block == 0:
                x = w.bn(w.conv(x, f"{p}.downsample.0", 4 * planes, 1, s, bias=False), f"{p}.downsample.1")
            x = F.relu(out + x)
    pooled = x.mean(dim=(2, 3))
    return x, [w.linear(pooled, head, NUM_LABELS) for head in (["fc", "fc2"] if dual else ["fc"])]


def _basic(w, x, key, out, kernel, stride=1, padding=0):
    return F.relu(w.bn(w.conv(x, f"{key}.conv", out, kernel, stride, padding, bias=False), f"{key}.bn", eps=1e-3))


def _row(w, x, key, out):
    return _basic(w, x, key, out, (1, 7), padding=(0, 3))


def _col(w, x, key, out):
    return _basic(w, x, key, out, (7, 1), padding=(3, 0))


def inception_v3_reference(w, x, large, dual):
    """InceptionV3 stem (3x3/2 pad 1, 3x3, 3x3 pad 1, max-pool 3/2 pad 1 ceil, 1x1 80, 3x3 192, max-pool), Mixed_5b-d
    (A), max-pool 3/2 ceil unless large, Mixed_6a (B at stride 1, pad 1), Mixed_6b-e (C), SPG_A3_1b/2b (3x3 to 1024 +
    ReLU), SPG_A4 (1x1 conv to the classes, and SPG_A4_2) then GAP."""
    x = _basic(w, x, "Conv2d_1a_3x3", 32, 3, 2, 1)
    x = _basic(w, _basic(w, x, "Conv2d_2a_3x3", 32, 3), "Conv2d_2b_3x3", 64, 3, padding=1)
    x = _basic(w, F.max_pool2d(x, 3, 2, 1, ceil_mode=True), "Conv2d_3b_1x1", 80, 1)
    x = F.max_pool2d(_basic(w, x, "Conv2d_4a_3x3", 192, 3), 3, 2, 1, ceil_mode=True)
    for name, pool_features in (("Mixed_5b", 32), ("Mixed_5c", 64), ("Mixed_5d", 64)):
        b5 = _basic(w, _basic(w, x, f"{name}.branch5x5_1", 48, 1), f"{name}.branch5x5_2", 64, 5, padding=2)
        b3 = _basic(w, x, f"{name}.branch3x3dbl_1", 64, 1)
        b3 = _basic(w, _basic(w, b3, f"{name}.branch3x3dbl_2", 96, 3, padding=1), f"{name}.branch3x3dbl_3", 96, 3, 1, 1)
        bp = _basic(w, F.avg_pool2d(x, 3, 1, 1), f"{name}.branch_pool", pool_features, 1)
        x = torch.cat([_basic(w, x, f"{name}.branch1x1", 64, 1), b5, b3, bp], 1)
    if not large:
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
    b3 = _basic(w, x, "Mixed_6a.branch3x3dbl_1", 64, 1)
    b3 = _basic(w, _basic(w, b3, "Mixed_6a.branch3x3dbl_2", 96, 3, padding=1), "Mixed_6a.branch3x3dbl_3", 96, 3, 1, 1)
    x = torch.cat([_basic(w, x, "Mixed_6a.branch3x3", 384, 3, 1, 1), b3, F.max_pool2d(x, 3, 1, 1)], 1)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        b7 = _col(
            w,
            _row(w, _basic(w, x, f"{name}.branch7x7_1", c7, 1), f"{name}.branch7x7_2", c7),
            f"{name}.branch7x7_3",
            192,
        )
        d = _basic(w, x, f"{name}.branch7x7dbl_1", c7, 1)
        d = _row(w, _col(w, d, f"{name}.branch7x7dbl_2", c7), f"{name}.branch7x7dbl_3", c7)
        d = _row(w, _col(w, d, f"{name}.branch7x7dbl_4", c7), f"{name}.branch7x7dbl_5", 192)
        bp = _basic(w, F.avg_pool2d(x, 3, 1, 1), f"{name}.branch_pool", 192, 1)
        x = torch.cat([_basic(w, x, f"{name}.branch1x1", 192, 1), b7, d, bp], 1)
    x = F.relu(w.conv(x, "SPG_A3_1b.0", 1024, 3, padding=1))
    features = F.relu(w.conv(x, "SPG_A3_2b.0", 1024, 3, padding=1))
    heads = ["SPG_A4", "SPG_A4_2"] if dual else ["SPG_A4"]
    return features, [w.conv(features, head, NUM_LABELS, 1).mean(dim=(2, 3)) for head in heads]


REFERENCES = {"vgg16": vgg16_reference, "resnet50": resnet50_reference, "inception_v3": inception_v3_reference}
HEAD_KEYS = {"vgg16": ("fc", "fc2"), "resnet50": ("fc", "fc2"), "inception_v3": ("SPG_A4", "SPG_A4_2")}
_CACHE = {}


def reference(architecture, dual=False, large=False, size=64):
    """(authors' state dict, input, CAM-layer features, [logits of fc, fc2]) for a seeded random checkpoint."""
    key = (architecture, dual, large, size)
    if key not in _CACHE:
        weights = AuthorsWeights(seed=ARCHITECTURES.index(architecture))
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            features, logits = REFERENCES[architecture](weights, x, large, dual)
        _CACHE[key] = weights.state, x, features, logits
    return _CACHE[key]


def reference_cam(state, head_key, features, truncate=False):
    """CAM as the authors compute it: mean over channels of the target's head weights times the CAM layer."""
    weight = state[f"{head_key}.weight"].flatten(1)[TARGETS]
    weight = weight.clamp(min=0) if truncate else weight
    return (weight[:, :, None, None] * features).mean(dim=1)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_converted_classifier_equals_the_reference(architecture, tmp_path):
    state, x, features, (logits,) = reference(architecture)
    checkpoint = {"architecture": architecture, "epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}
    torch.save(checkpoint, tmp_path / "last_checkpoint.pth.tar")
    model = convert_classifier(tmp_path / "last_checkpoint.pth.tar")
    assert isinstance(model, WSOL_MODELS[architecture]) and not model.training
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    torch.testing.assert_close(out.logits, logits, **TOL)
    torch.testing.assert_close(out.hidden_states[-1], features, **TOL)
    cams = explain(model, x, methods=["cam"], heads=["softmax"], targets=TARGETS, return_raw=True)
    torch.testing.assert_close(
        cams.raw_maps[("cam", "softmax")], reference_cam(state, HEAD_KEYS[architecture][0], features), **TOL
    )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_dual_conversion_puts_fc2_in_the_sigmoid_head(architecture):
    state, x, features, (logits, logits2) = reference(architecture, dual=True)
    softmax_key, sigmoid_key = HEAD_KEYS[architecture]
    dual = convert_dual(state, architecture)
    assert isinstance(dual, DualSigmoidForImageClassification) and dual.config.sigmoid_head_trained
    torch.testing.assert_close(dual.sigmoid_head[0].weight, state[f"{sigmoid_key}.weight"].flatten(1), atol=0, rtol=0)
    torch.testing.assert_close(dual.softmax_heads[0].weight, state[f"{softmax_key}.weight"].flatten(1), atol=0, rtol=0)
    with torch.no_grad():
        out = dual(x)
    torch.testing.assert_close(out.logits, logits, **TOL)
    torch.testing.assert_close(out.sigmoid_logits, logits2, **TOL)
    cams = dual.explain(x, methods=["cam"], heads=["softmax", "sigmoid"], targets=TARGETS, return_raw=True)
    torch.testing.assert_close(cams.raw_maps[("cam", "softmax")], reference_cam(state, softmax_key, features), **TOL)
    expected = reference_cam(state, sigmoid_key, features, truncate=True)  # the authors clamp fc2's weights at 0
    torch.testing.assert_close(cams.raw_maps[("cam", "sigmoid")], expected, **TOL)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_large_feature_map_doubles_the_cam_layer(architecture):
    state, x, features, (logits,) = reference(architecture, large=True)
    model = convert_classifier(state, architecture, large_feature_map=True)
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    assert features.shape[-1] == 2 * reference(architecture)[2].shape[-1] == 8
    torch.testing.assert_close(out.hidden_states[-1], features, **TOL)
    torch.testing.assert_close(out.logits, logits, **TOL)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_cam_layer_is_14x14_at_224(architecture):
    config = T.AutoConfig.for_model(f"wsol_{architecture}", num_labels=NUM_LABELS)
    model = T.AutoModelForImageClassification.from_config(config).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 3, 224, 224), output_hidden_states=True)
    assert out.hidden_states[-1].shape == (1, CAM_LAYER_CHANNELS[architecture], 14, 14)


SMALL_LAYERS = {"vgg16": "vgg.features.0", "resnet50": "resnet.conv1", "inception_v3": "inception.Conv2d_1a_3x3"}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_cam_method_runs_from_both_heads(architecture):
    state, x, _, _ = reference(architecture, dual=True)
    dual = convert_dual(state, architecture)
    methods = [m for m, spec in CAM_METHODS.items() if "attentions" not in spec.needs and m != "scorecam"]
    out = dual.explain(x, methods=methods, heads=["softmax", "sigmoid"])
    assert out.target_layer == dual.adapter.cam_layer
    # Score-CAM masks the input with every channel: run it on a small early layer.
    small = x[:1, :, :32, :32]
    scorecam = dual.explain(
        small, methods=["scorecam"], heads=["softmax", "sigmoid"], target_layer=SMALL_LAYERS[architecture]
    )
    for maps, pixels in ((out, x), (scorecam, small)):
        for key, value in maps.items():
            assert value.shape == (len(pixels), *pixels.shape[-2:]), key
            assert torch.isfinite(value).all() and value.min() >= 0 and value.max() <= 1, key


def test_bad_checkpoints_are_value_errors_listing_the_keys():
    state = dict(reference("resnet50")[0])
    broken = {**state, "layer5.0.conv1.weight": torch.zeros(1)}
    del broken["layer4.2.bn3.running_var"]
    with pytest.raises(ValueError, match=r"unknown keys: \['layer5.0.conv1.weight'\].*missing keys: \['layer4.2.bn3"):
        convert_classifier(broken, "resnet50")
    with pytest.raises(ValueError, match=r"unknown keys: \['fc2.bias', 'fc2.weight'\]"):
        convert_classifier(reference("resnet50", dual=True)[0], "resnet50")
    with pytest.raises(ValueError, match="records 'resnet50'"):
        convert_classifier({"architecture": "resnet50", "state_dict": state}, "vgg16")
    with pytest.raises(ValueError, match="does not record its architecture"):
        convert_classifier(state)
    with pytest.raises(ValueError, match="large_feature_map=True"):  # VGG16's feature indices give it away
        convert_classifier(reference("vgg16")[0], "vgg16", large_feature_map=True)
    with pytest.raises(ValueError, match="sigmoid branch fc2"):
        convert_dual(state, "resnet50")
    missing_counter = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    convert_classifier(missing_counter, "resnet50")  # BatchNorm counters are optional


def test_script_saves_a_checkpoint_with_the_wsol_processor(tmp_path, capsys):
    state = reference("vgg16")[0]
    torch.save({"architecture": "vgg16", "state_dict": state}, tmp_path / "ckpt.pth.tar")
    (tmp_path / "labels.txt").write_text("".join(f"class {i}\n" for i in range(NUM_LABELS)))
    out_dir = tmp_path / "converted"
    _convert_script().main(
        [str(tmp_path / "ckpt.pth.tar"), str(out_dir), "--labels_file", str(tmp_path / "labels.txt")]
    )
    assert "WsolVgg16ForImageClassification (classifier)" in capsys.readouterr().out
    model = T.AutoModelForImageClassification.from_pretrained(out_dir)
    assert model.config.id2label[4] == "class 4"
    processor = json.loads((out_dir / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 224, "width": 224}
    assert processor["image_mean"] == [0.485, 0.456, 0.406] and processor["image_std"] == [0.229, 0.224, 0.225]


REMOTE = """
import sys
sys.modules["hf_dualsig"] = None  # make sure the package cannot be imported
try:
    import hf_dualsig
    raise SystemExit("hf_dualsig is importable; the test would prove nothing")
except ImportError:
    pass
import torch, transformers as T
results = {}
for folder in sys.argv[2:]:
    model = T.AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    assert "transformers_modules" in type(model.classifier).__module__, type(model.classifier).__module__
    x = torch.load(folder + "/x.pt")
    with torch.no_grad():
        out = model(x)
    maps = model.explain(x, methods=["cam", "gradcam"], heads=["softmax", "sigmoid"])
    results[folder] = (out.logits, out.sigmoid_logits, dict(maps.items()))
torch.save(results, sys.argv[1])
"""


def test_dual_checkpoints_load_and_explain_without_the_package(tmp_path):
    expected = {}
    for architecture in ARCHITECTURES:
        state, x, _, _ = reference(architecture, dual=True)
        dual = convert_dual(state, architecture)
        folder = str(tmp_path / architecture)
        dual.save_pretrained(folder)
        torch.save(x, os.path.join(folder, "x.pt"))
        with torch.no_grad():
            out = dual(x)
        maps = dual.explain(x, methods=["cam", "gradcam"], heads=["softmax", "sigmoid"])
        expected[folder] = (out.logits, out.sigmoid_logits, dict(maps.items()))
    result = subprocess.run(
        [sys.executable, "-c", REMOTE, str(tmp_path / "out.pt"), *expected],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"},
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for folder, (logits, sigmoid_logits, maps) in torch.load(tmp_path / "out.pt").items():
        torch.testing.assert_close(logits, expected[folder][0], atol=1e-6, rtol=0)
        torch.testing.assert_close(sigmoid_logits, expected[folder][1], atol=1e-6, rtol=0)
        for key, value in maps.items():
            torch.testing.assert_close(value, expected[folder][2][key], atol=1e-5, rtol=0, msg=str(key))
