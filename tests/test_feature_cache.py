"""The streaming, memory-mapped feature cache: exact round trips over shards and views, reuse only of complete caches
with the same key, half-precision error bounds, flat resident memory, the same features in every process."""

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers as T
from conftest import two_process_launch

from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.data.transforms import ImageTransform
from hf_dualsig.feature_cache import (
    CachedFeatures,
    ShardWriter,
    ViewSchedule,
    is_complete,
    mark_complete,
    shard_path,
)
from hf_dualsig.training import CacheSettings, build_feature_cache

REPO = Path(__file__).resolve().parents[1]
TRANSFORM = ImageTransform(32, 32)


def _write(directory, shards, views, widths, dtype="float32", seed=0, chunk=3):
    """Random features through the write path: `shards` rows per process, each streamed in chunks."""
    generator = torch.Generator().manual_seed(1)
    total = sum(shards)
    features = [[torch.randn(total, w, generator=generator) * 10 for w in widths] for _ in range(views)]
    labels = torch.randint(0, 7, (total,), generator=generator)
    start = 0
    for rank, rows in enumerate(shards):
        writer = ShardWriter(str(directory), rank, rows, dtype)
        for lo in range(start, start + rows, chunk):
            hi = min(lo + chunk, start + rows)
            for view in range(views):
                for head, width in enumerate(widths):
                    writer.append(f"view{view}.head{head}", features[view][head][lo:hi])
            writer.append("labels", labels[lo:hi])
        writer.close()
        start += rows
    mark_complete(str(directory), list(shards), views, len(widths), seed, dtype)
    return features, labels


def test_rows_come_back_exactly_across_shards_views_and_epochs(tmp_path):
    features, labels = _write(tmp_path, shards=[5, 0, 8], views=3, widths=[4, 6], seed=11)
    cache = CachedFeatures(str(tmp_path))
    assert len(cache) == 13
    index = np.array([12, 0, 5, 4, 7, 7, 1])
    for epoch in range(4):
        cache.set_epoch(epoch)
        views = ViewSchedule(3, 11)
        views.set_epoch(epoch)
        expected_views = views.views_of(index)
        batch = cache.__getitems__(index.tolist())
        for head in range(2):
            expected = torch.stack([features[v][head][i] for v, i in zip(expected_views, index)])
            assert torch.equal(batch["head_inputs"][head], expected)
        assert torch.equal(batch["labels"], labels[index])
    row = cache[12]
    assert torch.equal(row["labels"], labels[12]) and row["head_inputs"][1].shape == (6,)
    with pytest.raises(IndexError):
        cache.__getitems__([13])


def _model_counting_forwards(classifier_dir):
    """A dual model of the tiny classifier, and the list its classifier's forward passes append to."""
    torch.manual_seed(0)
    model = DualSigmoidForImageClassification.from_classifier(
        T.AutoModelForImageClassification.from_pretrained(classifier_dir)
    )
    calls = []
    model.classifier.register_forward_hook(lambda *_: calls.append(1))
    return model, calls


def test_only_a_complete_cache_with_the_same_key_is_reused(tiny_classifier_dir, synthetic, tmp_path):
    model, calls = _model_counting_forwards(tiny_classifier_dir)

    def build(transform=TRANSFORM):
        settings = CacheSettings(str(tmp_path), batch_size=16)  # 48 images: 3 batches
        return build_feature_cache(model, synthetic["train"], transform, ViewSchedule(1, 0), settings)

    first = build()
    assert len(calls) == 3 and is_complete(first.directory)
    assert build().directory == first.directory and len(calls) == 3  # reused: the backbone did not run
    assert build(ImageTransform(32, 32, mean=(0.4, 0.5, 0.5))).directory != first.directory and len(calls) == 6

    def killed_on_the_second_batch(*_):
        if len(calls) == 8:
            raise RuntimeError("killed")

    third = ImageTransform(32, 32, mean=(0.3, 0.5, 0.5))
    crash = model.classifier.register_forward_hook(killed_on_the_second_batch)
    with pytest.raises(RuntimeError, match="killed"):
        build(third)
    crash.remove()
    partial = next(str(p) for p in tmp_path.iterdir() if not is_complete(str(p)))
    assert any(".tmp-" in name for name in os.listdir(partial))  # one batch streamed, never renamed
    rebuilt = build(third)
    assert rebuilt.directory == partial and len(calls) == 8 + 3  # the partial cache was recomputed, not read
    with torch.no_grad():
        expected = model(torch.stack([third(image) for image in synthetic["train"]["image"]])).head_inputs[0]
    read = rebuilt.__getitems__(list(range(48)))
    torch.testing.assert_close(read["head_inputs"][0], expected, atol=1e-5, rtol=0)
    assert torch.equal(read["labels"], torch.tensor(synthetic["train"]["label"]))
    with torch.no_grad():
        next(model.classifier.parameters()).mul_(2)
    assert build().directory != first.directory  # other weights, another key


@pytest.mark.parametrize(("dtype", "bound"), [("float16", 2.0**-11), ("bfloat16", 2.0**-8)])
def test_half_precision_caches_round_within_their_bound(tmp_path, dtype, bound):
    exact, _ = _write(tmp_path / "exact", shards=[64], views=1, widths=[256])
    halved, _ = _write(tmp_path / dtype, shards=[64], views=1, widths=[256], dtype=dtype)
    assert torch.equal(exact[0][0], halved[0][0])  # the same source features
    read = CachedFeatures(str(tmp_path / dtype)).__getitems__(list(range(64)))["head_inputs"][0]
    source = exact[0][0]
    normal = source.abs() > 2.0**-14  # float16's normal range (bfloat16's is float32's)
    error = (read - source).abs()
    assert (error[normal] <= bound * source.abs()[normal]).all()
    assert error.max() > 0  # the bound is not vacuous: rounding happened
    if dtype == "float16":
        with pytest.raises(ValueError, match="feature_cache_dtype='float16' overflows"):
            ShardWriter(str(tmp_path / "overflow"), 0, 1, dtype).append("view0.head0", torch.tensor([[7e4]]))


