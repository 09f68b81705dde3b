"""Where a served clip's CPU goes: the daemon (its loop and ZeroMQ's threads), each decoder
worker and the trainer, per clip, while a trainer reads as fast as it can.

    python benchmarks/breakdown.py [--size 340x256] [--gop 16] [--workers 2] [--seconds 20]

The workers' share against benchmarks/floor.py's in-process decoder is what serving adds to
a decode; the daemon's and the trainer's are the rest of the pipeline's cost.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psutil
from corpus import write_manifest
from throughput import (
    BATCH_SIZE,
    CLIP_LENGTH,
    HEIGHT,
    VIDRING_SLOTS,
    VIDRING_WARMUP_BATCHES,
    WIDTH,
    add_corpus_arguments,
    random_clips,
)
from vidring_daemon import indices_across_epochs, serving


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _threads_s(process: psutil.Process) -> dict[int, float]:
    return {t.id: t.user_time + t.system_time for t in process.threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_corpus_arguments(parser, size="340x256", gop=16, clips=0)
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    bench = random_clips(args)
    rows = 500 * BATCH_SIZE  # epochs long enough that no epoch boundary falls in the window
    with tempfile.TemporaryDirectory(prefix="vidring-breakdown-") as scratch:
        manifest = write_manifest([Path(v) for v in bench.videos],
                                  Path(scratch) / "manifest.csv", n_rows=rows)
        with serving(manifest, f"bench-breakdown-{psutil.Process().pid}",
                     batch_size=BATCH_SIZE, clip_length=CLIP_LENGTH, width=WIDTH,
                     height=HEIGHT, workers=args.workers, slots=VIDRING_SLOTS,
                     log_path=Path(scratch) / "daemon.log") as dataset:
            indices = indices_across_epochs(dataset)
            for _ in range(VIDRING_WARMUP_BATCHES):
                dataset[next(indices)]
            daemon = psutil.Process(dataset.info.status.pid)
            workers = daemon.children()
            trainer = psutil.Process()
            before = [_cpu_s(p) for p in (daemon, *workers, trainer)]
            threads_before = _threads_s(daemon)
            began, clips = time.perf_counter(), 0
            while time.perf_counter() - began < args.seconds:
                clips += len(dataset[next(indices)][0])
            wall_s = time.perf_counter() - began
            after = [_cpu_s(p) for p in (daemon, *workers, trainer)]
            threads_after = _threads_s(daemon)
    spent = [(b - a) * 1e3 / clips for a, b in zip(before, after, strict=True)]
    loop_tid = daemon.pid  # the daemon's main thread runs its loop
    loop = (threads_after.get(loop_tid, 0.0) - threads_before.get(loop_tid, 0.0)) * 1e3 / clips
    print(f"corpus {args.size} GOP {args.gop}, {clips} clips in {wall_s:.1f} s "
          f"({clips / wall_s:.1f} clips/s), {args.workers} workers; CPU ms per clip:")
    print(f"daemon   {spent[0]:6.2f}  (its loop {loop:.2f}, ZeroMQ's and other threads "
          f"{spent[0] - loop:.2f})")
    for k, worker_ms in enumerate(spent[1:-1]):
        print(f"worker {k} {worker_ms:6.2f}")
    print(f"workers  {sum(spent[1:-1]):6.2f}")
    print(f"trainer  {spent[-1]:6.2f}")
    print(f"total    {sum(spent):6.2f}")


if __name__ == "__main__":
    main()
