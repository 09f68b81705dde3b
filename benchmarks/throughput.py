"""Decode throughput: clips/s and CPU-seconds per clip for four loaders, one after another.

Corpus: 640x360 H.264, 10 s at 30 fps, GOP 250 (benchmarks/corpus.py, cached). Batches:
8 clips x 16 frames x 112x112 RGB uint8. Loaders:
  naive-opencv    NaiveOpenCVSequence iterated in this process
  keras-mp        the same PyDataset through Keras's enqueuer, multiprocessing, N workers
  pyav-straight   a straightforward single-process PyAV reader
  vidring         the vidring daemon with N decoder workers, read through ClipDataset
  vidring-cuda    the same, decoding on the GPU (--decode cuda; `--preset gpu`)
  vidring-augment the same with a video model's preprocessing: short side 128, a random
                  112x112 crop, random flips, float32 normalised by mean and std
                  (`--preset augment` runs it beside plain vidring: the cost of augmenting)
Every loader decodes the same clips: the ones vidring's epoch plan (a pure function of the
manifest and seed) puts in the timed batches, i.e. random videos at uniformly random starts.
CPU counts this process and all its descendants (Keras pool workers, the daemon and its
workers); a process that exits inside a timed window loses its share.

    python benchmarks/throughput.py [--videos 12] [--clips 320] [--workers N]
                                    [--corpus-dir D] [--loaders a,b] [--preset augment]
                                    [--json out.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
from corpus import DEFAULT_CORPUS_DIR, label_of, make_corpus, write_manifest
from keras.src.trainers.data_adapters.py_dataset_adapter import PyDatasetAdapter
from naive import ClipRef, NaiveOpenCVSequence, PyAVStraightforwardReader
from vidring_daemon import indices_across_epochs, serving

from vidring.daemon import sampler
from vidring.daemon.probe import probe

if TYPE_CHECKING:
    from collections.abc import Callable

BATCH_SIZE = 8
CLIP_LENGTH = 16
WIDTH = HEIGHT = 112
LOADERS = ("naive-opencv", "keras-mp", "pyav-straight", "vidring", "vidring-augment",
           "vidring-cuda")
AUGMENT = ["--resize", "short_side", "--short-side", "128", "--crop", "random", "--flip",
           "--dtype", "float32", "--mean", "0.45,0.45,0.45", "--std", "0.225,0.225,0.225"]
PRESETS = {"augment": "vidring,vidring-augment", "gpu": "vidring,vidring-cuda"}
VIDRING_SLOTS = 8
# Draining more batches than the ring holds leaves it empty, so vidring's timed window sees
# only batches decoded inside it, not ones prefetched while the benchmark connected.
VIDRING_WARMUP_BATCHES = VIDRING_SLOTS + 1


@dataclass(frozen=True, slots=True)
class Result:
    loader: str
    clips: int
    """Clips delivered in the timed window (the naive loader may drop some)."""
    wall_s: float
    cpu_s: float
    """User + system CPU of this process and its descendants over the timed window."""
    note: str = ""

    @property
    def clips_per_s(self) -> float:
        return self.clips / self.wall_s

    @property
    def cpu_s_per_clip(self) -> float:
        return self.cpu_s / self.clips


class Stopwatch:
    """Wall time and process-tree CPU time between start() and stop()."""

    def start(self) -> None:
        self._cpu_before = _tree_cpu_s()
        self._wall_start = time.perf_counter()

    def stop(self) -> tuple[float, float]:
        wall_s = time.perf_counter() - self._wall_start
        cpu_after = _tree_cpu_s()
        # Keyed by (pid, create time): a process gone by stop() is ignored, a new one counts whole.
        cpu_s = sum(max(0.0, cpu - self._cpu_before.get(key, 0.0))
                    for key, cpu in cpu_after.items())
        return wall_s, cpu_s


def _tree_cpu_s() -> dict[tuple[int, float], float]:
    root = psutil.Process()
    cpu_by_process = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            with process.oneshot():
                times = process.cpu_times()
                cpu_by_process[(process.pid, process.create_time())] = times.user + times.system
        except psutil.Error:
            pass
    return cpu_by_process


def vidring_plan(videos: list[str], n_rows: int, seed: int, batches: range,
                 sampling: sampler.Sampling) -> list[list[ClipRef]]:
    """The clips vidring's epoch plan puts in `batches` of epoch 0 for a manifest that lists
    `videos` cyclically in `n_rows` rows: the plan is a pure function, so every loader can
    decode exactly the clips vidring decodes."""
    infos = [probe(path) for path in videos]
    rows = [videos[i % len(videos)] for i in range(n_rows)]
    frame_counts = np.array([infos[i % len(videos)].frames for i in range(n_rows)],
                            dtype=np.int64)
    keyframes = [infos[i % len(videos)].keyframe_indices for i in range(n_rows)]
    return [[(rows[c.video_index], c.start_frame)
             for c in sampler.plan_batch(frame_counts, seed=seed, epoch=0, batch=b,
                                         batch_size=BATCH_SIZE, sampling=sampling,
                                         keyframes=keyframes)]
            for b in batches]


@dataclass(frozen=True, slots=True)
class ClipSet:
    """The random clips of vidring's plan on a corpus, for benchmarks that compare decoders
    on exactly the same clips (floor.py, peers.py)."""

    videos: list[str]
    clips: list[ClipRef]
    n_rows: int  # manifest rows run_vidring lists the videos in
    n_batches: int  # timed batches run_vidring reads
    sampling: sampler.Sampling


def add_corpus_arguments(parser: argparse.ArgumentParser, *, size: str, gop: int,
                         clips: int) -> None:
    parser.add_argument("--size", default=size, help="corpus WxH")
    parser.add_argument("--gop", type=int, default=gop, help="0: libx264's own defaults")
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--clips", type=int, default=clips)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS_DIR)


def random_clips(args: argparse.Namespace) -> ClipSet:
    """The corpus of add_corpus_arguments' settings and the clips of the batches
    run_vidring times."""
    width, height = (int(v) for v in args.size.split("x"))
    videos = [str(p) for p in make_corpus(args.corpus_dir, args.videos, width=width,
                                          height=height, gop=args.gop)]
    n_batches = -(-args.clips // BATCH_SIZE)
    n_rows = BATCH_SIZE * (VIDRING_WARMUP_BATCHES + n_batches + 1)
    sampling = sampler.Sampling(CLIP_LENGTH)
    batches = vidring_plan(videos, n_rows, 0, range(VIDRING_WARMUP_BATCHES,
                                                     VIDRING_WARMUP_BATCHES + n_batches),
                           sampling)
    return ClipSet(videos, [c for batch in batches for c in batch], n_rows, n_batches,
                   sampling)


def run_naive(warmup: list[list[ClipRef]], batches: list[list[ClipRef]],
              labels: dict[str, int]) -> Result:
    NaiveOpenCVSequence(warmup, labels, CLIP_LENGTH, WIDTH, HEIGHT)[0]
    dataset = NaiveOpenCVSequence(batches, labels, CLIP_LENGTH, WIDTH, HEIGHT)
    watch = Stopwatch()
    watch.start()
    clips = sum(len(dataset[i][0]) for i in range(len(dataset)))
    wall_s, cpu_s = watch.stop()
    return Result("naive-opencv", clips, wall_s, cpu_s,
                  _dropped_note(clips, len(batches) * BATCH_SIZE))


def run_keras_mp(warmup: list[list[ClipRef]], batches: list[list[ClipRef]],
                 labels: dict[str, int], workers: int) -> Result:
    _keras_epoch(warmup * workers, labels, workers)
    # Keras forks a fresh pool every epoch, so the timed epoch includes starting it.
    clips, wall_s, cpu_s = _keras_epoch(batches, labels, workers)
    note = "; ".join(filter(None, [f"{workers} processes",
                                   _dropped_note(clips, len(batches) * BATCH_SIZE)]))
    return Result("keras-mp", clips, wall_s, cpu_s, note)


def _keras_epoch(clip_batches: list[list[ClipRef]], labels: dict[str, int],
                 workers: int) -> tuple[int, float, float]:
    """One epoch through Keras's own enqueuer: (clips, wall_s, cpu_s)."""
    dataset = NaiveOpenCVSequence(clip_batches, labels, CLIP_LENGTH, WIDTH, HEIGHT,
                                  workers=workers, use_multiprocessing=True)
    adapter = PyDatasetAdapter(dataset, shuffle=False)
    watch = Stopwatch()
    watch.start()
    try:
        # islice stops after the last batch without asking for one more, so the watch
        # stops while the pool workers are still alive and counted.
        batches = itertools.islice(adapter.get_numpy_iterator(), len(dataset))
        clips = sum(len(x) for x, _ in batches)
        return clips, *watch.stop()
    finally:
        adapter.on_epoch_end()


