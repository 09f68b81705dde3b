"""One decoded frame into its place in the slot: crop, resize, rotate, flip, normalise.

Cost (benchmarks/throughput.py --preset augment gives the measured total):
- the crop is FFmpeg's crop filter, which only offsets the frame's plane pointers, so
  the one swscale call per kept frame reads the box alone: cropping makes that call
  cheaper, not dearer;
- rotation and flip are numpy views of swscale's small output, and the one copy into
  the slot (with the dtype conversion and normalisation) reads through them.
"""

from __future__ import annotations

import collections
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from vidring.daemon.augment import Look, stored_box

if TYPE_CHECKING:
    from collections.abc import Sequence

# swscale's area filter: antialiased when shrinking (the usual case: 640x360 -> 112x112,
# like cv2.INTER_AREA), bilinear when growing, and cheaper than its bilinear (0.13 vs
# 0.19 ms per 640x360 frame here).
INTERPOLATIONS = {"area": "AREA", "bilinear": "BILINEAR", "bicubic": "BICUBIC",
                  "lanczos": "LANCZOS", "nearest": "POINT", "fast_bilinear": "FAST_BILINEAR"}
DEFAULT_INTERPOLATION = "area"
_MAX_CROP_GRAPHS = 8  # one per clip of a job is enough


def normalisation(mean: Sequence[float] | None,
                  std: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset) per channel so that float output = pixel * scale - offset, which is
    (pixel / 255 - mean) / std; plain pixel / 255 without mean and std."""
    m = np.zeros(3) if mean is None else np.asarray(mean, np.float64)
    s = np.ones(3) if std is None else np.asarray(std, np.float64)
    return (1.0 / (255.0 * s)).astype(np.float32), (m / s).astype(np.float32)


class FrameWriter:
    """Writes frames into (H, W, 3) places of the slot's dtype; one per worker."""

    def __init__(self, height: int, width: int, *, interpolation: str = DEFAULT_INTERPOLATION,
                 mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation: must be one of {', '.join(INTERPOLATIONS)}, got "
                             f"{interpolation!r}")
        self.height = height
        self.width = width
        self._interpolation = INTERPOLATIONS[interpolation]
        self._scale, self._offset = normalisation(mean, std)
        self._normalise = mean is not None or std is not None
        self._reformatter = VideoReformatter()
        self._crops: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()
        self._scratch: np.ndarray | None = None

    def write(self, frame: Any, look: Look | None, rotation: int, out: np.ndarray) -> None:
        """`frame` cut by `look` (the whole frame when None), upright, into `out`."""
        turns = (rotation // 90) % 4
        # swscale's output is in the stored orientation: rotated by the view below.
        height, width = (self.width, self.height) if turns % 2 else (self.height, self.width)
        if look is not None:
            box = stored_box(look.box, rotation, (frame.height, frame.width))
            if box != (0, 0, frame.height, frame.width):
                frame = self._crop(frame, box)
        rgb = self._reformatter.reformat(frame, width=width, height=height, format="rgb24",
                                         interpolation=self._interpolation, threads=1)
        plane = rgb.planes[0]
        rows = np.frombuffer(memoryview(plane), np.uint8).reshape(height, plane.line_size)
        pixels = rows[:, : width * 3].reshape(height, width, 3)
        if turns:
            pixels = np.rot90(pixels, turns)
        if look is not None and look.flip:
            pixels = pixels[:, ::-1]
        self._store(pixels, out)

    def _store(self, pixels: np.ndarray, out: np.ndarray) -> None:
        if out.dtype == np.uint8:
            np.copyto(out, pixels)
            return
        # float16 is computed in float32 and rounded once.
        target = out if out.dtype == np.float32 else self._float_scratch(out.shape)
        np.multiply(pixels, self._scale, out=target, casting="unsafe")
        if self._normalise:
            np.subtract(target, self._offset, out=target)
        if target is not out:
            np.copyto(out, target, casting="same_kind")

    def _float_scratch(self, shape: tuple[int, ...]) -> np.ndarray:
        if self._scratch is None or self._scratch.shape != shape:
            self._scratch = np.empty(shape, np.float32)
        return self._scratch

    def _crop(self, frame: Any, box: tuple[int, int, int, int]) -> Any:
        y0, x0, h, w = box
        key = (box, frame.format.name, frame.width, frame.height)
        graph = self._crops.get(key)
        if graph is None:
            graph = av.filter.Graph()
            source = graph.add_buffer(width=frame.width, height=frame.height,
                                      format=frame.format.name, time_base=Fraction(1, 1))
            # exact=1: an odd offset is kept for luma instead of rounded to the chroma grid.
            crop = graph.add("crop", f"w={w}:h={h}:x={x0}:y={y0}:exact=1")
            sink = graph.add("buffersink")
            source.link_to(crop)
            crop.link_to(sink)
            graph.configure()
            self._crops[key] = graph
            while len(self._crops) > _MAX_CROP_GRAPHS:
                self._crops.popitem(last=False)
        else:
            self._crops.move_to_end(key)
        graph.push(frame)
        return graph.pull()
