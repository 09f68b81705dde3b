"""Trainer-side cost of handing over one ready batch, for batches of ~1 MB to ~300 MB.

  spill     what a trainer pays when it holds every slot and its oldest batch is copied
            out of the ring (loader/spill.py): one make_private of a slot-sized mapping of
            /dev/shm, pages already touched; the median of a few.

  keras-mp  a PyDataset whose __getitem__ returns one preallocated batch, through Keras's
            enqueuer with use_multiprocessing=True, workers=1, so the cost is pickle + pipe +
            unpickle; the time is the steady-state mean per batch seen by the consumer.
  vidring   a daemon serving batches of the same shape and dtype from a small corpus; before
            each timed ds[i] we poll `vidring status` until a slot is READY and none is
            FILLING (batches fill in plan order, so the next one is then READY); the time is
            the median of single calls.

    python benchmarks/handoff.py [--max-mb 400] [--loaders keras-mp,vidring]
                                 [--corpus-dir D] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import mmap
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from corpus import DEFAULT_CORPUS_DIR, make_corpus, write_manifest
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
from vidring_daemon import indices_across_epochs, serving, wait_for_slots

from vidring.loader.spill import make_private

KERAS_WARMUP_BATCHES = 2
KERAS_BYTES_PER_SIZE = 2_000_000_000  # enough batches per size for a stable mean
KERAS_MIN_BATCHES, KERAS_MAX_BATCHES = 4, 100
KERAS_QUEUE_BATCHES = 4  # bounds the batches Keras holds in memory; the pipe is the bottleneck
VIDRING_TIMED_CALLS = 5
VIDRING_SLOTS = 3
VIDRING_READY_TIMEOUT_S = 120
LOADERS = ("keras-mp", "vidring")
SPILL_TIMED = 5


@dataclass(frozen=True, slots=True)
class BatchShape:
    batch_size: int
    clip_length: int
    height: int
    width: int
    dtype: str

    @property
    def x_shape(self) -> tuple[int, ...]:
        return (self.batch_size, self.clip_length, self.height, self.width, 3)

    @property
    def batch_bytes(self) -> int:
        return math.prod(self.x_shape) * np.dtype(self.dtype).itemsize

    def __str__(self) -> str:
        return f"{'x'.join(map(str, self.x_shape))} {self.dtype}"


# Source videos are 320x240 and 60 frames, so no shape upscales or runs past the end.
BATCH_SHAPES = (
    BatchShape(4, 8, 112, 112, "uint8"),      # 1.2 MB
    BatchShape(8, 16, 112, 112, "uint8"),     # 4.8 MB
    BatchShape(8, 16, 160, 160, "float32"),   # 39 MB
    BatchShape(16, 16, 224, 224, "float32"),  # 154 MB
    BatchShape(16, 32, 224, 224, "float32"),  # 308 MB
)


class PreallocatedBatches(keras.utils.PyDataset):
    """Every index returns the same arrays: producing a batch costs nothing."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n_batches: int, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.n_batches = x, y, n_batches

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.x, self.y


def keras_s_per_batch(shape: BatchShape) -> float:
    n_timed = min(KERAS_MAX_BATCHES,
                  max(KERAS_MIN_BATCHES, math.ceil(KERAS_BYTES_PER_SIZE / shape.batch_bytes)))
    # np.full touches every page; zeros would hand pickle the shared zero page.
    x = np.full(shape.x_shape, 1, dtype=shape.dtype)
    y = np.zeros(shape.batch_size, dtype=np.int32)
    dataset = PreallocatedBatches(x, y, KERAS_WARMUP_BATCHES + n_timed, workers=1,
                                  use_multiprocessing=True, max_queue_size=KERAS_QUEUE_BATCHES)
    adapter = PyDatasetAdapter(dataset, shuffle=False)
    try:
        batches = adapter.get_numpy_iterator()
        for _ in range(KERAS_WARMUP_BATCHES):
            next(batches)
        start_s = time.perf_counter()
        for _ in range(n_timed):
            next(batches)
        return (time.perf_counter() - start_s) / n_timed
    finally:
        adapter.on_epoch_end()


