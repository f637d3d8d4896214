"""Streaming, memory-mapped cache of head inputs (numpy and torch only).

One cache is one directory, named by its key. Each process streams its contiguous shard of rows, chunk by chunk as
the backbone computes them, into `{name}.rank{r}.npy` (written under a temporary name, renamed when the shard is
whole), for `name` in `labels` and `view{k}.head{h}`. When every shard is in place the main process writes
`complete.json` (atomically, last): a directory without it is a partial cache and is never read. Readers map the
shard files and copy out only the rows asked for, unmapping pages as they go, so resident memory stays flat however
many rows the cache holds.

Storage dtypes (rows are read back as float32): "float32" (exact), "float16" (half the disk and page cache;
round-to-nearest: relative error at most 2**-11 per feature for |x| >= 2**-14, absolute at most 2**-25 below; values
beyond 65504 are refused), "bfloat16" (relative error at most 2**-8, float32's range). Measured on the default
model (benchmarks/train_head.py): the trained head moves by 2e-4 (float16) and 2e-3 (bfloat16) for weights up to 0.5.
"""

import hashlib
import json
import mmap
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from .files import write_atomically

MARKER = "complete.json"
RESIDENT_BYTES = 64 << 20
MAPPED_PER_ROW = 2 << 20  # a read fault may map a whole large folio (a PMD) of the page cache
STORAGE = {
    "float32": (np.float32, torch.float32),
    "float16": (np.float16, torch.float16),
    "bfloat16": (np.int16, torch.bfloat16),
}
_AUGMENTATION, _EPOCH_OFFSET = 1, 2