def run_pyav(warmup: list[list[ClipRef]], batches: list[list[ClipRef]],
             labels: dict[str, int]) -> Result:
    reader = PyAVStraightforwardReader(CLIP_LENGTH, WIDTH, HEIGHT)
    reader.read_batch(warmup[0], labels)
    watch = Stopwatch()
    watch.start()
    clips = sum(len(reader.read_batch(batch, labels)[0]) for batch in batches)
    wall_s, cpu_s = watch.stop()
    return Result("pyav-straight", clips, wall_s, cpu_s)


def run_vidring(videos: list[str], n_rows: int, n_batches: int, workers: int,
                seed: int, sampling: sampler.Sampling, *, loader: str = "vidring",
                extra: list[str] | None = None) -> Result:
    with tempfile.TemporaryDirectory(prefix="vidring-bench-") as scratch:
        manifest_path = write_manifest([Path(v) for v in videos], Path(scratch) / "manifest.csv",
                                       n_rows=n_rows)
        with serving(manifest_path, f"bench-throughput-{os.getpid()}", batch_size=BATCH_SIZE,
                     clip_length=CLIP_LENGTH, width=WIDTH, height=HEIGHT, workers=workers,
                     slots=VIDRING_SLOTS, seed=seed, log_path=Path(scratch) / "daemon.log",
                     extra=["--sampler", sampling.sampler,
                            "--clips-per-video", str(sampling.clips_per_video),
                            *(extra or [])]) as dataset:
            indices = indices_across_epochs(dataset)
            for _ in range(VIDRING_WARMUP_BATCHES):
                batch = dataset[next(indices)]
                del batch
            watch = Stopwatch()
            watch.start()
            clips = 0
            for _ in range(n_batches):
                batch = dataset[next(indices)]  # (x, y) or, evaluating, (x, y, weight)
                clips += len(batch[0])
                del batch
            wall_s, cpu_s = watch.stop()
    return Result(loader, clips, wall_s, cpu_s, f"{workers} workers")


