"""Scaling: clips/s and CPU per clip of vidring with 1..N decoder workers, a trainer
reading as fast as it can (no model step), on the 640x360 GOP 250 corpus.

Efficiency at W workers is clips/s / (W x clips/s at 1 worker): 1.0 is perfect.  Each
point drains the prefetched ring first, so it measures batches decoded inside its window.

    python benchmarks/scaling.py [--workers 1,2,4,8,12,16] [--batches 40] [--decode cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from corpus import DEFAULT_CORPUS_DIR, make_corpus, write_manifest
from throughput import Stopwatch
from vidring_daemon import indices_across_epochs, serving

BATCH_SIZE = 8
CLIP_LENGTH = 16
SIZE = 112
SLOTS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="1,2,4,8,12,16")
    parser.add_argument("--batches", type=int, default=40, help="timed batches per point")
    parser.add_argument("--videos", type=int, default=16)
    parser.add_argument("--decode", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS_DIR)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    videos = make_corpus(args.corpus_dir, args.videos)
    print(f"machine: {os.cpu_count()} cores; {BATCH_SIZE}x{CLIP_LENGTH}x{SIZE}x{SIZE} "
          f"batches; 640x360 GOP 250; decode {args.decode}")
    print(f"{'workers':>7} {'clips/s':>8} {'CPU s/clip':>10} {'efficiency':>10}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="vidring-scaling-") as scratch:
        n_rows = BATCH_SIZE * (SLOTS + 1 + args.batches) * 2
        manifest = write_manifest(videos, Path(scratch) / "m.csv", n_rows=n_rows)
        for workers in counts:
            with serving(manifest, f"bench-scaling-{os.getpid()}", batch_size=BATCH_SIZE,
                         clip_length=CLIP_LENGTH, width=SIZE, height=SIZE, workers=workers,
                         slots=SLOTS, log_path=Path(scratch) / "daemon.log",
                         extra=["--decode", args.decode]) as dataset:
                indices = indices_across_epochs(dataset)
                for _ in range(SLOTS + 1):  # the ring's prefetch, decoded before the window
                    dataset[next(indices)]
                watch = Stopwatch()
                watch.start()
                clips = sum(len(dataset[next(indices)][0]) for _ in range(args.batches))
                wall_s, cpu_s = watch.stop()
            rate = clips / wall_s
            first = rows[0]["clips_per_s"] / rows[0]["workers"] if rows else rate / workers
            row = {"workers": workers, "clips_per_s": round(rate, 1),
                   "cpu_s_per_clip": round(cpu_s / clips, 4),
                   "efficiency": round(rate / (workers * first), 2)}
            rows.append(row)
            print(f"{workers:>7} {row['clips_per_s']:>8.1f} {row['cpu_s_per_clip']:>10.4f} "
                  f"{row['efficiency']:>10.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"cores": os.cpu_count(), "decode": args.decode,
                                         "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
