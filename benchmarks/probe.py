"""How long a daemon's start spends probing: many short videos, cold cache then warm.

Makes N short videos (64x48, 2 s at 30 fps, written once under the corpus folder) and times
ProbeCache.get_many as `vidring serve` calls it: cold (empty cache, `--workers` processes)
and warm (every entry cached).

    python benchmarks/probe.py [--videos 1000] [--workers 2] [--corpus-dir D]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from corpus import DEFAULT_CORPUS_DIR

from vidring.daemon.demo import write_video
from vidring.daemon.probe import ProbeCache

FRAMES, HEIGHT, WIDTH = 60, 48, 64


def short_videos(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"s{i:05d}.mp4" for i in range(n)]
    rng = np.random.default_rng(0)
    for path in paths:
        if not path.exists():
            frames = rng.integers(0, 255, (FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
            write_video(path, frames, gop=30)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS_DIR)
    args = parser.parse_args()
    paths: list[str | Path] = list(short_videos(args.corpus_dir / "probe-short", args.videos))
    with tempfile.TemporaryDirectory(prefix="vidring-bench-probe-") as cache_dir:
        cache = ProbeCache(cache_dir)
        for label in ("cold", "warm"):
            start = time.perf_counter()
            results = cache.get_many(paths, processes=args.workers)
            seconds = time.perf_counter() - start
            bad = sum(isinstance(r, str) for r in results)
            print(f"{label}: {len(paths)} videos in {seconds:.2f} s "
                  f"({len(paths) / seconds:.0f} videos/s, {args.workers} processes, {bad} bad)",
                  flush=True)


if __name__ == "__main__":
    main()
