"""How close vidring comes to the decode floor: CPU per clip against the floor, clips/s
against the exact-access ceiling, same clips, same FFmpeg.

- floor: the least work that gives an exact random clip, in one process: open once per
  file, seek to the keyframe, decode from it with non-reference frames skipped, and
  nothing else (no colour conversion, resize or copy);
- decoder: vidring's ClipDecoder on the same clips, in one process (the floor plus the
  conversion, resize and write of the kept frames);
- vidring: the daemon with --workers workers, read through ClipDataset (everything:
  IPC, scheduling, the trainer's side), CPU of the whole process tree;
- ceiling: the clips/s --workers cores would give at the floor's CPU per clip;
- opening: what it costs to open a file and decode its first frame, as on a dataset of
  thousands of files, where almost every clip opens its file: opened as the probe found
  it (no format probe or stream analysis), and opened the plain way.

    python benchmarks/floor.py [--size 640x360] [--gop 250] [--clips 320] [--workers 2]

The three corpora of the closing note: 640x360 --gop 250; 340x256 --gop 0 (libx264's
defaults); 340x256 --gop 16.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

import numpy as np
from throughput import CLIP_LENGTH, HEIGHT, WIDTH, add_corpus_arguments, random_clips, run_vidring

from vidring.daemon.decode import ClipDecoder
from vidring.daemon.probe import probe


class FloorDecoder(ClipDecoder):
    """ClipDecoder's decode path, frames decoded and dropped: the floor, by construction
    with the same seeks, skips and drains."""

    def _write(self, frame: Any, out: Any, positions: list[int]) -> None:
        pass


def _cpu_per_clip(decoder: ClipDecoder, clips: list[tuple[str, int]], infos: dict[str, Any]
                  ) -> float:
    out = np.empty((CLIP_LENGTH, HEIGHT, WIDTH, 3), np.uint8)
    path, start = clips[0]
    decoder.decode_into(path, *infos[path].seek_target(start),
                        [int(p) for p in infos[path].frame_pts[start:start + CLIP_LENGTH]], out,
                        reopen=infos[path].reopen)
    began = time.process_time()
    for path, start in clips:
        info = infos[path]
        frames = [min(start + t, info.frames - 1) for t in range(CLIP_LENGTH)]
        decoder.decode_into(path, *info.seek_target(start),
                            [int(info.frame_pts[f]) for f in frames], out,
                            reopen=infos[path].reopen)
    return (time.process_time() - began) / len(clips)


def _cpu_per_open(infos: dict[str, Any], *, probed: bool, rounds: int = 10) -> float:
    decoder = ClipDecoder(HEIGHT, WIDTH, max_open=1)
    out = np.empty((1, HEIGHT, WIDTH, 3), np.uint8)
    began = time.process_time()
    for _ in range(rounds):
        for path, info in infos.items():
            decoder.decode_into(path, *info.seek_target(0), [int(info.frame_pts[0])], out,
                                reopen=info.reopen if probed else None)
    decoder.close()
    return (time.process_time() - began) / (rounds * len(infos))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_corpus_arguments(parser, size="640x360", gop=250, clips=320)
    args = parser.parse_args()
    bench = random_clips(args)
    videos, clips = bench.videos, bench.clips
    infos = {path: probe(path) for path in videos}
    # A B C C B A: this machine's speed drifts within a run, and the order cancels a
    # linear drift for all three.
    cpu_s = dict.fromkeys(("floor", "decoder", "vidring"), 0.0)
    served_clips = served_wall_s = 0.0
    for kind in ("floor", "decoder", "vidring", "vidring", "decoder", "floor"):
        if kind == "vidring":
            served = run_vidring(videos, bench.n_rows, bench.n_batches, args.workers, 0,
                                 bench.sampling)
            cpu_s[kind] += served.cpu_s
            served_clips += served.clips
            served_wall_s += served.wall_s
        else:
            decoder = (FloorDecoder if kind == "floor" else ClipDecoder)(HEIGHT, WIDTH)
            cpu_s[kind] += _cpu_per_clip(decoder, clips, infos) / 2
    floor_s, decoder_s = cpu_s["floor"], cpu_s["decoder"]
    served_s, clips_per_s = cpu_s["vidring"] / served_clips, served_clips / served_wall_s
    opening = dict.fromkeys((True, False), 0.0)
    for probed in (True, False, False, True):
        opening[probed] += _cpu_per_open(infos, probed=probed) / 2
    ceiling = args.workers / floor_s
    print(f"corpus {args.size} GOP {args.gop}, {len(clips)} random clips of {CLIP_LENGTH} "
          f"frames at {HEIGHT}x{WIDTH}; {args.workers} workers on {os.cpu_count()} cores")
    print(f"floor     {floor_s * 1e3:6.1f} ms CPU/clip")
    print(f"decoder   {decoder_s * 1e3:6.1f} ms CPU/clip  ({decoder_s / floor_s:.2f}x floor)")
    print(f"vidring   {served_s * 1e3:6.1f} ms CPU/clip  ({served_s / floor_s:.2f}x floor), "
          f"{clips_per_s:.1f} clips/s = {clips_per_s / ceiling:.0%} of the {ceiling:.1f} "
          f"clips/s ceiling")
    print(f"opening   {opening[True] * 1e3:6.2f} ms CPU to open a file and decode its first "
          f"frame as probed, {opening[False] * 1e3:.2f} ms the plain way")


if __name__ == "__main__":
    main()
