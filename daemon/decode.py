"""One clip: open, seek, decode, resize, write into the slot memory.

Where the time goes (DESIGN.md, "The decode path"): pre-roll from the
keyframe dominates, so
- one FFmpeg thread per worker: a pool of processes already fills the cores;
- every packet that is not a clip frame (pre-roll, frames between strided
  clip frames, frames after the clip) is decoded with skip_frame=NONREF: a
  non-reference frame is never needed to decode another, so the output is
  exact; the choice is made per packet from its pts, so no clip frame is
  ever skipped;
- once every packet of the clip is in the decoder, it is drained instead of
  fed the frames that follow (its B-frame reorder delay);
- only kept frames are converted and resized, in one swscale call each, by
  one long-lived reformatter with threads=1 (PyAV otherwise builds a threaded
  SwsContext per call), and written once, straight into the slot.
"""

from __future__ import annotations

import collections
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

# swscale's area filter: antialiased when shrinking (the usual case: 640x360 -> 112x112,
# like cv2.INTER_AREA), bilinear when growing, and cheaper than its bilinear (0.13 vs
# 0.19 ms per 640x360 frame here).
INTERPOLATION = "AREA"
MAX_OPEN_CONTAINERS = 8


class DecodeError(Exception):
    """A clip that could not be decoded; the message names the file and the reason."""


def _open(path: str) -> tuple[Any, Any]:
    container = av.open(path)
    if not container.streams.video:
        container.close()
        raise DecodeError(f"{path}: no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    ctx.thread_type = "NONE"
    ctx.thread_count = 1
    return container, stream


class ClipDecoder:
    """Decodes clips into caller-owned (T, H, W, 3) arrays, keeping files open."""

    def __init__(self, height: int, width: int, *, max_open: int = MAX_OPEN_CONTAINERS) -> None:
        self.height = height
        self.width = width
        self._reformatter = VideoReformatter()
        self._open: collections.OrderedDict[str, tuple[Any, Any]] = collections.OrderedDict()
        self._max_open = max_open

    def close(self) -> None:
        while self._open:
            _, (container, _) = self._open.popitem()
            container.close()

    def _container(self, path: str) -> tuple[Any, Any]:
        entry = self._open.get(path)
        if entry is not None:
            self._open.move_to_end(path)
            return entry
        entry = _open(path)
        self._open[path] = entry
        while len(self._open) > self._max_open:
            _, (old, _) = self._open.popitem(last=False)
            old.close()
        return entry

    def _forget(self, path: str) -> None:
        entry = self._open.pop(path, None)
        if entry is not None:
            entry[0].close()

    def decode_into(self, path: str, seek_pts: int, frame_pts: list[int], out: np.ndarray) -> None:
        """Write the frames with timestamps `frame_pts` (in order) into out[0..T-1].

        `seek_pts` is the keyframe at or before the first wanted frame.
        Repeated timestamps (a short video's last frame) are written once each.
        """
        if out.shape[0] != len(frame_pts) or out.shape[1:] != (self.height, self.width, 3):
            raise ValueError(f"out has shape {out.shape}, clip needs "
                             f"({len(frame_pts)}, {self.height}, {self.width}, 3)")
        try:
            self._decode(path, seek_pts, frame_pts, out)
        except DecodeError:
            self._forget(path)
            raise
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._forget(path)
            raise DecodeError(f"{path}: {type(exc).__name__}: {exc}") from None

    def _decode(self, path: str, seek_pts: int, frame_pts: list[int], out: np.ndarray) -> None:
        container, stream = self._container(path)
        ctx = stream.codec_context
        targets: dict[int, list[int]] = {}
        for t, pts in enumerate(frame_pts):
            targets.setdefault(pts, []).append(t)
        wanted = frozenset(targets)
        unfed = set(targets)  # clip frames whose packets the decoder has not seen yet
        container.seek(seek_pts, stream=stream, backward=True, any_frame=False)
        skipping: bool | None = None
        for packet in container.demux(stream):
            pts = packet.pts
            if pts is not None:
                # A non-reference frame that is not a clip frame is never needed.
                skip = pts not in wanted
                if skip is not skipping:
                    ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                    skipping = skip
            self._take(packet.decode(), targets, out)
            if not targets:
                break
            unfed.discard(pts)
            if not unfed:
                # Every clip frame is inside the decoder: drain its reorder delay
                # rather than decode the frames that follow the clip.
                self._take(ctx.decode(None), targets, out)
                break
        ctx.skip_frame = "DEFAULT"
        if targets:
            missing = sorted(targets)
            raise DecodeError(
                f"{path}: stream ended before {len(missing)} of {len(frame_pts)} clip frames "
                f"(first missing pts {missing[0]}): truncated or corrupt"
            )

    def _take(self, frames: Any, targets: dict[int, list[int]], out: np.ndarray) -> None:
        for frame in frames:
            positions = targets.pop(frame.pts, None)
            if positions is not None:
                self._write(frame, out, positions)

    def _write(self, frame: Any, out: np.ndarray, positions: list[int]) -> None:
        rgb = self._reformatter.reformat(frame, width=self.width, height=self.height,
                                         format="rgb24", interpolation=INTERPOLATION, threads=1)
        plane = rgb.planes[0]
        rows = np.frombuffer(plane, np.uint8).reshape(self.height, plane.line_size)
        pixels = rows[:, : self.width * 3].reshape(self.height, self.width, 3)
        first = out[positions[0]]
        if out.dtype == np.uint8:
            np.copyto(first, pixels)
        else:
            np.multiply(pixels, np.float32(1.0 / 255.0), out=first, casting="unsafe")
        for t in positions[1:]:
            np.copyto(out[t], first)
