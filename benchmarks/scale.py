"""Feature-cache scaling: peak memory per process and throughput as the cache grows.

For each N in `--rows`: every process streams its shard of N random feature rows (`--width` wide, float32) through
the cache's write path (`ShardWriter`, then `mark_complete`), then `DualSigmoidTrainer` trains a sigmoid head
(`--classes` outputs, batch 256 in all) for one epoch from the memory-mapped cache; in 1 and in 2 processes (a gloo
`accelerate launch` on CPU). Prints peak RSS per process (and its level after start-up), rows/s written and trained,
then a projection for ILSVRC (1.28M images x 3 epochs) at ResNet-50's width (2048) and ViT-B/16's (768), from the
rows/s measured at each width (the backbone pass that fills a real cache is not included).

Evaluation (`--eval_images`, default 1,000 and 10,000): a synthetic WSOL test set of N images (`--eval_image_size`
pixels) is drawn and saved in one process, then a fresh process loads it (memory-mapped Arrow), builds a tiny dual
ResNet from a config and runs `evaluation.evaluate_model` (methods cam and gradcam, both heads, fidelity on,
`--eval_size` maps, one thread). Prints the drawing process's peak RSS (it holds the whole set: not evaluation's),
the RSS once the set is loaded (before evaluating), the evaluating process's peak RSS (its ru_maxrss) and the peaks
of its anonymous and file-backed parts (sampled every 20 ms), and the ratio of the peaks over N. A 64-image run
first fills numba's disk cache, so that no measured process pays for JIT compilation.
Usage: python benchmarks/scale.py [--rows 1e4,1e5,1e6] [--processes 1,2] [--width 2048] [--classes 1000]
                                  [--eval_images 1000,10000] [--eval_image_size 32] [--eval_size 64]
                                  [--sections cache,eval]
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch
from accelerate import PartialState
from transformers import AutoModelForImageClassification, PrinterCallback, ResNetConfig

from hf_dualsig import DualSigmoidForImageClassification
from hf_dualsig.feature_cache import CachedFeatures, ShardWriter, mark_complete
from hf_dualsig.train_job import DualSigTrainingArguments
from hf_dualsig.training import DualSigmoidTrainer

CHUNK_ROWS = 4096
ILSVRC_ROWS, ILSVRC_EPOCHS = 1_281_167, 3


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def status_mib(*fields: str) -> dict:
    """Fields of /proc/self/status (VmRSS, RssAnon, RssFile, VmHWM, ...) in MiB (Linux)."""
    with open("/proc/self/status") as handle:
        values = dict(line.split(":", 1) for line in handle)
    return {name: int(values[name].split()[0]) / 1024 for name in fields}


def write_random_shard(directory: str, rank: int, rows: range, width: int, classes: int) -> None:
    """Random features and labels for `rows`, streamed chunk by chunk as a backbone would produce them."""
    generator = torch.Generator().manual_seed(rank)
    writer = ShardWriter(directory, rank, len(rows))
    for start in range(0, len(rows), CHUNK_ROWS):
        count = min(CHUNK_ROWS, len(rows) - start)
        writer.append("view0.head0", torch.randn(count, width, generator=generator))
        writer.append("labels", torch.randint(0, classes, (count,), generator=generator))
    writer.close()


def head_model(width: int, classes: int) -> DualSigmoidForImageClassification:
    """A dual model whose head reads `width` features (a one-block ResNet: its backbone never runs here)."""
    config = ResNetConfig(
        embedding_size=8, hidden_sizes=[width], depths=[1], layer_type="bottleneck", num_labels=classes
    )
    torch.manual_seed(0)
    return DualSigmoidForImageClassification.from_classifier(AutoModelForImageClassification.from_config(config))


def worker(args) -> None:
    """One process of one run: write its shard, train one epoch from the whole cache, record its figures."""
    state = PartialState()
    started = peak_rss_mib()
    bounds = np.linspace(0, args.rows, state.num_processes + 1).astype(int)
    cache = os.path.join(args.dir, "cache")
    start = time.perf_counter()
    rows = range(bounds[state.process_index], bounds[state.process_index + 1])
    write_random_shard(cache, state.process_index, rows, args.width, args.classes)
    state.wait_for_everyone()
    if state.is_main_process:
        mark_complete(cache, np.diff(bounds).tolist(), 1, 1, 0, "float32")
    state.wait_for_everyone()
    written = time.perf_counter() - start
    training_args = DualSigTrainingArguments(
        output_dir=os.path.join(args.dir, "out"),
        num_train_epochs=1,
        per_device_train_batch_size=256 // state.num_processes,
        eval_strategy="no",
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
    )
    trainer = DualSigmoidTrainer(
        head_model(args.width, args.classes), training_args, train_dataset=CachedFeatures(cache)
    )
    trainer.remove_callback(PrinterCallback)
    start = time.perf_counter()
    trainer.train()
    result = {
        "write_s": written,
        "train_s": time.perf_counter() - start,
        "rss_start": started,
        "rss_peak": peak_rss_mib(),
    }
    with open(os.path.join(args.dir, f"result.rank{state.process_index}.json"), "w") as handle:
        json.dump(result, handle)


def run(rows: int, processes: int, width: int, classes: int) -> list[dict]:
    """One run in fresh processes; its cache lives in a temporary folder, deleted afterwards."""
    directory = tempfile.mkdtemp(prefix="hf_dualsig_scale_")
    try:
        command = [__file__, "--worker", "--dir", directory, "--rows", str(rows)]
        command += ["--width", str(width), "--classes", str(classes)]
        if processes > 1:
            launch = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
            command = [*launch, *command]
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}
        done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(done.stderr[-3000:])
        results = []
        for rank in range(processes):
            with open(os.path.join(directory, f"result.rank{rank}.json")) as handle:
                results.append(json.load(handle))
        return results
    finally:
        shutil.rmtree(directory)


def summary(rows: int, processes: int, width: int, results: list[dict]) -> dict:
    write_s = max(r["write_s"] for r in results)
    train_s = max(r["train_s"] for r in results)
    return {
        "rows": rows,
        "processes": processes,
        "width": width,
        "rss_peak": max(r["rss_peak"] for r in results),
        "rss_start": max(r["rss_start"] for r in results),
        "written_per_s": rows / write_s,
        "trained_per_s": rows / train_s,
        "cache_gib": rows * width * 4 / 2**30,
    }


class PeakSampler:
    """Samples /proc/self/status every `interval` seconds in a thread: the peak of each field (MiB)."""

    def __init__(self, fields=("RssAnon", "RssFile"), interval: float = 0.02):
        self.fields, self.interval, self.peak = fields, interval, dict.fromkeys(fields, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self):
        for name, value in status_mib(*self.fields).items():
            self.peak[name] = max(self.peak[name], value)


def draw_eval_set(args) -> None:
    """Child process: draw and save a synthetic test set of `args.eval_images` images; record its cost."""
    from hf_dualsig.data.synthetic import SyntheticWSOLConfig, load_synthetic_wsol

    start = time.perf_counter()
    config = SyntheticWSOLConfig(
        num_train=1, num_val=1, num_test=args.eval_images, image_size=args.eval_image_size, num_classes=4
    )
    load_synthetic_wsol(config, cache_dir=args.dir)
    record(args.dir, "draw", {"seconds": time.perf_counter() - start, "rss_peak": peak_rss_mib()})


def evaluate_eval_set(args) -> None:
    """Child process: load the saved set, then evaluate a tiny dual ResNet on it; record RSS before and after."""
    from hf_dualsig.data.synthetic import SyntheticWSOLConfig, load_synthetic_wsol
    from hf_dualsig.data.transforms import ImageTransform
    from hf_dualsig.evaluation import EvalArguments, evaluate_model
    from hf_dualsig.zoo import tiny_classifier

    config = SyntheticWSOLConfig(
        num_train=1, num_val=1, num_test=args.eval_images, image_size=args.eval_image_size, num_classes=4
    )
    dataset = load_synthetic_wsol(config, cache_dir=args.dir)["test"]  # already drawn: only loaded here
    model = DualSigmoidForImageClassification.from_classifier(
        tiny_classifier("resnet", num_labels=4, image_size=args.eval_image_size)
    ).eval()
    loaded = {"rss_peak": peak_rss_mib(), **status_mib("VmRSS", "RssAnon", "RssFile")}
    settings = EvalArguments(
        methods="cam,gradcam", eval_size=args.eval_size, fidelity=True, eval_batch_size=32, insertion_deletion_steps=0
    )
    start = time.perf_counter()
    with PeakSampler() as sampled:
        evaluate_model(model, dataset, ImageTransform(args.eval_image_size, args.eval_image_size), settings)
    seconds = time.perf_counter() - start
    record(
        args.dir, "eval", {"seconds": seconds, "loaded": loaded, "sampled": sampled.peak, "rss_peak": peak_rss_mib()}
    )


def record(directory: str, name: str, value: dict) -> None:
    with open(os.path.join(directory, f"{name}.json"), "w") as handle:
        json.dump(value, handle)


def run_eval(images: int, image_size: int, eval_size: int) -> dict:
    """Draw the set in one fresh process, evaluate it in another: {"draw": ..., "eval": ...}."""
    directory = tempfile.mkdtemp(prefix="hf_dualsig_scale_eval_")
    try:
        result = {}
        for step in ("draw", "eval"):
            command = [sys.executable, __file__, f"--{step}_worker", "--dir", directory]
            command += ["--eval_images", str(images), "--eval_image_size", str(image_size)]
            command += ["--eval_size", str(eval_size)]
            env = {**os.environ, "OMP_NUM_THREADS": "1"}  # tiny convolutions: more threads only contend
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(done.stderr[-3000:])
            with open(os.path.join(directory, f"{step}.json")) as handle:
                result[step] = json.load(handle)
        result["disk_mib"] = (
            sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory) for name in names)
            / 2**20
        )
        return result
    finally:
        shutil.rmtree(directory)


def eval_section(args) -> None:
    sizes = [int(float(n)) for n in args.eval_images.split(",")]
    print(
        f"\nevaluation: tiny dual ResNet, synthetic {args.eval_image_size}px images, cam + gradcam x 2 heads, "
        f"maps at {args.eval_size}, fidelity on, batch 32, one process, 1 thread"
    )
    print(
        "| N images | set on disk (MiB) | drawing it: s, peak RSS (MiB) | RSS with the set loaded (MiB) "
        "| evaluation peak RSS (MiB) | its anonymous / file-backed part, peak sampled (MiB) | evaluation s |"
    )
    print("|---|---|---|---|---|---|---|")
    run_eval(64, args.eval_image_size, args.eval_size)  # warm-up: numba compiles its kernels into its disk cache once
    table = []
    for images in sizes:
        row = run_eval(images, args.eval_image_size, args.eval_size)
        table.append(row)
        draw, ev = row["draw"], row["eval"]
        print(
            f"| {images} | {row['disk_mib']:.1f} | {draw['seconds']:.1f}, {draw['rss_peak']:.0f} | "
            f"{ev['loaded']['VmRSS']:.0f} | {ev['rss_peak']:.0f} | {ev['sampled']['RssAnon']:.0f} / "
            f"{ev['sampled']['RssFile']:.0f} | {ev['seconds']:.1f} |",
            flush=True,
        )
    first, last = table[0]["eval"], table[-1]["eval"]
    print(
        f"evaluation peak RSS: N={sizes[-1]} is {last['rss_peak'] / first['rss_peak']:.3f}x N={sizes[0]} "
        f"({last['rss_peak'] - first['rss_peak']:+.1f} MiB); anonymous (heap) peak: "
        f"{last['sampled']['RssAnon'] / first['sampled']['RssAnon']:.3f}x "
        f"({last['sampled']['RssAnon'] - first['sampled']['RssAnon']:+.1f} MiB); file-backed peak "
        f"{last['sampled']['RssFile'] - first['sampled']['RssFile']:+.1f} MiB (the set's Arrow file is memory-mapped: "
        f"{table[-1]['disk_mib'] - table[0]['disk_mib']:+.1f} MiB more on disk)"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", default="1e4,1e5,1e6")
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--vit_width", type=int, default=768)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--eval_images", default="1000,10000")
    parser.add_argument("--eval_image_size", type=int, default=32)
    parser.add_argument("--eval_size", type=int, default=64)
    parser.add_argument("--sections", default="cache,eval", help="cache, eval or both (comma-separated)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--draw_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--eval_worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.rows = int(float(args.rows))
        return worker(args)
    if args.draw_worker or args.eval_worker:
        args.eval_images = int(args.eval_images)
        return draw_eval_set(args) if args.draw_worker else evaluate_eval_set(args)
    sections = {s.strip() for s in args.sections.split(",")}
    if not sections <= {"cache", "eval"} or not sections:
        parser.error(f"--sections {args.sections!r}: expected cache, eval or both.")
    if "cache" in sections:
        cache_section(args)
    if "eval" in sections:
        eval_section(args)


def cache_section(args) -> None:
    sizes, counts = [int(float(n)) for n in args.rows.split(",")], [int(p) for p in args.processes.split(",")]
    print(f"{args.classes} classes, batch 256 in all, float32 cache, {os.cpu_count()} CPU cores")
    print(
        "| N rows | width | processes | cache (GiB) | peak RSS per process (MiB) | RSS after start-up (MiB) "
        "| rows/s written | rows/s trained |"
    )
    print("|---|---|---|---|---|---|---|---|")
    table = []
    for rows in sizes:
        for processes in counts:
            row = summary(rows, processes, args.width, run(rows, processes, args.width, args.classes))
            table.append(row)
            print(
                f"| {rows:.0e} | {args.width} | {processes} | {row['cache_gib']:.2f} | {row['rss_peak']:.0f} | "
                f"{row['rss_start']:.0f} | {row['written_per_s']:.0f} | {row['trained_per_s']:.0f} |",
                flush=True,
            )
    vit_rows = sizes[min(1, len(sizes) - 1)]
    vit = summary(vit_rows, 1, args.vit_width, run(vit_rows, 1, args.vit_width, args.classes))
    for processes in counts:
        base = next(r for r in table if r["rows"] == sizes[0] and r["processes"] == processes)
        top = next(r for r in table if r["rows"] == sizes[-1] and r["processes"] == processes)
        print(
            f"peak RSS, {processes} process(es): N={sizes[-1]:.0e} is {top['rss_peak'] / base['rss_peak']:.2f}x "
            f"N={sizes[0]:.0e}"
        )
    print(
        f"\nprojected ILSVRC ({ILSVRC_ROWS} images x {ILSVRC_EPOCHS} epochs of head training from the cache, 1 view):"
    )
    for name, row in (
        ("ResNet-50", next(r for r in table if r["rows"] == sizes[-1] and r["processes"] == 1)),
        ("ViT-B/16", vit),
    ):
        hours = ILSVRC_ROWS * ILSVRC_EPOCHS / row["trained_per_s"] / 3600
        disk = ILSVRC_ROWS * row["width"] * 4 / 2**30
        print(
            f"{name} (width {row['width']}): cache {disk:.1f} GiB float32 ({disk / 2:.1f} GiB float16), "
            f"{hours:.2f} h at {row['trained_per_s']:.0f} rows/s (measured at N={row['rows']:.0e}, 1 process), "
            f"peak RSS about {row['rss_peak']:.0f} MiB per process"
        )


if __name__ == "__main__":
    main()
