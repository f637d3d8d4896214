"""Dataset sources in the common schema, and scoring precomputed maps in the wsolevaluation layout."""

import numpy as np
import pytest
from datasets import Dataset, Features, List, Value
from datasets import Image as ImageFeature
from PIL import Image

from hf_dualsig.data.loaders import load_image_dataset, load_wsol_metadata
from hf_dualsig.data.synthetic import SyntheticWSOLConfig, draw_example, load_synthetic_wsol
from hf_dualsig.eval_arguments import EvalArguments
from hf_dualsig.metrics.wsol import BoxAccuracy, PixelPrecision, rescale_boxes
from hf_dualsig.scoremaps import evaluate_scoremaps


def _write_layout(root, with_masks=False):
    """A 3-image split in the wsolevaluation layout: metadata/TOY/test/*.txt, images/, masks/."""
    meta = root / "metadata" / "TOY" / "test"
    meta.mkdir(parents=True)
    (root / "images" / "test").mkdir(parents=True)
    ids, boxes = (
        [f"test/img_{i}.png" for i in range(3)],
        [[[4, 6, 20, 30]], [[0, 0, 39, 29], [10, 10, 12, 12]], [[30, 5, 39, 25]]],
    )
    for i, image_id in enumerate(ids):
        Image.fromarray(np.full((30, 40, 3), 40 * i, np.uint8)).save(root / "images" / image_id)
    (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (meta / "class_labels.txt").write_text("".join(f"{i},{k % 2}\n" for k, i in enumerate(ids)))
    (meta / "image_sizes.txt").write_text("".join(f"{i},40,30\n" for i in ids))
    lines = [f"{i},{','.join(str(v) for v in box)}\n" for i, bs in zip(ids, boxes) for box in bs]
    if with_masks:
        (root / "masks").mkdir()
        lines = []
        for k, image_id in enumerate(ids):
            for part in range(2):
                mask = np.zeros((30, 40), np.uint8)
                mask[5 * part : 5 * part + 8, 10 * k : 10 * k + 8] = 255
                Image.fromarray(mask).save(root / "masks" / f"{k}_{part}.png")
                lines.append(
                    f"{image_id},masks/{k}_{part}.png" + (",masks/0_0.png" if part == 0 and k == 2 else "") + "\n"
                )
    (meta / "localization.txt").write_text("".join(lines))
    return meta, ids, boxes


def test_wsol_layout_loads_in_the_common_schema(tmp_path):
    meta, ids, boxes = _write_layout(tmp_path)
    dataset = load_wsol_metadata(str(meta), str(tmp_path / "images"))
    assert dataset["image_id"] == ids and dataset["label"] == [0, 1, 0]
    assert dataset["boxes"] == boxes
    assert dataset[0]["image"].size == (40, 30)


def test_wsol_openimages_masks_are_the_union_of_instances(tmp_path):
    meta, ids, _ = _write_layout(tmp_path, with_masks=True)
    dataset = load_wsol_metadata(str(meta), str(tmp_path / "images"), mask_root=str(tmp_path))
    mask = np.asarray(dataset[1]["mask"]) > 0
    expected = np.zeros((30, 40), bool)
    expected[0:8, 10:18] = expected[5:13, 10:18] = True
    np.testing.assert_array_equal(mask, expected)
    assert dataset[2]["ignore_mask"] is not None and dataset[0]["ignore_mask"] is None


def test_parquet_and_imagefolder_sources(tmp_path):
    images = [Image.fromarray(np.full((10, 12, 3), v, np.uint8)) for v in (0, 100)]
    table = Dataset.from_dict(
        {"img": images, "cls": [1, 0], "bbox": [[1.0, 2.0, 5.0, 6.0], [0.0, 0.0, 3.0, 3.0]]},
        features=Features({"img": ImageFeature(), "cls": Value("int64"), "bbox": List(Value("float32"))}),
    )
    table.to_parquet(str(tmp_path / "cub.parquet"))
    dataset = load_image_dataset("parquet", "train", "img", "cls", "bbox", data_files=str(tmp_path / "cub.parquet"))
    assert dataset.column_names == ["image", "label", "boxes"]
    assert dataset["boxes"] == [[[1.0, 2.0, 5.0, 6.0]], [[0.0, 0.0, 3.0, 3.0]]] and dataset["label"] == [1, 0]
    with pytest.raises(ValueError, match="label column 'category' is not in the dataset"):
        load_image_dataset("parquet", "train", "img", "category", data_files=str(tmp_path / "cub.parquet"))
    for name in ("cat", "dog"):
        (tmp_path / "folder" / "train" / name).mkdir(parents=True)
        images[0].save(tmp_path / "folder" / "train" / name / "a.png")
    folder = load_image_dataset("imagefolder", "train", data_dir=str(tmp_path / "folder"))
    assert sorted(folder["label"]) == [0, 1] and folder.features["label"].names == ["cat", "dog"]


def test_undecodable_images_are_skipped_and_named(tmp_path, caplog):
    from hf_dualsig.data.loaders import check_split

    meta, ids, _ = _write_layout(tmp_path)
    (tmp_path / "images" / ids[1]).write_bytes(b"not a png")
    dataset = load_wsol_metadata(str(meta), str(tmp_path / "images"))
    kept = check_split(dataset, "test", 2)
    assert kept["image_id"] == [ids[0], ids[2]]
    assert "Skipping 1 undecodable image(s)" in caplog.text and "img_1.png" in caplog.text


def test_synthetic_set_is_deterministic_with_exact_boxes_and_masks(tmp_path):
    config = SyntheticWSOLConfig(num_train=6, num_val=2, num_test=2, image_size=48)
    a, b = draw_example(config, 3), draw_example(config, 3)
    assert a["image"].tobytes() == b["image"].tobytes() and a["boxes"] == b["boxes"]
    mask = np.asarray(a["mask"]) > 0
    for x0, y0, x1, y1 in a["boxes"]:
        assert mask[int(y0) : int(y1) + 1, int(x0) : int(x1) + 1].any()
    ys, xs = np.nonzero(mask)
    assert (xs.min(), ys.min(), xs.max(), ys.max()) == tuple(
        int(v)
        for v in (
            min(b[0] for b in a["boxes"]),
            min(b[1] for b in a["boxes"]),
            max(b[2] for b in a["boxes"]),
            max(b[3] for b in a["boxes"]),
        )
    )
    splits = load_synthetic_wsol(config, cache_dir=str(tmp_path))
    assert {k: len(v) for k, v in splits.items()} == {"train": 6, "validation": 2, "test": 2}
    assert splits["train"].features["label"].names[0] == "red_disc"
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticWSOLConfig(num_classes=9)


def _save_maps(root, ids, maps):
    for image_id, score_map in zip(ids, maps):
        path = root / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, score_map)


