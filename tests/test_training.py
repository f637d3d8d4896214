"""Training the sigmoid branch: exact loss scaling, feature cache, DDP, resume after SIGKILL, the two-stage job."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from conftest import two_process_launch
from PIL import Image

from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.adaptation import HeadInputs
from hf_dualsig.data.splits import DataArguments
from hf_dualsig.data.transforms import ImageTransform
from hf_dualsig.train_job import DualSigTrainingArguments, ModelArguments, run
from hf_dualsig.training import DualSigmoidTrainer

REPO = Path(__file__).resolve().parents[1]
TRANSFORM = ImageTransform(32, 32)


def _train_head(classifier_dir, synthetic, out, **overrides):
    torch.manual_seed(0)  # the sigmoid head's random init
    dual = DualSigmoidForImageClassification.from_classifier(
        T.AutoModelForImageClassification.from_pretrained(classifier_dir)
    )
    settings = dict(
        output_dir=str(out),
        num_train_epochs=2,
        per_device_train_batch_size=16,
        learning_rate=0.1,
        optim="sgd",
        optim_args=None,
        eval_strategy="no",
        save_strategy="no",
        use_cpu=True,
        seed=5,
    )
    settings.update(overrides.pop("args", {}))
    inputs = {
        "train_dataset": synthetic["train"],
        "eval_dataset": synthetic["validation"],
        "train_transform": TRANSFORM,
    }
    trainer = DualSigmoidTrainer(dual, DualSigTrainingArguments(**settings), **{**inputs, **overrides})
    trainer.train()
    return dual, trainer


def _assert_same_head(a, b, atol):
    for key, value in a.sigmoid_head.state_dict().items():
        torch.testing.assert_close(b.sigmoid_head.state_dict()[key], value, atol=atol, rtol=0)


class PixelRows(torch.utils.data.Dataset):
    """A plain torch dataset of {"pixel_values", "labels"} rows."""

    def __init__(self, dataset):
        self.rows = [{"pixel_values": TRANSFORM(r["image"]), "labels": r["label"]} for r in dataset]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        return self.rows[index]


def _example_transform(batch):
    """transformers' image-classification example: pixel_values added, the raw columns kept."""
    return {**batch, "pixel_values": [TRANSFORM(image) for image in batch["image"]]}


def _example_collate(examples):
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([e["label"] for e in examples]),
    }


def test_ready_datasets_train_the_same_head_as_raw_images_with_a_transform(tiny_classifier_dir, synthetic, tmp_path):
    raw, raw_trainer = _train_head(tiny_classifier_dir, synthetic, tmp_path / "raw")
    streamed, streamed_trainer = _train_head(
        tiny_classifier_dir,
        synthetic,
        tmp_path / "with_transform",
        train_dataset=synthetic["train"].with_transform(_example_transform),
        eval_dataset=synthetic["validation"].with_transform(_example_transform),
        train_transform=None,
        data_collator=_example_collate,
    )
    plain, plain_trainer = _train_head(
        tiny_classifier_dir,
        synthetic,
        tmp_path / "torch",
        train_dataset=PixelRows(synthetic["train"]),
        eval_dataset=PixelRows(synthetic["validation"]),
        train_transform=None,
    )
    assert raw_trainer.uses_feature_cache and not streamed_trainer.uses_feature_cache
    assert not plain_trainer.uses_feature_cache
    _assert_same_head(raw, streamed, atol=1e-5)
    _assert_same_head(raw, plain, atol=1e-5)
    assert streamed_trainer.evaluate()["eval_loss"] == pytest.approx(raw_trainer.evaluate()["eval_loss"], rel=1e-5)
    assert plain.config.sigmoid_head_trained


CROP_FLIP = ImageTransform(32, 32, augment="crop_flip")


