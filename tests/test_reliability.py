"""Bad input and faults: nothing written outside its folder, nothing deleted that we did not make, every bad
argument refused before work, the caller's model given back unchanged."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch
import transformers as T
from datasets import Dataset, Features, Image, Value

from hf_dualsig import CAM_METHODS, DualSigmoidForImageClassification, explain
from hf_dualsig.cam import resize_maps
from hf_dualsig.data.loaders import check_split, load_wsol_metadata
from hf_dualsig.data.transforms import ImageTransform
from hf_dualsig.evaluation import EvalArguments, evaluate_model
from hf_dualsig.hub import STAGE_MARKER, stage
from hf_dualsig.zoo import tiny_classifier

REPO = Path(__file__).resolve().parents[1]


def _script(name: str):
    """A script of scripts/ as a module (by path: `evaluate` would otherwise be the evaluate library)."""
    spec = importlib.util.spec_from_file_location(f"script_{name}", REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pixels(batch=2, size=32, seed=0):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _dual(family="resnet", num_labels=4):
    torch.manual_seed(0)
    return DualSigmoidForImageClassification.from_classifier(tiny_classifier(family, num_labels=num_labels))


def _write_wsol_split(root: Path, image_id: str) -> Path:
    meta = root / "meta"
    meta.mkdir(parents=True)
    (meta / "image_ids.txt").write_text(f"{image_id}\n")
    (meta / "class_labels.txt").write_text(f"{image_id},0\n")
    (meta / "localization.txt").write_text(f"{image_id},1,1,10,10\n")
    return meta


@pytest.mark.parametrize("image_id", ["../escaped.png", "/tmp/absolute.png", "a/../../escaped.png"])
def test_image_ids_from_data_files_never_leave_their_folder(tmp_path, synthetic, image_id):
    with pytest.raises(ValueError, match="image id"):
        load_wsol_metadata(str(_write_wsol_split(tmp_path, image_id)), str(tmp_path / "images"))
    test = synthetic["test"].select(range(2)).add_column("image_id", [image_id, "fine"])
    scoremaps = tmp_path / "out" / "scoremaps"
    with pytest.raises(ValueError, match="image id"):
        evaluate_model(_dual(), test, ImageTransform(32, 32), EvalArguments(fidelity=False), str(scoremaps))
    written = [p for p in tmp_path.rglob("*.npy")]
    assert written == [] and not Path("/tmp/absolute.png.npy").exists()


def test_staging_never_removes_a_folder_it_did_not_make(tmp_path):
    dual, processor = _dual(), T.ViTImageProcessorPil(size={"height": 32, "width": 32})
    checkpoint = tmp_path / "run"
    dual.save_pretrained(checkpoint)
    (checkpoint / "training_outputs.txt").write_text("precious")
    push_main = _script("push_to_hub").main

    for stage_dir in (checkpoint, tmp_path):  # the checkpoint itself, and a folder above it
        with pytest.raises(ValueError, match="stage_dir"):
            push_main(["--checkpoint", str(checkpoint), "--repo_id", "u/x", "--dry_run", "--stage_dir", str(stage_dir)])
    with pytest.raises(ValueError, match="not made by hf_dualsig"):
        stage(dual, processor, str(checkpoint), "u/x")
    assert (checkpoint / "training_outputs.txt").read_text() == "precious"
    leftover = tmp_path / ".staging-999999999-abc"  # a staging killed mid-way by a process that is gone
    leftover.mkdir()
    (leftover / STAGE_MARKER).write_text("999999999")
    foreign = tmp_path / ".staging-999999999-notours"  # same name pattern, no marker: not ours, kept
    foreign.mkdir()
    staged = stage(dual, processor, str(tmp_path / "stage"), "u/x")
    assert (Path(staged) / STAGE_MARKER).exists()
    stage(dual, processor, staged, "u/x")  # a folder staging made is replaced
    assert not leftover.exists() and foreign.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".staging-")) == [foreign.name]


def test_explain_gives_the_callers_model_back_unchanged():
    classifier = tiny_classifier("resnet").train()  # left in train mode by the caller
    reference = tiny_classifier("resnet").eval()
    before = {k: v.clone() for k, v in classifier.state_dict().items()}
    x = _pixels()
    out = explain(classifier, x, methods=["scorecam", "gradcam", "cam"])
    assert classifier.training and all(m.training for m in classifier.modules())
    for key, value in classifier.state_dict().items():
        assert torch.equal(value, before[key]), key  # no BatchNorm statistic moved
    expected = explain(reference, x, methods=["scorecam", "gradcam", "cam"])
    for key in out.keys():
        torch.testing.assert_close(out[key], expected[key])  # eval-mode maps


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("family", ["resnet", "vit"])
def test_every_method_runs_in_half_precision(family, dtype):
    dual = _dual(family).to(dtype)
    methods = [m for m, spec in CAM_METHODS.items() if family == "vit" or "attentions" not in spec.needs]
    out = explain(dual, _pixels().to(dtype), methods=methods, heads=["softmax", "sigmoid"])
    for key, value in out.items():
        assert value.dtype == torch.float32 and torch.isfinite(value).all(), key
        assert value.shape == (2, 32, 32)


def test_targets_and_top_k_must_be_what_they_say():
    dual, x = _dual(), _pixels()
    with pytest.raises(ValueError, match="top_k"):
        explain(dual, x, top_k=0)
    with pytest.raises(ValueError, match="integer class ids"):
        explain(dual, x, targets=1.9)
    with pytest.raises(ValueError, match="integer class ids"):
        explain(dual, x, targets=torch.tensor([0.0, 1.0]))


def test_constant_maps_become_zeros_even_through_bicubic_resizing():
    constant = torch.full((2, 1, 1), 3.7)
    assert torch.equal(resize_maps(constant, (224, 224), "bicubic"), torch.zeros(2, 224, 224))
    assert torch.equal(resize_maps(torch.full((1, 5, 5), -2.0), (64, 64), "bicubic"), torch.zeros(1, 64, 64))
    out = explain(_dual(), _pixels(), methods=["gradcam", "cam"], target_layer="resnet.pooler")
    for value in out.maps.values():  # a 1x1 layer gives constant maps
        assert torch.equal(value, torch.zeros_like(value))


def test_wrong_input_types_are_clear_errors():
    dual = _dual()
    with pytest.raises(ValueError, match="uint8"):
        dual(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with torch.no_grad():  # float64 is converted to the model's dtype
        torch.testing.assert_close(dual(_pixels().double()).logits, dual(_pixels()).logits)
    with pytest.raises(ValueError, match="labels has 3 entries but the batch has 2"):
        dual(_pixels(), labels=torch.tensor([0, 1, 2]))


def test_missing_or_corrupt_test_images_are_named_before_work(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    rows = {"image": [str(tmp_path / "broken.png"), str(tmp_path / "missing.png")], "label": [0, 1]}
    broken = Dataset.from_dict(rows, features=Features({"image": Image(), "label": Value("int64")}))
    with pytest.raises(ValueError, match="broken.png.*missing.png"):
        check_split(broken, "test", 4, drop_undecodable=False)


def test_evaluate_refuses_an_unwritable_output_folder_and_corrupt_weights_before_work(tmp_path, tiny_classifier_dir):
    evaluate_main = _script("evaluate").main

    dual = DualSigmoidForImageClassification.from_classifier(
        T.AutoModelForImageClassification.from_pretrained(tiny_classifier_dir)
    )
    dual.save_pretrained(tmp_path / "model")
    T.AutoImageProcessor.from_pretrained(tiny_classifier_dir).save_pretrained(tmp_path / "model")
    (tmp_path / "a_file").write_text("x")
    small = ["--synthetic_num_train", "48", "--synthetic_num_val", "16", "--synthetic_num_test", "16",
             "--synthetic_num_classes", "4", "--image_size", "32", "--fidelity", "False"]  # fmt: skip
    with pytest.raises(ValueError, match="not a writable folder"):
        evaluate_main(["--model_name_or_path", str(tmp_path / "model"), "--output_dir", str(tmp_path / "a_file" / "e")])
    with pytest.raises(ValueError, match="no such folder"):
        evaluate_main(["--model_name_or_path", str(tmp_path / "nowhere" / "model")])
    with torch.no_grad():
        dual.classifier.resnet.embedder.embedder.convolution.weight.fill_(float("nan"))
    dual.save_pretrained(tmp_path / "model")
    with pytest.raises(ValueError, match="non-finite logits"):
        evaluate_main(["--model_name_or_path", str(tmp_path / "model"), *small])
    assert not (tmp_path / "model" / "eval" / "results.json").exists()
    assert os.path.isdir(tmp_path / "model")


def test_explain_script_checks_its_arguments_before_work(tmp_path):
    explain_main = _script("explain").main
    with pytest.raises(ValueError, match="--methods"):
        explain_main(["--methods", "cam,smoothgrad", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--heads"):
        explain_main(["--heads", "softmax,logistic", "--output_dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--images"):
        explain_main(["--model_name_or_path", str(tmp_path), "--images", str(tmp_path / "none.jpg")])
    assert list(tmp_path.iterdir()) == []
