"""The dual-branch model: conversion, freezing, loss, saving and loading (with and without the package)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers as T
from safetensors.torch import load_file, save_file

import hf_dualsig
from hf_dualsig import DualSigmoidConfig, DualSigmoidForImageClassification
from hf_dualsig.zoo import TINY_FAMILIES, tiny_classifier


def _pixels(batch=2, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_conversion_keeps_logits_and_clone_init_copies_the_head(family):
    classifier = tiny_classifier(family)
    dual = DualSigmoidForImageClassification.from_classifier(classifier, {"sigmoid_head_init": "clone"})
    x = _pixels()
    with torch.no_grad():
        expected = classifier(x).logits
        out = dual(x)
    torch.testing.assert_close(out.logits, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.sigmoid_logits, expected, atol=1e-6, rtol=0)
    assert dual.config.num_labels == classifier.config.num_labels
    assert dual.config.id2label == classifier.config.id2label
    for sigmoid_head, softmax_head in zip(dual.sigmoid_head, dual.softmax_heads):
        for key, value in softmax_head.state_dict().items():
            assert torch.equal(sigmoid_head.state_dict()[key], value), key


@pytest.mark.parametrize("family", ["resnet", "vit", "timm_resnet"])
def test_random_init_is_the_authors_normal_0_001_with_zero_bias(family):
    classifier = tiny_classifier(family, num_labels=200)
    torch.manual_seed(0)
    dual = DualSigmoidForImageClassification.from_classifier(classifier)
    assert dual.config.sigmoid_head_init == "random" and not dual.config.sigmoid_head_trained
    linear = [m for m in dual.sigmoid_head.modules() if isinstance(m, torch.nn.Linear)][-1]
    weight = linear.weight.detach()
    assert weight.numel() >= 3000
    assert abs(weight.mean().item()) < 3 * 0.01 / weight.numel() ** 0.5  # within 3 standard errors of 0
    assert weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.equal(linear.bias.detach(), torch.zeros_like(linear.bias))
    built = DualSigmoidForImageClassification(dual.config)  # the config path initialises the same way
    built_weight = [m for m in built.sigmoid_head.modules() if isinstance(m, torch.nn.Linear)][-1].weight
    assert built_weight.std().item() == pytest.approx(0.01, rel=0.05)
    with pytest.raises(ValueError, match="sigmoid_head_init"):
        DualSigmoidForImageClassification.from_classifier(classifier, {"sigmoid_head_init": "xavier"})


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_optimizer_step_changes_only_the_sigmoid_head(family):
    dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier(family))
    before = {k: v.clone() for k, v in dual.state_dict().items()}
    trainable = [p for p in dual.parameters() if p.requires_grad]
    assert {n for n, p in dual.named_parameters() if p.requires_grad} == {
        n for n, _ in dual.named_parameters() if n.startswith("sigmoid_head.")
    }
    optimizer = torch.optim.SGD(trainable, lr=0.5, momentum=0.9)
    dual.train()
    for step in range(2):
        loss = dual(_pixels(4, seed=step), labels=torch.tensor([0, 1, 2, 3])).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dual.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("sigmoid_head.") for k in changed), changed
    assert not dual.classifier.training, "the frozen classifier must stay in eval mode after model.train()"


def test_loss_matches_hand_computed_bce_for_every_pos_weight_mode():
    classifier = tiny_classifier("resnet", num_labels=4)
    x, labels = _pixels(3), torch.tensor([0, 3, 1])
    one_hot = F.one_hot(labels, 4).float()
    counts = [10, 30, 20, 40]
    cases = {
        "num_classes_minus_one": torch.tensor(3.0),
        "none": None,
        2.5: torch.tensor(2.5),
        "inverse_frequency": torch.tensor([90 / 10, 70 / 30, 80 / 20, 60 / 40]),
    }
    for mode, pos_weight in cases.items():
        dual = DualSigmoidForImageClassification.from_classifier(
            classifier, config_kwargs={"pos_weight": mode, "class_counts": counts}
        )
        out = dual(x, labels=labels)
        expected = F.binary_cross_entropy_with_logits(out.sigmoid_logits, one_hot, pos_weight=pos_weight)
        torch.testing.assert_close(out.loss, expected, msg=f"pos_weight={mode}")


def test_deit_with_teacher_averages_both_sigmoid_heads():
    dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier("deit_teacher"))
    with torch.no_grad():
        dual.sigmoid_head[1].weight.add_(1.0)
        out = dual(_pixels())
        cls_in, dist_in = out.head_inputs
        expected = (dual.sigmoid_head[0](cls_in) + dual.sigmoid_head[1](dist_in)) / 2
    torch.testing.assert_close(out.sigmoid_logits, expected)


@pytest.mark.parametrize("family", ["vit", "convnext", "resnet", "deit_teacher", "timm_resnet"])
def test_save_and_load_with_the_package(family, tmp_path):
    dual = _trained_dual(family)
    dual.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    for auto in (T.AutoModel, T.AutoModelForImageClassification):
        loaded = auto.from_pretrained(tmp_path)
        assert isinstance(loaded, DualSigmoidForImageClassification)
        _assert_same_outputs(dual, loaded)
        assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {
            n for n, p in dual.named_parameters() if p.requires_grad
        }


def test_checkpoint_without_sigmoid_head_starts_as_a_copy_of_the_softmax_head(tmp_path):
    dual = _trained_dual("resnet")
    dual.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    save_file({k: v for k, v in weights.items() if not k.startswith("sigmoid_head.")}, tmp_path / "model.safetensors")
    loaded = DualSigmoidForImageClassification.from_pretrained(tmp_path)
    with torch.no_grad():
        out = loaded(_pixels())
    torch.testing.assert_close(out.sigmoid_logits, out.logits, atol=1e-6, rtol=0)


REMOTE_LOAD = """
import sys
sys.modules["hf_dualsig"] = None  # make sure the package cannot be imported
try:
    import hf_dualsig
    raise SystemExit("hf_dualsig is importable; the test would prove nothing")