def test_k_view_cache_trains_the_same_head_as_the_backbone_with_the_same_draws(
    tiny_classifier_dir, synthetic, tmp_path
):
    options = dict(train_transform=CROP_FLIP, feature_cache_views=3, args={"num_train_epochs": 3})
    cached, trainer = _train_head(tiny_classifier_dir, synthetic, tmp_path / "cache", **options)
    direct, direct_trainer = _train_head(
        tiny_classifier_dir, synthetic, tmp_path / "direct", use_feature_cache=False, **options
    )
    assert trainer.uses_feature_cache and not direct_trainer.uses_feature_cache
    _assert_same_head(cached, direct, atol=1e-5)
    cache, index = trainer.train_dataset, np.arange(48)
    views = [cache.rows(index, np.full(48, k))["head_inputs"][0] for k in range(3)]
    for a, b in ((0, 1), (0, 2), (1, 2)):  # 6 x 6 crops x 2 flips: a few images draw the same crop twice
        assert ((views[a] - views[b]).abs().amax(1) > 1e-3).float().mean() > 0.8
    seen = set()
    for epoch in range(3):  # 3 epochs show each image each of its 3 views once
        cache.set_epoch(epoch)
        seen |= {(i, int(v)) for i, v in zip(index, cache.schedule.views_of(index))}
    assert seen == {(i, k) for i in range(48) for k in range(3)}
    with pytest.raises(AssertionError):  # the draws matter: one view every epoch trains another head
        other, _ = _train_head(
            tiny_classifier_dir, synthetic, tmp_path / "one", **{**options, "feature_cache_views": 1}
        )
        _assert_same_head(cached, other, atol=1e-5)


def test_crop_flip_is_the_authors_recipe_drawn_from_the_given_generator():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8))
    transform = ImageTransform(28, 28, augment="crop_flip")  # resize to 32x32, crop 28: 5 x 5 offsets x 2 flips
    big = ImageTransform(32, 32)(image)
    windows = {
        (top, left, flip): (big.flip(-1) if flip else big)[:, top : top + 28, left : left + 28]
        for top in range(5) for left in range(5) for flip in (0, 1)
    }  # fmt: skip
    drawn = set()
    for seed in range(40):
        out = transform(image, torch.Generator().manual_seed(seed))
        assert torch.equal(out, transform(image, torch.Generator().manual_seed(seed)))
        torch.manual_seed(seed)
        assert torch.equal(out, transform(image))  # the same draws as torch's global generator seeded alike
        drawn |= {key for key, window in windows.items() if torch.equal(out, window)}
    assert len({key[2] for key in drawn}) == 2 and len({key[:2] for key in drawn}) > 5
    with pytest.raises(ValueError, match="augment"):
        ImageTransform(28, 28, augment="crop")


