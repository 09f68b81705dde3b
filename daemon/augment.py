"""Where each clip is cut from its frames, and whether it is flipped.  Pure functions only.

Resize (`vidring serve --resize`):
- `stretch` (the default): the whole frame to HxW; the aspect ratio is not kept;
- `short_side`: the frame scaled so that its short side is S (`--short-side S`, or a
  new S per clip drawn from `--scale-jitter MIN:MAX`), then an HxW crop of it, in the
  centre or at a random place (`--crop center|random`).  Done as one step: the box of
  source pixels the crop covers (H * short / S by W * short / S) is resized to HxW, so
  no pixel outside the crop is converted or scaled.
`--flip`: a horizontal flip with probability one half.

A box is (y0, x0, h, w) in pixels of the upright source frame (its rotation metadata
applied), with even offsets and sizes so that 4:2:0 chroma is cut on its own grid.
Every choice comes from a generator seeded by (stream, seed, epoch, sample, attempt),
the scheme of sampler.py, and every draw is made whatever the settings, so turning the
flip on does not move the crops: batches are the same bytes whatever the worker count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_AUGMENT_STREAM = 3
RESIZES = ("stretch", "short_side")
CROPS = ("center", "random")


@dataclass(frozen=True, slots=True)
class Look:
    """How one clip's frames are cut: a box of the upright source frame, and a flip."""

    box: tuple[int, int, int, int]  # y0, x0, h, w
    flip: bool = False


@dataclass(frozen=True, slots=True)
class Augment:
    """The geometric side of preprocessing (`--resize`, `--short-side`, `--scale-jitter`,
    `--crop`, `--flip`) for an HxW output."""

    height: int
    width: int
    resize: str = "stretch"
    short_side: tuple[int, int] = (0, 0)  # (least, most) S in pixels, for short_side
    crop: str = "center"
    flip: bool = False

    def __post_init__(self) -> None:
        if self.resize not in RESIZES:
            raise ValueError(f"resize: must be one of {', '.join(RESIZES)}, got {self.resize!r}")
        if self.crop not in CROPS:
            raise ValueError(f"crop: must be one of {', '.join(CROPS)}, got {self.crop!r}")
        least, most = self.short_side
        if self.resize == "stretch":
            if least or most:
                raise ValueError("short_side, scale_jitter: need --resize short_side")
            if self.crop == "random":
                raise ValueError("crop: random needs --resize short_side (stretch keeps the "
                                 "whole frame)")
            return
        if not least:
            raise ValueError("resize: short_side needs --short-side S or --scale-jitter MIN:MAX")
        if most < least:
            raise ValueError(f"scale_jitter: MIN {least} is above MAX {most}")
        if least < max(self.height, self.width):
            raise ValueError(f"short_side: {least} is less than the output's "
                             f"{max(self.height, self.width)} pixels: an HxW crop does not fit")


def parse_jitter(text: str) -> tuple[int, int]:
    """'MIN:MAX' -> (MIN, MAX)."""
    try:
        least, most = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"scale_jitter: expected MIN:MAX such as 128:160, got {text!r}") from None
    return least, most


def place(augment: Augment, size: tuple[int, int], *, seed: int, epoch: int, sample: int,
          attempt: int = 0) -> Look:
    """The look of sample `sample` of `epoch`, cut from upright frames of `size` (h, w)."""
    src_h, src_w = size
    if augment.resize == "stretch" and not augment.flip:
        return Look((0, 0, src_h, src_w), False)  # nothing drawn is used: skip the draws
    rng = np.random.default_rng([_AUGMENT_STREAM, seed, epoch, sample, attempt])
    side, fy, fx, coin = int(rng.integers(0, 2**31)), rng.random(), rng.random(), rng.random()
    flip = augment.flip and coin < 0.5
    if augment.resize == "stretch":
        return Look((0, 0, src_h, src_w), flip)
    least, most = augment.short_side
    scale = (least + side % (most - least + 1)) / min(src_h, src_w)
    box_h = _even(min(src_h, round(augment.height / scale)))
    box_w = _even(min(src_w, round(augment.width / scale)))
    if augment.crop == "center":
        fy = fx = 0.5
    return Look((_offset(src_h - box_h, fy), _offset(src_w - box_w, fx), box_h, box_w), flip)


def _even(n: int) -> int:
    return max(n - n % 2, min(n, 1))


def _offset(room: int, fraction: float) -> int:
    """An even offset in [0, room]: at `fraction` of the even ones."""
    evens = room // 2 + 1
    return min(int(fraction * evens), evens - 1) * 2


def upright_size(size: tuple[int, int], rotation: int) -> tuple[int, int]:
    """(h, w) of a stored (h, w) frame once rotated by `rotation` degrees."""
    return (size[1], size[0]) if rotation % 180 else size


def stored_box(box: tuple[int, int, int, int], rotation: int,
               stored: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box of the stored frame that becomes `box` of the upright frame, where upright is
    np.rot90(stored, rotation // 90) (counter-clockwise, FFmpeg's display matrix angle)."""
    y0, x0, h, w = box
    rows, cols = stored
    k = (rotation // 90) % 4
    if k == 0:
        return y0, x0, h, w
    if k == 1:
        return x0, cols - y0 - h, w, h
    if k == 2:
        return rows - y0 - h, cols - x0 - w, h, w
    return rows - x0 - w, y0, w, h
