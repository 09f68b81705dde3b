"""Soak: heap memory of the daemon, each worker and the trainer over many clips.

Reads batches as a trainer would (every array dropped after use, so slots go back by
garbage collection) and samples each process's anonymous memory (its heap and stacks,
from /proc/PID/smaps_rollup) every --every clips.  RSS and even USS also count the pages
of the shared ring a process has touched, which grow until every slot position has been
written once and are no leak.  Workers are retired after --worker-max-clips, so the
worker columns are whichever processes are alive at each sample.  Growth is reported from the
end of the warm-up (the first --warmup clips: imports, caches, the ring's pages touched)
to the end.  Not run in CI: 20,000 clips take minutes.

    python benchmarks/soak.py [--clips 20000] [--workers N] [--every 1000] [--warmup 2000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import psutil
from corpus import DEFAULT_CORPUS_DIR, make_corpus, write_manifest
from vidring_daemon import indices_across_epochs, serving

BATCH_SIZE = 16
CLIP_LENGTH = 16
SIZE = 112


def _mib(process: psutil.Process) -> float:
    """Anonymous memory in MiB (nan once the process is gone)."""
    try:
        with open(f"/proc/{process.pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Anonymous:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--every", type=int, default=1000, help="clips between samples")
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS_DIR)
    args = parser.parse_args()
    videos = make_corpus(args.corpus_dir, args.videos, width=320, height=240, seconds=4)
    with tempfile.TemporaryDirectory(prefix="vidring-soak-") as scratch:
        manifest = write_manifest(videos, Path(scratch) / "m.csv", n_rows=len(videos) * 8)
        with serving(manifest, f"soak-{os.getpid()}", batch_size=BATCH_SIZE,
                     clip_length=CLIP_LENGTH, width=SIZE, height=SIZE, workers=args.workers,
                     slots=8, log_path=Path(scratch) / "daemon.log") as dataset:
            daemon = psutil.Process(dataset.info.status.pid)
            trainer = psutil.Process()
            samples: list[tuple[int, float, list[float], float]] = []
            indices = indices_across_epochs(dataset)
            clips = 0
            print(f"{'clips':>7} {'daemon MiB':>10} {'trainer MiB':>11}  workers MiB (anonymous)")
            while clips < args.clips:
                x, y = dataset[next(indices)]
                clips += len(x)
                del x, y
                if clips % args.every < BATCH_SIZE:
                    workers = sorted(_mib(w) for w in daemon.children())
                    samples.append((clips, _mib(daemon), workers, _mib(trainer)))
                    print(f"{clips:>7} {samples[-1][1]:>10.1f} {samples[-1][3]:>11.1f}  "
                          + " ".join(f"{w:.0f}" for w in workers), flush=True)
            counts = dataset.status().workers
            restarts, recycled = counts.restarts, counts.recycled
    after = [s for s in samples if s[0] >= args.warmup]
    if len(after) < 2:
        print("too few samples after the warm-up to judge growth")
        return
    first, last = after[0], after[-1]
    workers = [w for s in after for w in s[2] if w == w]
    print(f"\nfrom {first[0]} to {last[0]} clips: daemon {last[1] - first[1]:+.1f} MiB, "
          f"trainer {last[3] - first[3]:+.1f} MiB, workers between {min(workers):.0f} and "
          f"{max(workers):.0f} MiB; {recycled} workers recycled, {restarts} restarts")


if __name__ == "__main__":
    main()