def _peak_growth_mib(read) -> float:
    """How far resident memory (VmHWM, reset first: Linux >= 4.0) rises above its level while `read()` runs."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")
    before = _status_kib("VmRSS")
    result = read()
    growth = (_status_kib("VmHWM") - before) / 1024
    del result
    return growth


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as handle:
        return int(next(line for line in handle if line.startswith(field + ":")).split()[1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures peak memory through Linux /proc")
def test_reading_keeps_resident_memory_flat(tmp_path):
    rows, width = 4096, 4096  # a 64 MiB file; batches of 1024 random rows (16 MiB) read from it
    writer = ShardWriter(str(tmp_path), 0, rows)
    for start in range(0, rows, 512):
        writer.append("view0.head0", torch.full((512, width), float(start)))
        writer.append("labels", torch.zeros(512, dtype=torch.long))
    writer.close()
    mark_complete(str(tmp_path), [rows], 1, 1, 0, "float32")
    batches = np.random.default_rng(0).permutation(rows).reshape(4, 1024)
    cache = CachedFeatures(str(tmp_path), resident_bytes=8 << 20)
    naive = np.load(shard_path(str(tmp_path), "view0.head0", 0), mmap_mode="r")
    # the probe can fail: a plain memmap keeps the pages it touched (the kernel maps up to 2 MiB around each row)
    assert _peak_growth_mib(lambda: [float(naive[batch].sum()) for batch in batches]) > 16 + 32
    for batch in batches:
        assert _peak_growth_mib(lambda: cache.rows(batch, np.zeros(1024, np.int64))) < 16 + 12
        expected = torch.from_numpy(naive[np.sort(batch)])
        assert torch.equal(cache.rows(np.sort(batch), np.zeros(1024, np.int64))["head_inputs"][0], expected)


def test_two_processes_read_the_same_features_and_train_the_same_head(tiny_classifier_dir, synthetic, tmp_path):
    import train_driver

    env = {**os.environ, "HF_DUALSIG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    launch = two_process_launch()
    options = ["--augment", "crop_flip", "--views", "2"]
    command = [*launch, "tests/train_driver.py", str(tiny_classifier_dir), str(tmp_path / "two"), *options]
    two = subprocess.run(
        [*command, "--batch_size", "4", "--dump_features"], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = train_driver.build_trainer(
        train_driver.parse([str(tiny_classifier_dir), str(tmp_path / "one"), *options]), splits=synthetic
    )
    one.train()
    assert len(list((tmp_path / "two" / "feature_cache").glob("*/view1.head0.rank1.npy"))) == 1
    ranks = [np.load(tmp_path / "two" / f"features.rank{r}.npz") for r in (0, 1)]
    assert np.array_equal(ranks[0]["features"], ranks[1]["features"])  # both processes read both shards
    index = np.arange(48)
    for view in range(2):
        expected = one.train_dataset.rows(index, np.full(48, view))
        torch.testing.assert_close(
            torch.from_numpy(ranks[0]["features"][view]), expected["head_inputs"][0], atol=1e-6, rtol=0
        )
        assert np.array_equal(ranks[1]["labels"], expected["labels"].numpy())
    two_head = DualSigmoidForImageClassification.from_pretrained(tmp_path / "two").sigmoid_head.state_dict()
    for key, value in one.model.sigmoid_head.state_dict().items():
        torch.testing.assert_close(two_head[key], value, atol=1e-5, rtol=0)


def test_bfloat16_autocast_cache_is_close_to_float32_and_keyed_apart(tiny_classifier_dir, synthetic, tmp_path):
    model, calls = _model_counting_forwards(tiny_classifier_dir)

    def build(autocast, dtype="float32"):
        settings = CacheSettings(str(tmp_path), dtype=dtype, batch_size=16, autocast_dtype=autocast)
        return build_feature_cache(model, synthetic["train"], TRANSFORM, ViewSchedule(1, 0), settings)

    for bad, message in [("int8", "feature_cache_autocast='int8': expected one of"), ("float16", "needs a CUDA")]:
        with pytest.raises(ValueError, match=message):
            build(bad)
    assert not calls and not list(tmp_path.iterdir())  # refused before any forward or file
    exact, fast = build("float32"), build("bfloat16")
    assert exact.directory != fast.directory and len(calls) == 6  # another key: the fp32 cache was not reused
    assert build("bfloat16").directory == fast.directory and len(calls) == 6  # reused with the same autocast
    rows = list(range(48))
    a, b = (cache.__getitems__(rows)["head_inputs"][0].flatten(1) for cache in (exact, fast))
    assert b.dtype == torch.float32 and fast.meta["dtype"] == "float32"  # stored as the storage dtype
    assert not torch.equal(a, b)  # autocast really ran
    # measured on this model: at most 0.0041 (median 0.0022) per row, about 2**-8; bound with a 5x margin
    relative = (b - a).norm(dim=1) / a.norm(dim=1)
    assert relative.max() < 0.02, relative.max()
    stored_bf16 = build("bfloat16", dtype="bfloat16")  # bf16 compute, bf16 storage: one more rounding at most
    c = stored_bf16.__getitems__(rows)["head_inputs"][0].flatten(1)
    assert ((c - a).norm(dim=1) / a.norm(dim=1)).max() < 0.02
