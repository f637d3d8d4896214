"""Staging and pushing: files, card, remote-code explain, one-commit upload, token check, pipeline (Space: test_space)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import transformers as T
from huggingface_hub import HfApi, ModelCard
from PIL import Image

from hf_dualsig import DualSigmoidForImageClassification, explain
from hf_dualsig.hub import STAGE_MARKER, publish, require_token
from hf_dualsig.zoo import tiny_classifier

RESULTS = {
    "top1_cls": {"softmax": 75.0, "sigmoid": 68.75},
    "num_images": 16,
    "methods": {
        "gradcam": {
            "softmax": {
                "maxboxacc_v2": 40.5,
                "top1_loc": 25.0,
                "gt_known_loc": 31.25,
                "average_drop": 50.1,
                "increase_in_confidence": 12.5,
            },
            "sigmoid": {
                "maxboxacc_v2": 44.25,
                "top1_loc": 18.75,
                "gt_known_loc": 37.5,
                "average_drop": 47.3,
                "increase_in_confidence": 18.75,
            },
        }
    },
    "settings": {"eval_size": 224, "fixed_threshold": 0.2, "fidelity_head": "softmax"},
}


@pytest.fixture(scope="module")
def dual_and_processor():
    dual = DualSigmoidForImageClassification.from_classifier(tiny_classifier("resnet", num_labels=4))
    with torch.no_grad():
        dual.sigmoid_head[0][1].weight.add_(
            torch.randn(dual.sigmoid_head[0][1].weight.shape, generator=torch.Generator().manual_seed(0))
        )
    return dual, T.ViTImageProcessorPil(size={"height": 32, "width": 32})


@pytest.fixture
def staged(dual_and_processor, synthetic, tmp_path):
    dual, processor = dual_and_processor
    outcome = publish(
        dual,
        processor,
        "someone/tiny-dualsig",
        str(tmp_path / "stage"),
        results=RESULTS,
        gallery_dataset=synthetic["test"],
        num_gallery=3,
        dry_run=True,
        save_scoremaps=True,
    )
    return Path(outcome["stage_dir"])


def test_staged_folder_holds_everything_and_the_card_parses(staged):
    files = {str(p.relative_to(staged)) for p in staged.rglob("*") if p.is_file()}
    assert files == {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "results.json",
        "modeling_dualsig.py",
        "configuration_dualsig.py",
        "backbones.py",
        "losses.py",
        "cam.py",
        "pipeline_dualsig.py",
        "configuration_wsol_backbones.py",
        "modeling_wsol_backbones.py",
        STAGE_MARKER,
        "maps/gallery.png",
        "maps/scoremaps.npz",
        "maps/scoremaps_index.json",
    }
    config = json.loads((staged / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel", "AutoModelForImageClassification"}
    assert config["custom_pipelines"]["dualsig-cam"]["impl"] == "pipeline_dualsig.DualSigmoidCAMPipeline"
    card = ModelCard.load(staged / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    reported = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert reported["Top-1 Cls (sigmoid head)"] == RESULTS["top1_cls"]["sigmoid"]
    for head in ("softmax", "sigmoid"):
        for key, title in (
            ("maxboxacc_v2", "MaxBoxAccV2"),
            ("top1_loc", "Top-1 Loc"),
            ("average_drop", "Average Drop"),
        ):
            assert reported[f"{title} (gradcam, {head} head)"] == RESULTS["methods"]["gradcam"][head][key]
    assert json.loads((staged / "results.json").read_text()) == RESULTS
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", card.text):
        assert (staged / image).is_file(), image
    assert "40.50 -> 44.25" in card.text  # the paper-style table
    scoremaps = np.load(staged / "maps" / "scoremaps.npz")
    assert scoremaps["gradcam__sigmoid"].shape == (3, 32, 32)


REMOTE_EXPLAIN = """
import sys
sys.modules["hf_dualsig"] = None
import torch, transformers as T
model = T.AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
x = torch.load(sys.argv[2])
out = model.explain(x, methods=["gradcam", "cam", "layercam"], heads=["softmax", "sigmoid"])
torch.save({k: v for k, v in out.items()}, sys.argv[3])
pipe = T.pipeline("dualsig-cam", model=sys.argv[1], trust_remote_code=True)
result = pipe(sys.argv[4], method="gradcam")
assert set(result) == {"label", "softmax_score", "sigmoid_score", "target", "map", "overlay"}, result
"""


def test_staged_checkpoint_explains_itself_without_the_package(staged, dual_and_processor, tmp_path):
    dual, _ = dual_and_processor
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    torch.save(x, tmp_path / "x.pt")
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(tmp_path / "img.png")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            REMOTE_EXPLAIN,
            str(staged),
            str(tmp_path / "x.pt"),
            str(tmp_path / "maps.pt"),
            str(tmp_path / "img.png"),
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": "", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    remote = torch.load(tmp_path / "maps.pt")
    local = explain(dual, x, methods=["gradcam", "cam", "layercam"], heads=["softmax", "sigmoid"])
    assert set(remote) == set(local.keys())
    for key, value in remote.items():
        torch.testing.assert_close(value, local[key], atol=1e-5, rtol=0)


def test_upload_sends_exactly_the_staged_files_in_one_commit(dual_and_processor, synthetic, tmp_path, monkeypatch):
    dual, processor = dual_and_processor
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    uploads = []

    def upload_folder(self, **kwargs):
        # what huggingface_hub would commit for these arguments (its own file selection), recorded as one commit
        with mock.patch.object(HfApi, "_validate_yaml"):
            operations = self._prepare_upload_folder_additions(
                kwargs["folder_path"],
                kwargs.get("path_in_repo") or "",
                kwargs.get("allow_patterns"),
                kwargs.get("ignore_patterns"),
            )
        uploads.append((kwargs["repo_id"], sorted(op.path_in_repo for op in operations), kwargs["commit_message"]))
        return mock.Mock(commit_url="https://huggingface.co/someone/tiny-dualsig/commit/abc")

    with (
        mock.patch.object(HfApi, "create_repo") as create_repo,
        mock.patch.object(HfApi, "upload_folder", upload_folder),
    ):
        outcome = publish(
            dual,
            processor,
            "someone/tiny-dualsig",
            str(tmp_path / "stage"),
            results=RESULTS,
            gallery_dataset=synthetic["test"],
            num_gallery=2,
            private=True,
            commit_message="first push",
        )
    create_repo.assert_called_once()
    assert create_repo.call_args.kwargs["private"] is True and create_repo.call_args.kwargs["exist_ok"] is True
    staged = sorted(str(p.relative_to(tmp_path / "stage")) for p in (tmp_path / "stage").rglob("*") if p.is_file())
    staged.remove(STAGE_MARKER)  # the staging marker stays local
    assert uploads == [("someone/tiny-dualsig", staged, "first push")]
    assert outcome["commit"].endswith("/commit/abc")


def test_a_missing_token_fails_before_any_work(dual_and_processor, tmp_path, monkeypatch):
    dual, processor = dual_and_processor
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    with pytest.raises(ValueError, match="No Hugging Face token"):
        require_token()
    with pytest.raises(ValueError, match="No Hugging Face token"):
        publish(dual, processor, "someone/x", str(tmp_path / "stage"), results=RESULTS)
    assert not (tmp_path / "stage").exists()
    from hf_dualsig.data.splits import DataArguments
    from hf_dualsig.train_job import DualSigTrainingArguments, ModelArguments, run

    args = DualSigTrainingArguments(output_dir=str(tmp_path / "out"), push_to_hub=True, hub_model_id="someone/x")
    with pytest.raises(ValueError, match="No Hugging Face token"):
        run(ModelArguments(), DataArguments(synthetic_num_train=4), args)
    assert not (tmp_path / "out").exists()


def test_cam_pipeline_returns_the_documented_fields_for_one_image_and_a_batch(dual_and_processor):
    dual, processor = dual_and_processor
    pipe = T.pipeline("dualsig-cam", model=dual, image_processor=processor)
    image = Image.fromarray((np.random.default_rng(0).random((40, 50, 3)) * 255).astype(np.uint8))
    single = pipe(image, method="gradcam", head="sigmoid")
    assert set(single) == {"label", "softmax_score", "sigmoid_score", "target", "map", "overlay"}
    assert single["map"].shape == (32, 32) and single["overlay"].size == (50, 40)
    with torch.no_grad():
        logits = dual(processor(image, return_tensors="pt")["pixel_values"])
    assert single["label"] == dual.config.id2label[int(logits.logits.argmax())]
    assert single["sigmoid_score"] == pytest.approx(float(logits.sigmoid_logits[0, single["target"]].sigmoid()))
    batch = pipe([image, image], method="cam", head="softmax", target=2)
    assert len(batch) == 2 and all(r["target"] == 2 for r in batch)
    torch.testing.assert_close(batch[0]["map"], batch[1]["map"])