def vidring_s_per_call(shape: BatchShape, videos: list[Path], workers: int) -> float:
    name = f"bench-handoff-{os.getpid()}"
    n_calls = 1 + VIDRING_TIMED_CALLS
    with tempfile.TemporaryDirectory(prefix="vidring-bench-") as scratch:
        # One clip per manifest row per epoch: enough rows that no call waits on an epoch end.
        manifest_path = write_manifest(videos, Path(scratch) / "manifest.csv",
                                       n_rows=shape.batch_size * (n_calls + VIDRING_SLOTS + 1))
        with serving(manifest_path, name, batch_size=shape.batch_size,
                     clip_length=shape.clip_length, width=shape.width, height=shape.height,
                     workers=workers, slots=VIDRING_SLOTS, dtype=shape.dtype,
                     log_path=Path(scratch) / "daemon.log") as dataset:
            indices = indices_across_epochs(dataset)
            call_s = []
            for _ in range(n_calls):
                wait_for_slots(name, lambda slots: slots.ready >= 1 and slots.filling == 0,
                               VIDRING_READY_TIMEOUT_S)
                start_s = time.perf_counter()
                x, y = dataset[next(indices)]
                call_s.append(time.perf_counter() - start_s)
                if x.shape != shape.x_shape or x.dtype != np.dtype(shape.dtype):
                    raise RuntimeError(f"vidring served {x.shape} {x.dtype}, asked for {shape}")
                del x, y
    return statistics.median(call_s[1:])  # the first call also maps the ring


def spill_s(shape: BatchShape) -> float:
    """Seconds to spill one batch of this shape (the copy into private memory and the remap)."""
    path = f"/dev/shm/vidring-bench-spill-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.unlink(path)
        os.ftruncate(fd, shape.batch_bytes)
        times = []
        for _ in range(SPILL_TIMED):
            writer = mmap.mmap(fd, shape.batch_bytes)
            writer[:] = b"\x01" * shape.batch_bytes  # real pages, as a filled slot has
            writer.close()
            slot = mmap.mmap(fd, shape.batch_bytes, access=mmap.ACCESS_READ)
            view = np.frombuffer(slot, dtype=np.uint8)
            view.sum()  # mapped in this process, as the trainer's arrays are
            start_s = time.perf_counter()
            make_private(slot)
            times.append(time.perf_counter() - start_s)
            del view
            slot.close()
        return statistics.median(times)
    finally:
        os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-mb", type=float, default=400, help="skip larger batches")
    parser.add_argument("--loaders", default=",".join(LOADERS))
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="vidring decoder workers")
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS_DIR)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    loaders = args.loaders.split(",")
    if unknown := set(loaders) - set(LOADERS):
        parser.error(f"unknown loaders {sorted(unknown)}; known: {','.join(LOADERS)}")
    shapes = [s for s in BATCH_SHAPES if s.batch_bytes <= args.max_mb * 1e6]

    videos = make_corpus(args.corpus_dir, 4, width=320, height=240, seconds=2) \
        if "vidring" in loaders else []
    print(f"machine: {os.cpu_count()} cores; keras: 1 worker process, "
          f"vidring: {args.workers} workers, {VIDRING_SLOTS} slots")
    print(f"{'batch MB':>9} {'shape':<28} {'keras ms':>9} {'keras GB/s':>10} "
          f"{'vidring ms':>10} {'keras/vidring':>13} {'spill ms':>9} {'spill ms/MB':>11}")
    rows = []
    for shape in shapes:
        keras_s = keras_s_per_batch(shape) if "keras-mp" in loaders else None
        vidring_s = vidring_s_per_call(shape, videos, args.workers) \
            if "vidring" in loaders else None
        spill = spill_s(shape) if "vidring" in loaders else None
        rows.append({"batch_bytes": shape.batch_bytes, "shape": list(shape.x_shape),
                     "dtype": shape.dtype, "keras_s": keras_s, "vidring_s": vidring_s,
                     "spill_s": spill})
        print(f"{shape.batch_bytes / 1e6:>9.1f} {shape!s:<28} "
              f"{_ms(keras_s):>9} "
              f"{_or_dash(keras_s and shape.batch_bytes / keras_s / 1e9, '.2f'):>10} "
              f"{_ms(vidring_s):>10} "
              f"{_or_dash(keras_s and vidring_s and keras_s / vidring_s, '.0f'):>13} "
              f"{_ms(spill):>9} "
              f"{_or_dash(spill and spill * 1e3 / (shape.batch_bytes / 1e6), '.3f'):>11}",
              flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cores": os.cpu_count(), "rows": rows}, indent=2))


def _ms(seconds: float | None) -> str:
    return _or_dash(seconds and seconds * 1e3, ".3f")


def _or_dash(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    main()
