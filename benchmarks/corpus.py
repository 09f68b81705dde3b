"""Synthetic H.264 benchmark corpus, cached on disk.

The benchmarks decode these files; nothing is measured here. Each video is a moving
gradient with a moving block and light noise, encoded with libx264 (yuv420p, B-frames,
a keyframe exactly every `gop` frames) so that decoding costs what real footage costs.

    python benchmarks/corpus.py --videos 12 [--corpus-dir D]   # build and print the folder
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING

import av
import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

DEFAULT_CORPUS_DIR = Path.home() / ".cache" / "vidring-bench"
NUM_CLASSES = 10
# A small bank of noise planes, reused with random shifts: fresh noise per frame costs
# more to generate than to encode.
NOISE_BANK_SIZE = 8
NOISE_AMPLITUDE = 6


def corpus_folder(root: Path, width: int, height: int, seconds: float, fps: int,
                  gop: int, seed: int) -> Path:
    """The folder holding the videos for one parameter set (the parameters are the cache key)."""
    return Path(root) / f"{width}x{height}-{seconds:g}s-{fps}fps-gop{gop}-seed{seed}"


def make_corpus(folder: Path | str, n_videos: int, width: int = 640, height: int = 360,
                seconds: float = 10, fps: int = 30, gop: int = 250,
                seed: int = 0) -> list[Path]:
    """Encode (or reuse) `n_videos` videos under `folder`/<params>/; also write manifest.csv there.

    Returns the video paths. A video is reused when a file of that name exists: the folder
    name carries every parameter, and files are renamed into place only once complete.
    """
    video_dir = corpus_folder(Path(folder), width, height, seconds, fps, gop, seed)
    video_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n_videos):
        path = video_dir / f"video_{index:04d}.mp4"
        if not path.exists():
            partial_path = path.with_suffix(f".partial-{os.getpid()}.mp4")
            _encode_video(partial_path, width, height, round(seconds * fps), fps, gop,
                          seed=seed * 1_000_003 + index)
            partial_path.replace(path)
        paths.append(path)
    write_manifest(paths, video_dir / "manifest.csv")
    return paths


def write_manifest(video_paths: Sequence[Path], manifest_path: Path,
                   n_rows: int | None = None) -> Path:
    """Write a `path,label` CSV; label = video index % 10.

    With `n_rows`, the videos are listed cyclically until there are that many rows, so an
    epoch of a one-clip-per-row loader can be longer than the number of videos.
    """
    n_rows = len(video_paths) if n_rows is None else n_rows
    with open(manifest_path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "label"])
        for row in range(n_rows):
            video_index = row % len(video_paths)
            writer.writerow([str(Path(video_paths[video_index]).resolve()),
                             video_index % NUM_CLASSES])
    return manifest_path


def label_of(video_paths: Sequence[Path]) -> dict[str, int]:
    """The manifest's labels, keyed by path as a string."""
    return {str(path): index % NUM_CLASSES for index, path in enumerate(video_paths)}


def _encode_video(path: Path, width: int, height: int, n_frames: int, fps: int, gop: int,
                  seed: int) -> None:
    rng = np.random.default_rng(seed)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop:
            stream.gop_size = gop
            # libx264 ignores unknown top-level options such as "keyint"; they must go through
            # x264-params. preset veryfast keeps bframes=3; scenecut=0 pins keyframes to the GOP.
            stream.options = {
                "preset": "veryfast",
                "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0",
            }
        # gop 0: libx264's own defaults (preset medium, keyint 250 with scene cuts, B-frames
        # as references in a pyramid), as most videos found in the wild are made.
        for frame_index, yuv in enumerate(_synthetic_frames(width, height, n_frames, rng)):
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            frame.pts = frame_index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _synthetic_frames(width: int, height: int, n_frames: int, rng: np.random.Generator):
    """Yield (height * 3 // 2, width) uint8 yuv420p planes: drifting gradients, a moving
    block, and noise."""
    xs = np.arange(width, dtype=np.int32)[None, :]
    ys = np.arange(height, dtype=np.int32)[:, None]
    slope_x, slope_y = rng.uniform(0.2, 1.0, size=2)
    drift_px, block_speed_px = rng.uniform(1.0, 4.0, size=2)
    block_size_px = max(8, height // 4)
    luma_ramp = (xs * slope_x + ys * slope_y).astype(np.int32)
    noise_bank = rng.integers(-NOISE_AMPLITUDE, NOISE_AMPLITUDE + 1,
                              size=(NOISE_BANK_SIZE, height, width), dtype=np.int16)
    chroma_h, chroma_w = height // 2, width // 2
    chroma_u = (np.arange(chroma_w)[None, :] * 100 // chroma_w + 78).astype(np.int32)
    chroma_v = (np.arange(chroma_h)[:, None] * 100 // chroma_h + 78).astype(np.int32)
    for t in range(n_frames):
        luma = ((luma_ramp + int(t * drift_px)) % 200 + 28).astype(np.int16)
        block_x = int(t * block_speed_px) % max(1, width - block_size_px)
        block_y = int(height / 2 + height / 4 * np.sin(t / 20)) - block_size_px // 2
        luma[block_y:block_y + block_size_px, block_x:block_x + block_size_px] = 235
        noise = np.roll(noise_bank[t % NOISE_BANK_SIZE], rng.integers(0, width), axis=1)
        yuv = np.empty((height * 3 // 2, width), dtype=np.uint8)
        yuv[:height] = np.clip(luma + noise, 16, 235)
        # yuv420p as one array: the U then V planes, each (h/2, w/2), packed into rows of w.
        chroma = yuv[height:].reshape(2, chroma_h, chroma_w)
        chroma[0] = (chroma_u + t) % 100 + 78
        chroma[1] = (chroma_v + 2 * t) % 100 + 78
        yield yuv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=12)
    parser.add_argument("--corpus-dir", type=Path, default=DEFAULT_CORPUS_DIR)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--gop", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = make_corpus(args.corpus_dir, args.videos, args.width, args.height, args.seconds,
                        args.fps, args.gop, args.seed)
    print(paths[0].parent if paths else args.corpus_dir)


if __name__ == "__main__":
    main()