except ImportError:
    pass
import torch, transformers as T
x = torch.load(sys.argv[2])
results = {}
for auto in (T.AutoModel, T.AutoModelForImageClassification):
    model = auto.from_pretrained(sys.argv[1], trust_remote_code=True)
    assert "transformers_modules" in type(model).__module__, type(model).__module__
    with torch.no_grad():
        out = model(x)
    results[auto.__name__] = (out.logits, out.sigmoid_logits)
torch.save(results, sys.argv[3])
"""


def test_load_with_remote_code_where_the_package_cannot_be_imported(tmp_path):
    x = _pixels()
    torch.save(x, tmp_path / "x.pt")
    for family in ("vit", "convnext", "resnet"):
        dual = _trained_dual(family)
        folder = tmp_path / family
        dual.save_pretrained(folder)
        config = json.loads((folder / "config.json").read_text())
        assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
        result = subprocess.run(
            [sys.executable, "-c", REMOTE_LOAD, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "out.pt")],
            cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"},
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        with torch.no_grad():
            expected = dual(x)
        for name, (logits, sigmoid_logits) in torch.load(tmp_path / "out.pt").items():
            torch.testing.assert_close(logits, expected.logits, atol=1e-6, rtol=0, msg=name)
            torch.testing.assert_close(sigmoid_logits, expected.sigmoid_logits, atol=1e-6, rtol=0, msg=name)


def test_pipeline_returns_the_original_classifiers_labels_and_scores():
    classifier = tiny_classifier("convnext")
    dual = DualSigmoidForImageClassification.from_classifier(classifier)
    processor = T.ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=1.0)
    image = (torch.rand(40, 48, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    from PIL import Image

    image = Image.fromarray(image)
    expected = T.pipeline("image-classification", model=classifier, image_processor=processor)(image, top_k=5)
    got = T.pipeline("image-classification", model=dual, image_processor=processor)(image, top_k=5)
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    for g, e in zip(got, expected):
        assert g["score"] == pytest.approx(e["score"], abs=1e-6)


def test_bad_input_gives_clear_errors():
    dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier("resnet", num_labels=3))
    with pytest.raises(ValueError, match="4-D"):
        dual(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="channels"):
        dual(torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="torch.Tensor"):
        dual([[1.0]])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        dual(_pixels(), labels=torch.tensor([0, 3]))
    with pytest.raises(TypeError, match="integer tensor"):
        dual(_pixels(), labels=torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_labels=7 disagrees"):
        DualSigmoidForImageClassification.from_classifier(tiny_classifier("resnet"), config_kwargs={"num_labels": 7})
    with pytest.raises(ValueError, match="id2label"):
        DualSigmoidConfig(backbone_config=T.ResNetConfig(num_labels=2), id2label={0: "a", 1: "b"})
    with pytest.raises(ValueError, match="pos_weight"):
        DualSigmoidConfig(backbone_config=T.ResNetConfig(num_labels=2), pos_weight="balanced")
    with pytest.raises(ValueError, match="not a supported classifier.*Supported: .*ResNetForImageClassification"):
        DualSigmoidForImageClassification.from_classifier(T.ResNetModel(T.ResNetConfig(hidden_sizes=[8], depths=[1])))
    with pytest.raises(TypeError, match="transformers"):
        DualSigmoidForImageClassification.from_classifier(torch.nn.Linear(2, 2))
    headless = T.ViTForImageClassification(
        T.ViTConfig(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            patch_size=8,
            num_labels=0,
        )
    )
    with pytest.raises(ValueError, match="no classification head"):
        DualSigmoidForImageClassification.from_classifier(headless)
    with pytest.raises(ValueError, match="class_counts"):
        dual_if = DualSigmoidForImageClassification.from_classifier(
            tiny_classifier("resnet", num_labels=3), config_kwargs={"pos_weight": "inverse_frequency"}
        )
        dual_if(_pixels(), labels=torch.tensor([0, 1]))


def test_package_registers_auto_classes():
    config = T.AutoConfig.for_model("dualsig", backbone_config=T.ResNetConfig(num_labels=3).to_dict())
    assert isinstance(config, hf_dualsig.DualSigmoidConfig)
    model = T.AutoModelForImageClassification.from_config(config)
    assert isinstance(model, DualSigmoidForImageClassification)
    assert model.config.num_labels == 3


def _trained_dual(family):
    """A converted model whose sigmoid head differs from the softmax head, so that loading is really tested."""
    dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier(family))
    with torch.no_grad():
        for p in dual.sigmoid_head.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.1)
    return dual


def _assert_same_outputs(a, b):
    x = _pixels()
    with torch.no_grad():
        out_a, out_b = a(x), b(x)
    torch.testing.assert_close(out_b.logits, out_a.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out_b.sigmoid_logits, out_a.sigmoid_logits, atol=1e-6, rtol=0)
    assert not torch.allclose(out_a.sigmoid_logits, out_a.logits)
