"""The training job (scripts/train.py): stage-1 adaptation, the paper recipe, and everything checked before work."""

import json
import os
from pathlib import Path

import pytest
import torch
import transformers as T

from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.adaptation import TOP_BLOCKS, adapt, cached_inputs
from hf_dualsig.backbones import resolve_module
from hf_dualsig.data.splits import DataArguments
from hf_dualsig.data.transforms import transform_from_processor
from hf_dualsig.evaluation import EvalArguments
from hf_dualsig.files import OutputLock
from hf_dualsig.train_job import (
    DualSigTrainingArguments,
    ModelArguments,
    label_names,
    last_checkpoint,
    run,
    sigmoid_trainer,
)
from hf_dualsig.zoo import tiny_classifier

from conftest import SMALL_SYNTHETIC

SMALL_DATA = dict(
    synthetic_num_train=SMALL_SYNTHETIC.num_train,
    synthetic_num_val=SMALL_SYNTHETIC.num_val,
    synthetic_num_test=SMALL_SYNTHETIC.num_test,
    synthetic_num_classes=SMALL_SYNTHETIC.num_classes,
    image_size=SMALL_SYNTHETIC.image_size,
)


@pytest.fixture(scope="module")
def tiny_efficientnet_dir(tmp_path_factory):
    """A saved tiny EfficientNet (it has a top block, like the default EfficientNet-Lite0) and its processor."""
    path = tmp_path_factory.mktemp("tiny_efficientnet")
    tiny_classifier("efficientnet", num_labels=3).save_pretrained(path)
    T.ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def _args(tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / "out"), use_cpu=True, num_train_epochs=2, logging_steps=1)
    return DualSigTrainingArguments(**{**settings, **overrides})


@pytest.mark.parametrize("num_workers", [0, 2])
def test_top_block_tail_reproduces_the_classifier(synthetic, num_workers):
    classifier = tiny_classifier("efficientnet", num_labels=4)
    transform = transform_from_processor(T.ViTImageProcessorPil(size={"height": 32, "width": 32}))
    conv, norm, activation = (resolve_module(classifier, n) for n in TOP_BLOCKS["EfficientNetForImageClassification"])
    inputs, labels = cached_inputs(
        classifier, conv, synthetic["test"], transform, batch_size=5, num_workers=num_workers
    )
    pixels = torch.stack([transform(image) for image in synthetic["test"]["image"]])
    with torch.no_grad():
        expected = classifier(pixel_values=pixels).logits
        tail = classifier.classifier(activation(norm(conv(inputs))).mean(dim=(2, 3)))
    torch.testing.assert_close(tail, expected, atol=1e-5, rtol=1e-5)
    assert labels.tolist() == synthetic["test"]["label"]


@pytest.mark.parametrize("mode", ["top", "linear_probe"])
def test_stage_one_hands_stage_two_the_adapted_models_own_head_inputs(synthetic, mode):
    classifier = tiny_classifier("efficientnet", num_labels=4)
    transform = transform_from_processor(T.ViTImageProcessorPil(size={"height": 32, "width": 32}))
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    metrics, head_inputs = adapt(classifier, mode, synthetic["train"], synthetic["test"], transform, 2, 1e-3, 0)
    changed = {k for k, v in classifier.state_dict().items() if not torch.equal(v, before[k])}
    expected_changed = {"classifier.weight", "classifier.bias"}
    if mode == "top":
        expected_changed |= {"efficientnet.encoder.top_conv.weight", "efficientnet.encoder.top_bn.weight",
                             "efficientnet.encoder.top_bn.bias"}  # fmt: skip
    assert changed == expected_changed  # BatchNorm running statistics untouched
    dual = DualSigmoidForImageClassification.from_classifier(classifier)
    pixels = torch.stack([transform(image) for image in synthetic["test"]["image"]])
    with torch.no_grad():
        expected = dual(pixels).head_inputs[0]
    cached = torch.stack([head_inputs["eval"][i]["head_inputs"][0] for i in range(len(head_inputs["eval"]))])
    torch.testing.assert_close(cached, expected, atol=1e-5, rtol=1e-5)
    assert 0 <= metrics["eval_accuracy"] <= 1 and metrics["mode"] == mode


