"""vidring against its peers on the same clips: CPU per clip, clips/s and frame-exactness.

Peers (`pip install decord spdl` beside the bench extra; a peer that is not installed is
left out with a note):
  decord        VideoReader(width, height, num_threads=1).get_batch(frame indices)
  spdl          spdl.io.load_video(timestamp window, scale filter)
  pyav-straight a straightforward PyAV reader (benchmarks/naive.py)
  naive-opencv  the OpenCV Sequence's clip reader (benchmarks/naive.py)
  vidring       ClipDecoder in this process (the workers' code, for CPU per clip and
                exactness) and the daemon with --workers workers (for clips/s)
SPDL's wheels load FFmpeg by its libraries' plain names (libavcodec.so.62, ...); the script
runs it on PyAV's bundled FFmpeg under those names, so every reader has the same FFmpeg.
Every peer decodes in this one process, so its clips/s is one core's.  A clip is exact when
each of its frames is closer to the reference frame it should be (a sequential decode,
resized alike) than to the frames around it.

    python benchmarks/peers.py [--size 340x256] [--gop 0] [--clips 160] [--workers 2]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import av
import numpy as np
from naive import NaiveOpenCVSequence, PyAVStraightforwardReader
from throughput import CLIP_LENGTH, HEIGHT, WIDTH, add_corpus_arguments, random_clips, run_vidring

from vidring.daemon.decode import ClipDecoder
from vidring.daemon.probe import VideoInfo, probe

Reader = Callable[[str, int], np.ndarray]
_WINDOW = 3  # a frame must beat the reference frames this many either side of it
_SONAMES = "VIDRING_BENCH_FFMPEG_SONAMES"  # set once the script runs on PyAV's FFmpeg
# auditwheel's names of PyAV's libraries: libavcodec-5e6b81c2.so.62.28.102
_BUNDLED = re.compile(r"^(lib[a-z0-9]+)-[0-9a-f]{8}\.so\.(\d+)")


def _run_spdl_on_pyav_ffmpeg(folder: Path) -> None:
    """Start this script again with PyAV's FFmpeg findable by plain names (links in
    `folder`), if SPDL is here."""
    libs = Path(av.__file__).resolve().parent.parent / "av.libs"
    if os.environ.get(_SONAMES) or importlib.util.find_spec("spdl") is None or not libs.is_dir():
        return
    names = folder / "ffmpeg-sonames"
    names.mkdir(parents=True, exist_ok=True)
    for lib in libs.iterdir():
        match = _BUNDLED.match(lib.name)
        if match:
            # Renamed into place: two runs starting together never see a missing link.
            fresh = names / f".{lib.name}.{os.getpid()}"
            fresh.symlink_to(lib)
            fresh.replace(names / f"{match[1]}.so.{match[2]}")
    # Both folders: each library finds the others by their bundled names beside the link.
    path = os.pathsep.join(filter(None, [str(names), str(libs), os.environ.get("LD_LIBRARY_PATH")]))
    os.execve(sys.executable, [sys.executable, *sys.argv],
              {**os.environ, "LD_LIBRARY_PATH": path, _SONAMES: "1"})


def _readers(infos: dict[str, VideoInfo]) -> dict[str, Reader | str]:
    readers: dict[str, Reader | str] = {}
    try:
        import decord

        cache: dict[str, Any] = {}

        def read_decord(path: str, start: int) -> np.ndarray:
            if path not in cache:
                cache[path] = decord.VideoReader(path, ctx=decord.cpu(0), width=WIDTH,
                                                 height=HEIGHT, num_threads=1)
            frames = [min(start + t, infos[path].frames - 1) for t in range(CLIP_LENGTH)]
            return np.asarray(cache[path].get_batch(frames).asnumpy())

        readers["decord"] = read_decord
    except ImportError:
        readers["decord"] = "not installed (pip install decord)"
    try:
        import spdl.io

        # Not num_frames=: its trim counts frames from the keyframe, not the window.
        desc = spdl.io.get_video_filter_desc(scale_width=WIDTH, scale_height=HEIGHT,
                                            scale_mode=None)  # stretch, as the others do

        def read_spdl(path: str, start: int) -> np.ndarray:
            info = infos[path]
            pts = info.frame_pts
            begin = float(pts[start] * info.time_base)
            end = float(pts[min(start + CLIP_LENGTH, info.frames - 1)] * info.time_base)
            buffer = spdl.io.load_video(path, timestamp=(begin, end + 1e-3), filter_desc=desc)
            frames = np.asarray(spdl.io.to_numpy(buffer))[:CLIP_LENGTH]
            # Past the end the last frame repeats, as in every other reader here.
            return frames[[min(t, len(frames) - 1) for t in range(CLIP_LENGTH)]]

        readers["spdl"] = read_spdl
    except ImportError:
        readers["spdl"] = "not installed (pip install spdl)"
    except RuntimeError as exc:  # no FFmpeg of a version its wheels were built for
        readers["spdl"] = f"cannot load: {str(exc)[:90]}"
    straight = PyAVStraightforwardReader(CLIP_LENGTH, WIDTH, HEIGHT)
    readers["pyav-straight"] = straight.read_clip
    opencv = NaiveOpenCVSequence([], {}, CLIP_LENGTH, WIDTH, HEIGHT)

    def read_opencv(path: str, start: int) -> np.ndarray:
        clip = opencv._read_clip(path, start)
        return np.zeros((0,)) if clip is None else clip

    readers["naive-opencv"] = read_opencv
    decoder = ClipDecoder(HEIGHT, WIDTH)

    def read_vidring(path: str, start: int) -> np.ndarray:
        info = infos[path]
        out = np.empty((CLIP_LENGTH, HEIGHT, WIDTH, 3), np.uint8)
        frames = [min(start + t, info.frames - 1) for t in range(CLIP_LENGTH)]
        decoder.decode_into(path, *info.seek_target(start),
                            [int(info.frame_pts[f]) for f in frames], out, reopen=info.reopen)
        return out

    readers["vidring"] = read_vidring
    return readers


def _reference(path: str) -> np.ndarray:
    with av.open(path) as container:
        return np.stack([f.to_ndarray(width=WIDTH, height=HEIGHT, format="rgb24")
                         for f in container.decode(video=0)]).astype(np.int16)


def _exact(clip: np.ndarray, ref: np.ndarray, start: int) -> bool:
    if clip.shape != (CLIP_LENGTH, HEIGHT, WIDTH, 3):
        return False
    for t, frame in enumerate(clip.astype(np.int16)):
        want = min(start + t, len(ref) - 1)
        window = range(max(want - _WINDOW, 0), min(want + _WINDOW + 1, len(ref)))
        errors = {k: float(np.mean(np.square((ref[k] - frame).astype(np.int32))))
                  for k in window}
        # Resizers differ, so not equality: the wanted frame must be the closest one.
        if min(errors, key=errors.__getitem__) != want:
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_corpus_arguments(parser, size="340x256", gop=0, clips=160)
    args = parser.parse_args()
    _run_spdl_on_pyav_ffmpeg(args.corpus_dir)
    bench = random_clips(args)
    videos, clips = bench.videos, bench.clips
    infos = {path: probe(path) for path in videos}
    refs = {path: _reference(path) for path in videos}
    print(f"corpus {args.size} GOP {args.gop or 'libx264 defaults'}; {len(clips)} random "
          f"clips of {CLIP_LENGTH} frames at {HEIGHT}x{WIDTH}; {os.cpu_count()} cores")
    print(f"{'loader':<14} {'CPU ms/clip':>11} {'clips/s':>8} {'exact':>9}  note")
    for name, reader in _readers(infos).items():
        if isinstance(reader, str):
            print(f"{name:<14} {'-':>11} {'-':>8} {'-':>9}  {reader}")
            continue
        reader(*clips[0])  # warm-up: imports, first open
        got, began_cpu, began = [], time.process_time(), time.perf_counter()
        for path, start in clips:
            try:
                got.append(reader(path, start))
            except Exception:
                got.append(np.zeros((0,)))
        cpu_s, wall_s = time.process_time() - began_cpu, time.perf_counter() - began
        exact = sum(_exact(clip, refs[path], start) for clip, (path, start)
                    in zip(got, clips, strict=True))
        note = "in this process" + ("; ClipDecoder, the workers' code" if name == "vidring"
                                    else "")
        print(f"{name:<14} {cpu_s / len(clips) * 1e3:>11.1f} {len(clips) / wall_s:>8.1f} "
              f"{exact:>4}/{len(clips):<4}  {note}", flush=True)
    served = run_vidring(videos, bench.n_rows, bench.n_batches, args.workers, 0,
                         bench.sampling)
    print(f"{'vidring daemon':<14} {served.cpu_s_per_clip * 1e3:>11.1f} "
          f"{served.clips_per_s:>8.1f} {'':>9}  {args.workers} workers, the whole tree's CPU")


if __name__ == "__main__":
    main()