def mix_seeds(*parts) -> np.ndarray:
    """A 64-bit hash of integers (arrays broadcast): splitmix64 folded over the parts. Random draws seeded with it
    are a pure function of their coordinates (seed, view, index), whatever the process or batch."""
    state = np.zeros((), np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:
            state = _splitmix64(state ^ np.asarray(part).astype(np.uint64))
    return state


def _splitmix64(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class ViewSchedule:
    """Which of `views` augmented views each image uses in each epoch, and how each view is drawn.

    View k of image i is drawn with a generator seeded `augmentation_seed(k, i)` = hash(seed, k, i). In epoch e
    image i uses view (e + hash(seed, i)) % views: any `views` consecutive epochs show every view of every image
    once, each image starting at its own offset. The epoch lives in shared memory, so DataLoader workers see it.
    """

    def __init__(self, views: int, seed: int):
        self.views, self.seed = int(views), int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def views_of(self, indices) -> np.ndarray:
        """The view each of `indices` uses in the current epoch."""
        offsets = mix_seeds(self.seed, _EPOCH_OFFSET, indices) % np.uint64(self.views)
        return ((offsets.astype(np.int64) + int(self._epoch)) % self.views).astype(np.int64)

    def augmentation_seed(self, view: int, index: int) -> int:
        """The seed of the random draws of view `view` of image `index`."""
        return int(mix_seeds(self.seed, _AUGMENTATION, view, index) >> np.uint64(1))


def cache_key(*parts) -> str:
    """A hex key for a cache from JSON-serialisable parts (weights digest, transform, dataset fingerprint, ...)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def tensors_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 of named tensors (names, dtypes, shapes, bytes): the identity of a model's weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(state_dict.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def check_dtype(dtype: str) -> None:
    if dtype not in STORAGE:
        raise ValueError(f"feature_cache_dtype={dtype!r}: expected one of {sorted(STORAGE)}.")


def shard_path(directory: str, name: str, rank: int) -> str:
    return os.path.join(directory, f"{name}.rank{rank}.npy")


class ShardWriter:
    """Streams one process's shard (`num_rows` rows) of a cache into .npy files, one per name, chunk by chunk."""

    def __init__(self, directory: str, rank: int, num_rows: int, dtype: str = "float32"):
        check_dtype(dtype)
        os.makedirs(directory, exist_ok=True)
        self.directory, self.rank, self.num_rows, self.dtype = directory, rank, num_rows, dtype
        self._files: dict[str, list] = {}  # name -> [handle, temporary path, rows written]

    def append(self, name: str, values: torch.Tensor) -> None:
        """Append rows to file `name` ("labels" are stored as int64, everything else in the cache's dtype)."""
        array = values.detach().cpu().numpy().astype(np.int64) if name == "labels" else self._storage(values)
        entry = self._files.get(name) or self._open(name, array)
        if entry[2] + len(array) > self.num_rows:
            raise ValueError(f"{name}: more than the shard's {self.num_rows} rows.")
        array.tofile(entry[0])
        entry[2] += len(array)

    def close(self) -> None:
        """Check every file got all its rows, then rename them into place."""
        for name, (handle, tmp, rows) in self._files.items():
            handle.close()
            if rows != self.num_rows:
                raise ValueError(f"{name}: {rows} rows written, the shard has {self.num_rows}.")
            os.replace(tmp, shard_path(self.directory, name, self.rank))

    def _storage(self, values: torch.Tensor) -> np.ndarray:
        stored = values.detach().to(STORAGE[self.dtype][1]).cpu()
        if not torch.isfinite(stored).all() and torch.isfinite(values).all():
            raise ValueError(
                f"feature_cache_dtype={self.dtype!r} overflows: features reach {values.abs().max().item():.4g}; "
                "use float32 or bfloat16."
            )
        return stored.view(torch.int16).numpy() if self.dtype == "bfloat16" else stored.numpy()

    def _open(self, name: str, array: np.ndarray) -> list:
        tmp = f"{shard_path(self.directory, name, self.rank)}.tmp-{os.getpid()}"
        handle = open(tmp, "wb")  # noqa: SIM115 (stays open across appends; closed by close())
        header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(handle, {**header, "shape": (self.num_rows, *array.shape[1:])})
        self._files[name] = [handle, tmp, 0]
        return self._files[name]


def is_complete(directory: str) -> bool:
    return os.path.isfile(os.path.join(directory, MARKER))


def mark_complete(directory: str, shard_rows: list[int], views: int, num_heads: int, seed: int, dtype: str) -> None:
    """Record a cache as whole, after checking that every shard file is there with its rows (main process, last)."""
    names = ["labels", *(f"view{v}.head{h}" for v in range(views) for h in range(num_heads))]
    for rank, rows in enumerate(shard_rows):
        for name in names if rows else []:
            shape = _open_npy(shard_path(directory, name, rank))[1].shape
            if shape[0] != rows:
                raise ValueError(f"{name}.rank{rank}: {shape[0]} rows, expected {rows}.")
    meta = {"shard_rows": shard_rows, "views": views, "num_heads": num_heads, "seed": seed, "dtype": dtype}
    write_atomically(os.path.join(directory, MARKER), lambda tmp: _write_json(tmp, meta))


def _write_json(path: str, value) -> None:
    with open(path, "w") as handle:
        json.dump(value, handle)


def _open_npy(path: str) -> tuple[mmap.mmap, np.ndarray]:
    """A read-only mapping of an .npy file and the array over it (no data read)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(handle)
        offset = handle.tell()
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    return mapping, np.ndarray(shape, dtype, buffer=mapping, offset=offset)


class CachedFeatures(Dataset):
    """A complete cache as a dataset of {"head_inputs", "labels"} rows (float32), memory-mapped.

    Rows of several views follow the cache's `ViewSchedule` (`set_epoch`). Only the rows asked for are read, in
    chunks, each followed by `MADV_DONTNEED` on its file: the kernel may map up to a 2 MiB folio per touched row,
    so mapped pages are bounded by about `resident_bytes` whatever the size of the cache.
    """

    def __init__(self, directory: str, resident_bytes: int = RESIDENT_BYTES):
        if not is_complete(directory):
            raise FileNotFoundError(f"{directory} holds no complete feature cache (no {MARKER}).")
        with open(os.path.join(directory, MARKER)) as handle:
            self.meta = json.load(handle)
        self.directory = directory
        self.chunk_rows = max(1, resident_bytes // MAPPED_PER_ROW)
        self.schedule = ViewSchedule(self.meta["views"], self.meta["seed"])
        self.starts = np.cumsum([0, *self.meta["shard_rows"]])
        self._files = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def set_epoch(self, epoch: int) -> None:
        self.schedule.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {"head_inputs": tuple(t[0] for t in batch["head_inputs"]), "labels": batch["labels"][0]}

    def __getitems__(self, indices: list[int]) -> dict:
        """A whole batch in one call (DataLoader's batched fetch), each row from its view of this epoch."""
        index = np.asarray(indices, dtype=np.int64)
        return self.rows(index, self.schedule.views_of(index))

    def rows(self, index: np.ndarray, views: np.ndarray) -> dict:
        """Rows `index`, row j from view `views[j]`: {"head_inputs": tuple of float32 tensors, "labels"}."""
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"row indices must lie in [0, {len(self)}).")
        shard = np.searchsorted(self.starts, index, side="right") - 1
        local = index - self.starts[shard]
        head_inputs = []
        for head in range(self.meta["num_heads"]):
            parts = {
                v: self._gather(f"view{v}.head{head}", shard[views == v], local[views == v])
                for v in set(views.tolist())
            }
            head_inputs.append(self._as_float(_interleave(parts, views)))
        return {"head_inputs": tuple(head_inputs), "labels": torch.from_numpy(self._gather("labels", shard, local))}

    def _gather(self, name: str, shard: np.ndarray, local: np.ndarray) -> np.ndarray:
        files = self._mapped()[name]
        first = next(array for _, array in filter(None, files))
        out = np.empty((len(local), *first.shape[1:]), first.dtype)
        for rank in np.unique(shard):
            mapping, array = files[rank]
            positions = np.flatnonzero(shard == rank)
            for start in range(0, len(positions), self.chunk_rows):
                chunk = positions[start : start + self.chunk_rows]
                out[chunk] = array[local[chunk]]
                mapping.madvise(mmap.MADV_DONTNEED)  # unmap what the copy faulted in (the page cache keeps it)
        return out

    def _as_float(self, array: np.ndarray) -> torch.Tensor:
        tensor = torch.from_numpy(array)
        return (tensor.view(torch.bfloat16) if self.meta["dtype"] == "bfloat16" else tensor).float()

    def _mapped(self) -> dict[str, list]:
        """name -> per-shard (mapping, array) over the files (None for empty shards), opened once per process."""
        if self._files is None:
            views, heads = self.meta["views"], self.meta["num_heads"]
            names = ["labels"] + [f"view{v}.head{h}" for v in range(views) for h in range(heads)]
            self._files = {
                name: [
                    _open_npy(shard_path(self.directory, name, rank)) if rows else None
                    for rank, rows in enumerate(self.meta["shard_rows"])
                ]
                for name in names
            }
        return self._files

    def __getstate__(self) -> dict:
        """Pickled (DataLoader workers) without the mappings; each process maps the files itself."""
        return {**self.__dict__, "_files": None}


def _interleave(parts: dict[int, np.ndarray], views: np.ndarray) -> np.ndarray:
    """Rows gathered per view, put back in the order of `views`."""
    first = next(iter(parts.values()))
    if len(parts) == 1:
        return first
    out = np.empty((len(views), *first.shape[1:]), first.dtype)
    for view, rows in parts.items():
        out[views == view] = rows
    return out
