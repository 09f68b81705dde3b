"""Autoscaling against fixed worker counts, with a trainer that needs about one core.

The trainer reads batches in order and burns --train-ms of CPU per batch (its model step
on a CPU).  Fixed runs of 1..--max-workers workers give the best fixed throughput; an
autoscaled run starts at one worker with --autoscale 1:MAX.  Reported: clips/s of each
fixed run over its last --measure-s seconds, and for the autoscaled run its clips/s per
10 s, the first time its rolling 10 s rate came within 10% of the best fixed one, and
the scaling decisions with their reasons.

    python benchmarks/autoscale.py [--seconds 30] [--auto-seconds 60] [--train-ms 150]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from corpus import DEFAULT_CORPUS_DIR, make_corpus, write_manifest
from vidring_daemon import indices_across_epochs, serving

if TYPE_CHECKING:
    from vidring.loader import ClipDataset

BATCH_SIZE = 8
CLIP_LENGTH = 16
SIZE = 112


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    x = 0
    while time.process_time() < end:
        x += 1


def train(dataset: ClipDataset, seconds: float, train_s: float) -> list[tuple[float, int]]:
    """(time since start, clips so far) after every batch, for `seconds`."""
    indices = indices_across_epochs(dataset)
    start, clips, marks = time.monotonic(), 0, []
    while (now := time.monotonic()) - start < seconds:
        x, _ = dataset[next(indices)]
        clips += len(x)
        del x
        _burn(train_s)
        marks.append((now - start, clips))
    return marks


def rate(marks: list[tuple[float, int]], since: float, until: float) -> float:
    inside = [(t, c) for t, c in marks if since <= t <= until]
    if len(inside) < 2:
        return 0.0
    (t0, c0), (t1, c1) = inside[0], inside[-1]
    return (c1 - c0) / (t1 - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30, help="each fixed run")
    parser.add_argument("--measure-s", type=float, default=20)
    parser.add_argument("--auto-seconds", type=float, default=60)
    parser.add_argument("--train-ms", type=float, default=150)
    parser.add_argument("--max-workers", type=int, default=3)
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS_DIR)
    args = parser.parse_args()
    videos = make_corpus(args.corpus_dir, args.videos)
    print(f"machine: {os.cpu_count()} cores; trainer burns {args.train_ms:g} ms of CPU per "
          f"batch of {BATCH_SIZE}; corpus 640x360 GOP 250")
    with tempfile.TemporaryDirectory(prefix="vidring-autoscale-") as scratch:
        manifest = write_manifest(videos, Path(scratch) / "m.csv", n_rows=len(videos) * 40)

        def run(workers: int, seconds: float, extra: list[str]) -> list[tuple[float, int]]:
            with serving(manifest, f"bench-autoscale-{os.getpid()}", batch_size=BATCH_SIZE,
                         clip_length=CLIP_LENGTH, width=SIZE, height=SIZE, workers=workers,
                         slots=4, log_path=Path(scratch) / "daemon.log", extra=extra) as ds:
                return train(ds, seconds, args.train_ms / 1000)

        fixed = {}
        for workers in range(1, args.max_workers + 1):
            marks = run(workers, args.seconds, [])
            fixed[workers] = rate(marks, args.seconds - args.measure_s, args.seconds)
            print(f"fixed {workers} workers: {fixed[workers]:.1f} clips/s", flush=True)
        best_workers = max(fixed, key=fixed.__getitem__)
        best = fixed[best_workers]
        marks = run(1, args.auto_seconds, ["--autoscale", f"1:{args.max_workers + 1}"])
        log = (Path(scratch) / "daemon.log").read_text().splitlines()
    print(f"autoscale 1:{args.max_workers + 1}, from 1 worker:")
    for t in range(0, int(args.auto_seconds), 10):
        print(f"  {t:>3}-{t + 10:<3} s  {rate(marks, t, t + 10):6.1f} clips/s")
    reached = next((t for t in range(10, int(args.auto_seconds) + 1)
                    if rate(marks, t - 10, t) >= 0.9 * best), None)
    tail = rate(marks, args.auto_seconds - args.measure_s, args.auto_seconds)
    print(f"best fixed: {best_workers} workers, {best:.1f} clips/s; autoscaled, last "
          f"{args.measure_s:g} s: {tail:.1f} clips/s ({tail / best:.0%} of best); within 10% "
          f"of best after {'never' if reached is None else f'{reached} s'}")
    for line in log:
        if "scale:" in line:
            print("  " + line.split("INFO ", 1)[-1])


if __name__ == "__main__":
    main()