def test_two_stage_job_adapts_the_top_block_then_trains_and_evaluates_the_branch(tiny_efficientnet_dir, tmp_path):
    args = _args(tmp_path)
    result = run(
        ModelArguments(model_name_or_path=tiny_efficientnet_dir, softmax_epochs=3, softmax_learning_rate=3e-3),
        DataArguments(**SMALL_DATA),
        args,
        EvalArguments(methods="cam,gradcam", insertion_deletion_steps=0, eval_size=64),
    )
    assert result["softmax"]["mode"] == "top"
    softmax, sigmoid = result["softmax"], result["sigmoid"]
    assert sigmoid["eval_accuracy_softmax"] == pytest.approx(softmax["eval_accuracy"])  # the softmax head is untouched
    checkpoints = sorted(Path(args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    losses = [e["loss"] for e in json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
              if "loss" in e]  # fmt: skip
    assert losses[-1] < losses[0]
    out = Path(args.output_dir)
    stage1 = T.AutoModelForImageClassification.from_pretrained(out / "softmax")
    original = T.AutoModelForImageClassification.from_pretrained(tiny_efficientnet_dir)
    assert stage1.config.id2label[0] == "red_disc"  # the dataset's label set, not the checkpoint's
    top = dict(stage1.named_parameters())
    before = dict(original.named_parameters())
    trained = {n for n in top if n in before and top[n].shape == before[n].shape and not torch.equal(top[n], before[n])}
    assert trained and all(n.startswith(("efficientnet.encoder.top_", "classifier")) for n in trained), trained
    dual = T.AutoModel.from_pretrained(out)
    assert isinstance(dual, DualSigmoidForImageClassification) and dual.config.sigmoid_head_trained
    for name, value in stage1.state_dict().items():  # stage 2 leaves the adapted classifier untouched
        assert torch.equal(dual.classifier.state_dict()[name], value), name
    report = json.loads((out / "eval" / "results.json").read_text())
    assert set(report["methods"]["cam"]) == {"softmax", "sigmoid"}
    assert "no ReLU" in report["settings"]["map_recipes"]["cam"]
    assert "bilinear" in report["settings"]["map_recipes"]["gradcam"]
    assert (out / "eval" / "gallery.png").stat().st_size > 0
    assert not (out / OutputLock.NAME).exists()


def test_paper_recipe_builds_the_authors_optimiser_schedule_and_transforms(tiny_classifier_dir, synthetic, tmp_path):
    classifier = T.AutoModelForImageClassification.from_pretrained(tiny_classifier_dir)
    processor = T.AutoImageProcessor.from_pretrained(tiny_classifier_dir)
    dual = DualSigmoidForImageClassification.from_classifier(classifier)
    splits = {"train": synthetic["train"], "eval": synthetic["validation"]}
    args = _args(tmp_path, per_device_train_batch_size=8, num_train_epochs=10, learning_rate=0.5)
    trainer = sigmoid_trainer(dual, processor, splits, ModelArguments(recipe="paper", use_feature_cache=False), args)
    optimizer, scheduler = trainer.optimizer, trainer.lr_scheduler
    assert type(optimizer) is torch.optim.SGD and len(optimizer.param_groups) == 1
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"]) == (0.003, 0.9, True, 5e-4)
    head = {id(p) for p in dual.sigmoid_head.parameters()}
    assert {id(p) for p in group["params"]} == head  # every head parameter, the bias included, decays
    assert type(scheduler) is torch.optim.lr_scheduler.StepLR and scheduler.gamma == 0.1
    assert scheduler.step_size == 3 * 2  # every 3 epochs of 48 images in batches of 32
    assert trainer.args.per_device_train_batch_size == 32 and trainer.args.num_train_epochs == 3
    assert trainer.args.max_grad_norm == 0.0
    assert args.per_device_train_batch_size == 8  # the caller's arguments are untouched
    train_transform = trainer.train_dataset.transform
    assert train_transform.augment == "crop_flip" and (train_transform.height, train_transform.width) == (32, 32)
    ratio = sigmoid_trainer(
        dual, processor, splits, ModelArguments(recipe="paper", lr_classifier_ratio=10, use_feature_cache=False), args
    )
    assert ratio.optimizer.param_groups[0]["lr"] == pytest.approx(0.03)
    cached = sigmoid_trainer(
        dual,
        processor,
        splits,
        ModelArguments(recipe="paper", feature_cache_views=2, feature_cache_dtype="bfloat16"),
        args,
    )
    assert cached.uses_feature_cache and len(cached.train_dataset) == len(splits["train"])
    assert cached.train_dataset.meta["dtype"] == "bfloat16"  # --feature_cache_dtype reaches the cache


def test_a_stray_label_is_an_error_naming_its_row(synthetic):
    from datasets import Dataset

    labels = list(synthetic["train"]["label"][:10])
    labels[5] = 7  # one stray label in a 4-class set must not make an 8-class model
    with pytest.raises(ValueError, match=r"label\(s\) \[7\].*first at row 5"):
        label_names(Dataset.from_dict({"label": labels}))
    assert label_names(Dataset.from_dict({"label": [0, 2, 1, 1]})) == ["0", "1", "2"]
    assert label_names(synthetic["train"])[0] == "red_disc"


def test_bad_arguments_stop_before_any_work(tiny_efficientnet_dir, tmp_path):
    with pytest.raises(ValueError, match="--stage"):
        ModelArguments(stage="all")
    with pytest.raises(ValueError, match="--pos_weight"):
        ModelArguments(pos_weight="balanced")
    with pytest.raises(ValueError, match="--recipe"):
        ModelArguments(recipe="authors")
    with pytest.raises(ValueError, match="--sigmoid_head_init"):
        ModelArguments(sigmoid_head_init="xavier")
    with pytest.raises(ValueError, match="feature_cache_dtype='int8'"):
        ModelArguments(feature_cache_dtype="int8")
    for field, value in (("eval_num_workers", -1), ("metric_workers", -2)):
        with pytest.raises(ValueError, match=f"--{field} {value}"):
            EvalArguments(**{field: value})
    with pytest.raises(ValueError, match="--methods"):
        EvalArguments(methods="cam,smoothgrad")
    for field, value in (("eval_size", 0), ("eval_batch_size", 0), ("cam_threshold_interval", 0.0)):
        with pytest.raises(ValueError, match=f"--{field}"):
            EvalArguments(**{field: value})
    with pytest.raises(ValueError, match="--fixed_threshold"):
        EvalArguments(fixed_threshold=5)
    with pytest.raises(ValueError, match="--heads"):
        EvalArguments(heads="softmax,logistic")
    with pytest.raises(ValueError, match="--fidelity_head"):
        EvalArguments(fidelity_head="both")
    model = ModelArguments(model_name_or_path=tiny_efficientnet_dir)
    data = DataArguments(**SMALL_DATA)
    hub = _args(tmp_path, push_to_hub=True, hub_model_id="not a/valid//id", hub_token="x")
    with pytest.raises(ValueError, match="hub_model_id"):
        run(model, data, hub)
    with pytest.raises(ValueError, match="overlaps the input checkpoint"):
        run(model, data, _args(tmp_path, output_dir=os.path.join(tiny_efficientnet_dir, "out")))
    with pytest.raises(ValueError, match="no such folder"):
        run(ModelArguments(model_name_or_path=str(tmp_path / "missing")), data, _args(tmp_path))
    with pytest.raises(ValueError, match="--test_split 'final'"):
        run(model, data, _args(tmp_path), EvalArguments(test_split="final"))
    assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "softmax").exists()


def test_non_finite_logits_stop_the_run_naming_the_checkpoint(tiny_efficientnet_dir, tmp_path):
    broken = tmp_path / "broken"
    model = T.AutoModelForImageClassification.from_pretrained(tiny_efficientnet_dir)
    with torch.no_grad():
        model.efficientnet.embeddings.convolution.weight.fill_(float("nan"))  # a corrupted payload
    model.save_pretrained(broken)
    T.AutoImageProcessor.from_pretrained(tiny_efficientnet_dir).save_pretrained(broken)
    with pytest.raises(ValueError, match=f"{broken}.*non-finite"):
        run(ModelArguments(model_name_or_path=str(broken)), DataArguments(**SMALL_DATA), _args(tmp_path))
    assert not list((tmp_path / "out").glob("checkpoint-*")) and not (tmp_path / "out" / "softmax").exists()


def test_a_second_run_into_the_same_folder_is_refused(tmp_path):
    with OutputLock(str(tmp_path)):
        with pytest.raises(ValueError, match=f"pid {os.getpid()}"):
            OutputLock(str(tmp_path)).__enter__()
    assert not (tmp_path / OutputLock.NAME).exists()
    (tmp_path / OutputLock.NAME).write_text("999999999")  # left by a dead run: taken over
    with OutputLock(str(tmp_path)):
        assert (tmp_path / OutputLock.NAME).read_text() == str(os.getpid())


def test_resume_picks_the_last_complete_checkpoint(tmp_path):
    for step, files in ((4, ["trainer_state.json", "model.safetensors"]), (8, ["model.safetensors"]), (12, [])):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        for name in files:
            (folder / name).write_text("x")
    assert last_checkpoint(str(tmp_path), "last") == str(tmp_path / "checkpoint-4")
    assert last_checkpoint(str(tmp_path / "none"), "last") is None
    assert last_checkpoint(str(tmp_path), "some/path") == "some/path"