def _dropped_note(clips: int, clips_asked: int) -> str:
    return f"dropped {clips_asked - clips} clips" if clips < clips_asked else ""


def print_table(results: list[Result]) -> None:
    by_name = {r.loader: r for r in results}
    naive, pyav = by_name.get("naive-opencv"), by_name.get("pyav-straight")
    plain, augment = by_name.get("vidring"), by_name.get("vidring-augment")
    header = (f"{'loader':<15} {'clips':>6} {'seconds':>8} {'clips/s':>8} {'CPU s/clip':>10} "
              f"{'x naive clips/s':>15} {'x PyAV CPU/clip':>15}  note")
    print(header)
    print("-" * len(header))
    for r in results:
        vs_naive = f"{r.clips_per_s / naive.clips_per_s:.2f}" if naive else "-"
        vs_pyav = f"{r.cpu_s_per_clip / pyav.cpu_s_per_clip:.2f}" if pyav else "-"
        print(f"{r.loader:<15} {r.clips:>6} {r.wall_s:>8.2f} {r.clips_per_s:>8.1f} "
              f"{r.cpu_s_per_clip:>10.3f} {vs_naive:>15} {vs_pyav:>15}  {r.note}")
    if plain and augment:
        cpu = augment.cpu_s_per_clip / plain.cpu_s_per_clip - 1
        rate = augment.clips_per_s / plain.clips_per_s - 1
        print(f"\naugmenting costs {cpu:+.1%} CPU per clip ({augment.cpu_s_per_clip * 1e3:.1f} "
              f"vs {plain.cpu_s_per_clip * 1e3:.1f} ms) and {rate:+.1%} clips/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--clips", type=int, default=320,
                        help="clips per loader, rounded up to whole batches of 8")
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="Keras pool processes and vidring decoder workers")
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS_DIR)
    parser.add_argument("--seconds", type=float, default=10, help="length of each video")
    parser.add_argument("--loaders", default=",".join(LOADERS[:4]))
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="augment: vidring plain and with augmentation, each run twice "
                             "(sets --loaders)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sampler", default="random",
                        choices=["random", "random_keyframe", "uniform"],
                        help="where clips start (every loader decodes the same clips)")
    parser.add_argument("--clips-per-video", type=int, default=1,
                        help="with uniform: clips of a video side by side in a batch, which "
                             "vidring decodes in one pass where one reaches them")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    loaders = (PRESETS[args.preset] if args.preset else args.loaders).split(",")
    if unknown := set(loaders) - set(LOADERS):
        parser.error(f"unknown loaders {sorted(unknown)}; known: {','.join(LOADERS)}")

    cores_affine = len(os.sched_getaffinity(0))
    print(f"machine: {os.cpu_count()} cores ({cores_affine} usable by this process); "
          f"workers: {args.workers}")
    videos = [str(p) for p in make_corpus(args.corpus_dir, args.videos, seconds=args.seconds)]
    labels = label_of(videos)
    n_batches = -(-args.clips // BATCH_SIZE)
    # One clip per manifest row per epoch: list the videos cyclically so that one epoch
    # covers vidring's warm-up and timed batches.
    n_rows = BATCH_SIZE * (VIDRING_WARMUP_BATCHES + n_batches + 1)
    sampling = sampler.Sampling(CLIP_LENGTH, sampler=args.sampler,
                                clips_per_video=args.clips_per_video)
    warmup, *batches = vidring_plan(
        videos, n_rows, args.seed,
        range(VIDRING_WARMUP_BATCHES - 1, VIDRING_WARMUP_BATCHES + n_batches), sampling)
    print(f"corpus: {len(videos)} videos 640x360, {args.seconds:g} s at 30 fps, GOP 250; "
          f"{n_batches} batches of {BATCH_SIZE}x{CLIP_LENGTH}x{HEIGHT}x{WIDTH}x3 uint8 per loader, "
          f"clips placed by the {args.sampler} sampler")

    runners: dict[str, Callable[[], Result]] = {
        "naive-opencv": lambda: run_naive([warmup], batches, labels),
        "keras-mp": lambda: run_keras_mp([warmup], batches, labels, args.workers),
        "pyav-straight": lambda: run_pyav([warmup], batches, labels),
        "vidring": lambda: run_vidring(videos, n_rows, n_batches, args.workers, args.seed,
                                       sampling),
        "vidring-augment": lambda: run_vidring(videos, n_rows, n_batches, args.workers,
                                               args.seed, sampling, loader="vidring-augment",
                                               extra=AUGMENT),
        "vidring-cuda": lambda: run_vidring(videos, n_rows, n_batches, args.workers, args.seed,
                                            sampling, loader="vidring-cuda",
                                            extra=["--decode", "cuda"]),
    }
    # A preset compares two loaders: they run A B B A, so a drift of the machine's speed
    # during the run falls on both alike; each row sums its two runs.
    order = [*loaders, *reversed(loaders)] if args.preset else loaders
    runs: dict[str, list[Result]] = {}
    for name in order:
        print(f"running {name} ...", flush=True)
        runs.setdefault(name, []).append(runners[name]())
    results = [Result(name, sum(r.clips for r in rs), sum(r.wall_s for r in rs),
                      sum(r.cpu_s for r in rs), rs[0].note + (f", {len(rs)} runs" if len(rs) > 1
                                                              else ""))
               for name, rs in runs.items()]
    print()
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({
            "cores": os.cpu_count(), "workers": args.workers, "videos": len(videos),
            "video_seconds": args.seconds, "batches": n_batches, "batch_size": BATCH_SIZE,
            "clip_length": CLIP_LENGTH, "size": [HEIGHT, WIDTH],
            "results": [asdict(r) | {"clips_per_s": r.clips_per_s,
                                     "cpu_s_per_clip": r.cpu_s_per_clip} for r in results],
        }, indent=2))


if __name__ == "__main__":
    main()