def test_bad_trainer_arguments_fail_before_any_work(tiny_classifier_dir, synthetic, tmp_path):
    cases = [
        (dict(train_transform=None), "train_transform"),
        (dict(train_dataset=PixelRows(synthetic["train"])), "train_transform is for raw images"),
        (
            dict(
                train_dataset=PixelRows(synthetic["train"]),
                eval_dataset=None,
                train_transform=None,
                use_feature_cache=True,
            ),
            "use_feature",
        ),
        (dict(feature_cache_views=2), "feature_cache_views=2 needs a random"),
        (dict(feature_cache_views=0), "feature_cache_views"),
        (dict(feature_cache_dtype="int8"), "feature_cache_dtype"),
        (dict(feature_cache_autocast="int8"), "feature_cache_autocast='int8'"),
        (dict(feature_cache_autocast="float16"), "feature_cache_autocast='float16' needs a CUDA device"),
        (dict(train_dataset=synthetic["train"].select([])), "train_dataset is empty"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            _train_head(tiny_classifier_dir, synthetic, tmp_path, **overrides)
    assert not (tmp_path / "feature_cache").exists()
    with pytest.raises(ValueError, match="--feature_cache_autocast 'half'"):
        ModelArguments(feature_cache_autocast="half")
    data = DataArguments()
    args = DualSigTrainingArguments(output_dir=str(tmp_path / "job"), use_cpu=True)
    with pytest.raises(ValueError, match="--feature_cache_autocast='float16' needs a CUDA device"):
        run(ModelArguments(feature_cache_autocast="float16"), data, args)  # before stage 1, before any data
    assert not (tmp_path / "job").exists()


def test_feature_cache_trains_the_same_head_and_freezes_the_rest(tiny_classifier_dir, synthetic, tmp_path):
    cached, trainer = _train_head(tiny_classifier_dir, synthetic, tmp_path / "a", use_feature_cache=True)
    direct, _ = _train_head(tiny_classifier_dir, synthetic, tmp_path / "b", use_feature_cache=False)
    assert trainer.uses_feature_cache
    for key, value in cached.sigmoid_head.state_dict().items():
        torch.testing.assert_close(value, direct.sigmoid_head.state_dict()[key], atol=1e-6, rtol=1e-5)
    torch.manual_seed(0)
    untouched = DualSigmoidForImageClassification.from_classifier(
        T.AutoModelForImageClassification.from_pretrained(tiny_classifier_dir)
    )
    assert _checksum(cached.classifier) == _checksum(direct.classifier) == _checksum(untouched.classifier)
    assert not torch.equal(cached.sigmoid_head[0][1].weight, untouched.sigmoid_head[0][1].weight)


def test_the_streamed_memory_mapped_cache_trains_the_same_head_as_features_held_in_memory(
    tiny_classifier_dir, synthetic, tmp_path
):
    streamed, trainer = _train_head(tiny_classifier_dir, synthetic, tmp_path / "a", use_feature_cache=True)
    classifier = T.AutoModelForImageClassification.from_pretrained(tiny_classifier_dir).eval()
    frozen = DualSigmoidForImageClassification.from_classifier(classifier)
    splits = {}
    with torch.no_grad():
        for name in ("train", "validation"):
            pixels = torch.stack([TRANSFORM(image) for image in synthetic[name]["image"]])
            splits[name] = HeadInputs(
                frozen(pixel_values=pixels).head_inputs[0], torch.tensor(synthetic[name]["label"])
            )
    in_memory, _ = _train_head(
        tiny_classifier_dir,
        synthetic,
        tmp_path / "b",
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        train_transform=None,
    )
    assert trainer.uses_feature_cache
    for key, value in streamed.sigmoid_head.state_dict().items():
        torch.testing.assert_close(value, in_memory.sigmoid_head.state_dict()[key], atol=1e-6, rtol=0)


def test_gradient_accumulation_gives_the_full_batch_loss(tiny_classifier_dir, synthetic, tmp_path):
    # 48 samples: batches of 16 vs 8 x 2 accumulation steps vs 5 + 5 + ... with an uneven last batch
    full, _ = _train_head(tiny_classifier_dir, synthetic, tmp_path / "a", args={"per_device_train_batch_size": 16})
    accumulated, _ = _train_head(
        tiny_classifier_dir,
        synthetic,
        tmp_path / "b",
        args={"per_device_train_batch_size": 8, "gradient_accumulation_steps": 2},
    )
    for key, value in full.sigmoid_head.state_dict().items():
        torch.testing.assert_close(accumulated.sigmoid_head.state_dict()[key], value, atol=1e-6, rtol=1e-5)


def test_evaluation_reports_both_heads_and_the_bce(tiny_classifier_dir, synthetic, tmp_path):
    dual, trainer = _train_head(tiny_classifier_dir, synthetic, tmp_path)
    metrics = trainer.evaluate()
    with torch.no_grad():
        pixels = torch.stack([TRANSFORM(image) for image in synthetic["validation"]["image"]])
        labels = torch.tensor(synthetic["validation"]["label"])
        out = dual(pixels, labels=labels)
    assert metrics["eval_accuracy_softmax"] == pytest.approx((out.logits.argmax(-1) == labels).float().mean().item())
    assert metrics["eval_accuracy_sigmoid"] == pytest.approx(
        (out.sigmoid_logits.argmax(-1) == labels).float().mean().item()
    )
    assert metrics["eval_loss"] == pytest.approx(out.loss.item(), rel=1e-4)


def _run_in_one_and_two_processes(script_args, one_args, two_args, tmp_path):
    """Run a script (arguments start with its path) in one process and under a 2-process gloo launch."""
    env = {**os.environ, "HF_DUALSIG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    launch = two_process_launch()
    runs = []
    for prefix, extra in (([sys.executable], one_args), (launch, two_args)):
        run_ = subprocess.run([*prefix, *script_args, *extra], cwd=REPO, env=env, capture_output=True, text=True)
        assert run_.returncode == 0, run_.stderr[-3000:]
        runs.append(run_)
    return runs


SMALL_SET_ARGS = [
    "--use_cpu", "--synthetic_num_train", "48", "--synthetic_num_val", "16", "--synthetic_num_test", "16",
    "--synthetic_num_classes", "4", "--image_size", "32",
]  # fmt: skip


def test_two_processes_match_one_process(tiny_classifier_dir, tmp_path):
    script = [
        "scripts/train.py", "--stage", "sigmoid", "--model_name_or_path", str(tiny_classifier_dir), *SMALL_SET_ARGS,
        "--num_train_epochs", "2", "--eval_strategy", "no", "--save_strategy", "no", "--learning_rate", "0.1",
        "--evaluate_after_training", "False",
    ]  # fmt: skip
    one, two = _run_in_one_and_two_processes(
        script,
        ["--output_dir", str(tmp_path / "one"), "--per_device_train_batch_size", "16"],
        ["--output_dir", str(tmp_path / "two"), "--per_device_train_batch_size", "8"],
        tmp_path,
    )
    assert '"num_processes": 2' in two.stdout and '"num_processes": 1' in one.stdout
    heads = [
        DualSigmoidForImageClassification.from_pretrained(tmp_path / n).sigmoid_head.state_dict()
        for n in ("one", "two")
    ]
    start = DualSigmoidForImageClassification.from_classifier(
        T.AutoModelForImageClassification.from_pretrained(tiny_classifier_dir)
    )
    for key in heads[0]:
        torch.testing.assert_close(heads[1][key], heads[0][key], atol=1e-5, rtol=0)
        assert not torch.equal(heads[0][key], start.sigmoid_head.state_dict()[key])


def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny_classifier_dir, tmp_path):
    env = {**os.environ, "HF_DUALSIG_CACHE": str(tmp_path / "cache")}
    driver = [sys.executable, str(REPO / "tests" / "train_driver.py"), str(tiny_classifier_dir)]
    straight = subprocess.run([*driver, str(tmp_path / "straight")], env=env, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed = subprocess.run(
        [*driver, str(tmp_path / "resumed"), "--kill_after_step", "4"], env=env, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert (tmp_path / "resumed" / "checkpoint-4").is_dir() and not (tmp_path / "resumed" / "checkpoint-8").exists()
    resumed = subprocess.run([*driver, str(tmp_path / "resumed"), "--resume"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = DualSigmoidForImageClassification.from_pretrained(tmp_path / "straight").sigmoid_head.state_dict()
    b = DualSigmoidForImageClassification.from_pretrained(tmp_path / "resumed").sigmoid_head.state_dict()
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)


def test_bad_data_fails_before_training(tiny_classifier_dir, synthetic, tmp_path):
    from hf_dualsig.data.loaders import check_label_names, check_split

    with pytest.raises(ValueError, match="empty"):
        check_split(synthetic["train"].select([]), "train", 4)
    with pytest.raises(ValueError, match=r"outside the model's label set \[0, 3\)"):
        check_split(synthetic["train"], "train", 3)
    with pytest.raises(ValueError, match="label names"):
        check_label_names(synthetic["train"], {0: "a", 1: "b", 2: "c", 3: "d"})
    with pytest.raises(ValueError, match="augment"):
        _train_head(
            tiny_classifier_dir,
            synthetic,
            tmp_path,
            use_feature_cache=True,
            train_transform=ImageTransform(32, 32, augment=True),
        )
    with pytest.raises(TypeError, match="from_classifier"):
        DualSigmoidTrainer(
            T.AutoModelForImageClassification.from_pretrained(tiny_classifier_dir),
            DualSigTrainingArguments(output_dir=str(tmp_path)),
            train_transform=TRANSFORM,
        )
    with pytest.raises(ValueError, match="--stage"):
        run(ModelArguments(stage="all"), DataArguments(), DualSigTrainingArguments(output_dir=str(tmp_path)))


def _checksum(module) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def test_evaluation_in_two_processes_equals_one_process(tiny_classifier_dir, tmp_path):
    dual = DualSigmoidForImageClassification.from_classifier(
        T.AutoModelForImageClassification.from_pretrained(tiny_classifier_dir)
    )
    dual.save_pretrained(tmp_path / "model")
    T.AutoImageProcessor.from_pretrained(tiny_classifier_dir).save_pretrained(tmp_path / "model")
    script = [
        "scripts/evaluate.py", "--model_name_or_path", str(tmp_path / "model"), *SMALL_SET_ARGS, "--eval_size", "64",
        "--methods", "cam,gradcam", "--insertion_deletion_steps", "4", "--eval_batch_size", "5",
    ]  # fmt: skip
    _run_in_one_and_two_processes(
        script, ["--output_dir", str(tmp_path / "one")], ["--output_dir", str(tmp_path / "two")], tmp_path
    )
    results = [json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two")]
    assert results[0]["num_images"] == results[1]["num_images"] == 16
    assert results[0]["methods"] == results[1]["methods"]
    assert results[0]["top1_cls"] == results[1]["top1_cls"]
    assert (tmp_path / "one" / "box_accuracy_curves.png").stat().st_size > 0
    assert (tmp_path / "one" / "results.md").read_text().startswith("Top-1 Cls")
