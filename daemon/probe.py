"""Per-video metadata (frame timestamps, keyframes, fps), read once and cached on disk.

Probing demuxes every packet of the first video stream without decoding it,
so frame counts and keyframe positions come from the container's own index,
not from header estimates (``frames_from_header`` is often 0 or wrong).
The cache key is the file's absolute path, size and mtime; a changed file is
probed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

CACHE_FORMAT = 2


class ProbeError(Exception):
    """A video that cannot be probed; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """Presentation-ordered frame timestamps and keyframe positions of one video."""

    frame_pts: np.ndarray  # int64, sorted, one per frame
    keyframe_indices: np.ndarray  # int64, indices into frame_pts, sorted, starts at 0
    fps: float
    width: int
    height: int

    @property
    def frames(self) -> int:
        return len(self.frame_pts)

    def keyframe_before(self, frame: int) -> int:
        """Index of the last keyframe at or before `frame`."""
        pos = int(np.searchsorted(self.keyframe_indices, frame, side="right")) - 1
        return int(self.keyframe_indices[max(pos, 0)])


def probe(path: str | Path) -> VideoInfo:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ProbeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            pts: list[int] = []
            key_pts: list[int] = []
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if packet.pts is None:
                    raise ProbeError(f"{path}: packet without a timestamp; remux the file")
                pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
            rate = stream.average_rate or stream.guessed_rate
            fps = float(rate) if rate else 0.0
            width, height = stream.codec_context.width, stream.codec_context.height
    except ProbeError:
        raise
    except (av.FFmpegError, OSError) as exc:
        raise ProbeError(f"{path}: cannot read video ({type(exc).__name__}: {exc})") from None
    if not pts:
        raise ProbeError(f"{path}: video stream has no frames")
    frame_pts = np.unique(np.asarray(pts, dtype=np.int64))
    if len(frame_pts) != len(pts):
        raise ProbeError(f"{path}: duplicate frame timestamps; remux the file")
    key_idx = np.searchsorted(frame_pts, np.asarray(sorted(key_pts), dtype=np.int64))
    if len(key_idx) == 0 or key_idx[0] != 0:
        # Frames before the first keyframe cannot be decoded on their own; seeking
        # to the first keyframe and decoding forward still reaches them if the
        # stream allows, otherwise decode reports it.
        key_idx = np.concatenate([[0], key_idx]).astype(np.int64)
    return VideoInfo(frame_pts, np.unique(key_idx), fps, width, height)


class ProbeCache:
    """probe() behind a folder of small JSON files."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def get(self, path: str | Path) -> VideoInfo:
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ProbeError(f"{path}: {exc.strerror}") from None
        if self.folder is None:
            return probe(path)
        key = f"{os.path.abspath(path)}\0{st.st_size}\0{st.st_mtime_ns}\0{CACHE_FORMAT}"
        entry = self.folder / (hashlib.sha1(key.encode()).hexdigest() + ".json")
        try:
            data = json.loads(entry.read_text())
            return VideoInfo(np.asarray(data["pts"], np.int64), np.asarray(data["keys"], np.int64),
                             float(data["fps"]), int(data["width"]), int(data["height"]))
        except (OSError, ValueError, KeyError):
            pass
        info = probe(path)
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"pts": info.frame_pts.tolist(),
                                   "keys": info.keyframe_indices.tolist(), "fps": info.fps,
                                   "width": info.width, "height": info.height}))
        os.replace(tmp, entry)
        return info


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "vidring" / "probe"