def test_scoremap_mode_equals_the_metrics_on_the_same_maps(tmp_path):
    meta, ids, boxes = _write_layout(tmp_path, with_masks=False)
    rng = np.random.default_rng(0)
    maps = [rng.random((64, 64)).astype(np.float32) for _ in ids]
    _save_maps(tmp_path / "scoremaps", ids, maps)
    settings = EvalArguments(eval_size=64)
    result = evaluate_scoremaps(str(tmp_path / "scoremaps"), str(meta), settings)
    expected = BoxAccuracy()
    for score_map, bs in zip(maps, boxes):
        expected.add(score_map, rescale_boxes(bs, 40, 30, (64, 64)))
    wanted = expected.compute()
    wanted.pop("top1_loc")
    assert result["scoremaps"] == wanted and result["num_images"] == 3


def test_scoremap_mode_scores_masks(tmp_path):
    meta, ids, _ = _write_layout(tmp_path, with_masks=True)
    maps = [np.full((64, 64), 0.5, np.float32) for _ in ids]
    _save_maps(tmp_path / "scoremaps", ids, maps)
    result = evaluate_scoremaps(str(tmp_path / "scoremaps"), str(meta), EvalArguments(eval_size=64), str(tmp_path))
    assert 0 < result["scoremaps"]["pxap"] < 100


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda m: np.zeros((32, 32), np.float32), r"expected a 2-D map of shape \(64, 64\)"),
        (lambda m: np.full_like(m, np.nan), "NaN or inf"),
        (lambda m: m * 3, r"values must lie in \[0, 1\]"),
        (None, "no score map for image id 'test/img_1.png'"),
    ],
)
def test_scoremap_mode_rejects_bad_maps_naming_the_file(tmp_path, corrupt, message):
    meta, ids, _ = _write_layout(tmp_path)
    maps = [np.random.default_rng(0).random((64, 64)).astype(np.float32) for _ in ids]
    _save_maps(tmp_path / "scoremaps", ids, maps)
    if corrupt is None:
        (tmp_path / "scoremaps" / f"{ids[1]}.npy").unlink()
    else:
        np.save(tmp_path / "scoremaps" / f"{ids[1]}.npy", corrupt(maps[1]))
    with pytest.raises(ValueError, match=message):
        evaluate_scoremaps(str(tmp_path / "scoremaps"), str(meta), EvalArguments(eval_size=64))


def test_bad_metadata_is_named(tmp_path):
    meta, ids, _ = _write_layout(tmp_path)
    _save_maps(tmp_path / "scoremaps", ids, [np.zeros((64, 64), np.float32)] * 3)
    (meta / "localization.txt").write_text(f"{ids[0]},4,6,50,30\n")  # x1 = 50 > width 40
    with pytest.raises(ValueError, match="outside the 40x30 image"):
        evaluate_scoremaps(str(tmp_path / "scoremaps"), str(meta), EvalArguments(eval_size=64))
    (meta / "image_ids.txt").write_text("")
    with pytest.raises(ValueError, match="empty"):
        evaluate_scoremaps(str(tmp_path / "scoremaps"), str(meta), EvalArguments(eval_size=64))


def test_evaluate_modules_load_from_a_local_path_and_match_the_accumulators():
    import evaluate

    from hf_dualsig.metrics import wsol

    root = wsol.__file__.replace("wsol.py", "evaluate_modules")
    rng = np.random.default_rng(2)
    maps = [rng.random((32, 32)).astype(np.float32) for _ in range(4)]
    boxes = [[[2, 3, 20, 25]], [[0, 0, 31, 31]], [[10, 10, 12, 12], [1, 1, 5, 5]], [[5, 5, 6, 30]]]
    masks = [m > 0.7 for m in maps]
    box_metric = evaluate.load(f"{root}/maxboxacc")
    box_metric.add_batch(predictions=maps[:2], references=boxes[:2], correct_class=[True, False])
    box_metric.add_batch(predictions=maps[2:], references=boxes[2:], correct_class=[True, True])
    pixel_metric = evaluate.load(f"{root}/pxap")
    pixel_metric.add_batch(predictions=maps, references=masks)
    direct_boxes, direct_pixels = BoxAccuracy(), PixelPrecision()
    for m, b, c, k in zip(maps, boxes, [True, False, True, True], masks):
        direct_boxes.add(m, np.asarray(b), c)
        direct_pixels.add(m, k)
    assert box_metric.compute() == direct_boxes.compute()
    assert pixel_metric.compute() == direct_pixels.compute()
