"""The evaluation loop: reader workers and metric threads change nothing in the numbers, and fidelity equals its
definition computed by hand with plain forward passes."""

import numpy as np
import pytest
import torch

from hf_dualsig import DualSigmoidForImageClassification, explain
from hf_dualsig.data.transforms import ImageTransform
from hf_dualsig.evaluation import EvalArguments, evaluate_model
from hf_dualsig.zoo import tiny_classifier

TRANSFORM = ImageTransform(32, 32)


@pytest.fixture(scope="module")
def dual():
    torch.manual_seed(0)
    model = DualSigmoidForImageClassification.from_classifier(tiny_classifier("resnet", num_labels=4))
    with torch.no_grad():  # a branch whose maps differ from the softmax head's
        for parameter in model.sigmoid_head.parameters():
            parameter.normal_(std=0.5)
    return model


def test_reader_workers_and_metric_threads_give_the_same_numbers_and_maps(dual, synthetic, tmp_path):
    settings = dict(methods="cam,gradcam", eval_size=48, eval_batch_size=5)
    in_turn = evaluate_model(dual, synthetic["test"], TRANSFORM, EvalArguments(**settings), str(tmp_path / "a"))
    parallel = evaluate_model(
        dual,
        synthetic["test"],
        TRANSFORM,
        EvalArguments(eval_num_workers=2, metric_workers=2, **settings),
        str(tmp_path / "b"),
    )
    assert in_turn["num_images"] == parallel["num_images"] == len(synthetic["test"])
    assert in_turn["methods"] == parallel["methods"] and in_turn["curves"] == parallel["curves"]
    np.testing.assert_equal(in_turn["pr_curves"], parallel["pr_curves"])  # NaN precision where nothing is predicted
    maps_a, maps_b = sorted((tmp_path / "a").rglob("*.npy")), sorted((tmp_path / "b").rglob("*.npy"))
    assert len(maps_a) == 2 * 2 * len(synthetic["test"])
    assert [p.relative_to(tmp_path / "a") for p in maps_a] == [p.relative_to(tmp_path / "b") for p in maps_b]
    assert all(np.array_equal(np.load(a), np.load(b)) for a, b in zip(maps_a, maps_b))


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_average_drop_and_increase_in_confidence_match_plain_forward_passes(dual, synthetic, head):
    test = synthetic["test"]
    settings = EvalArguments(methods="gradcam", heads="sigmoid", fidelity_head=head, eval_batch_size=6)
    measured = evaluate_model(dual, test, TRANSFORM, settings)["methods"]["gradcam"]["sigmoid"]

    pixels = torch.stack([TRANSFORM(image) for image in test["image"]])
    labels = torch.tensor(test["label"])
    maps = explain(dual, pixels, methods="gradcam", heads="sigmoid", targets=labels).maps[("gradcam", "sigmoid")]
    with torch.no_grad():
        scores = [dual(pixel_values=x) for x in (pixels, pixels * maps[:, None])]
    logits = [out.sigmoid_logits if head == "sigmoid" else out.logits for out in scores]
    probs = [torch.sigmoid(z) if head == "sigmoid" else z.softmax(-1) for z in logits]
    original, explained = (p[torch.arange(len(labels)), labels] for p in probs)
    assert measured["average_drop"] == pytest.approx(
        100 * ((original - explained).clamp(min=0) / original).mean().item(), rel=1e-5
    )
    assert measured["increase_in_confidence"] == pytest.approx(100 * (explained > original).float().mean().item())


def test_fidelity_with_a_head_the_model_lacks_is_refused_before_work(synthetic):
    plain = tiny_classifier("resnet", num_labels=4)
    with pytest.raises(ValueError, match="--fidelity_head sigmoid"):
        evaluate_model(plain, synthetic["test"], TRANSFORM, EvalArguments(fidelity_head="sigmoid"))
