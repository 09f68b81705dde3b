"""The epoch plan: which clip of which video goes where.  Pure functions only.

Batch k of epoch e is a function of (frame counts, the rows planned, seed,
epoch, k, sampling, shard) and nothing else: not the worker count, not timing, not crashes.  Every
random choice comes from a generator seeded by (stream, seed, epoch, sample,
attempt).

An epoch is the manifest's videos, each `clips_per_video` times, as samples:
- training (`random`, `segments`): samples in an order shuffled per epoch, with
  floor(samples / B) full batches; the few left over sit that epoch out
  (`drop_last` with shuffling);
- evaluation (`uniform`, or `segments` with `evaluation`): samples in manifest
  order, the same in every epoch, every one of them served: the last batch is
  padded (`padding` set; ClipDataset gives it sample weight 0).

Where a clip lies in its video:
- `random`: a start uniform over the valid starts, frames at `stride`, or, with
  `fps`, at the frames presented at start + k / fps seconds (by timestamps, so a
  clip spans the same time at 24, 25 or 30 fps and on variable frame rate);
- `random_keyframe`: a start drawn uniformly among the keyframes that leave room
  for a whole clip, so no frame before the clip is decoded; it trades start
  randomness for speed on long GOPs (README gives the measured gain);
- `uniform`: clip j of N starts at j/(N-1) of the valid starts (the centre for
  N = 1), frames at `stride`;
- `segments` (TSN): the video split into `clip_length` equal segments, one
  frame from each: random within it in training, its centre in evaluation.
A manifest row's `start`/`end` bound its clips to a window of frames
[first, stop) of its video: every sampler works within the window.  A video
(or window) shorter than a clip (`--short-policy`) repeats its last frame
(`repeat_last`), starts over (`wrap`), or is left out of the plan at start
(`skip`: the plan draws from the rows it is given).  A video that fails is
replaced by ``replacement()``, deterministic too, so a fixed set of bad files
gives the same bytes every run.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

_ORDER_STREAM = 0
_SAMPLE_STREAM = 1
_REPLACE_STREAM = 2
SAMPLERS = ("random", "random_keyframe", "uniform", "segments")
SHORT_POLICIES = ("repeat_last", "wrap", "skip")


@dataclass(frozen=True, slots=True)
class Sampling:
    """How clips are drawn from videos (`vidring serve --sampler ...`)."""

    clip_length: int
    stride: int = 1
    sampler: str = "random"
    clips_per_video: int = 1
    evaluation: bool = False  # implied by `uniform`
    short: str = "repeat_last"  # what a video shorter than a clip gives
    fps: float | None = None  # resample by timestamps instead of taking every stride-th frame

    def __post_init__(self) -> None:
        if self.short not in SHORT_POLICIES:
            raise ValueError(f"short_policy: must be one of {', '.join(SHORT_POLICIES)}, got "
                             f"{self.short!r}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler: must be one of {', '.join(SAMPLERS)}, got "
                             f"{self.sampler!r}")
        if self.fps is not None:
            if not self.fps > 0:
                raise ValueError(f"fps: must be > 0, got {self.fps!r}")
            if self.stride != 1:
                raise ValueError("fps: give --fps or --stride, not both")
            if self.sampler == "segments":
                raise ValueError("fps: segments place one frame per part, not by rate")
        if self.sampler.startswith("random") and self.evaluation:
            raise ValueError("sampler: random clips cannot evaluate; use uniform or segments")

    @property
    def evaluates(self) -> bool:
        return self.evaluation or self.sampler == "uniform"

    @property
    def frames_needed(self) -> int:
        """The frames a video needs for a whole clip without repeats."""
        if self.sampler == "segments":
            return self.clip_length
        return (self.clip_length - 1) * self.stride + 1


@dataclass(frozen=True, slots=True)
class ClipChoice:
    sample_index: int  # position in the epoch's order (over all shards)
    planned_index: int  # manifest row the plan put here
    video_index: int  # manifest row to decode (differs after a replacement)
    frames: tuple[int, ...]  # frame indices, in presentation order
    attempt: int = 0
    clip: int = 0  # which of the video's clips_per_video clips
    padding: bool = False  # fills an evaluation pipeline's last batch: weight 0

    @property
    def start_frame(self) -> int:
        return self.frames[0]


@dataclass(frozen=True, slots=True)
class Shard:
    """Part `index` of `count` of every epoch (`vidring serve --shard I --num-shards N`, one
    daemon per host): the samples at positions index, index + count, ... of the epoch order.
    Parts are disjoint and together hold every sample; in training each drops its own last
    partial batch (up to count x (B - 1) samples an epoch in all)."""

    index: int = 0
    count: int = 1


WHOLE = Shard()


def samples_in(n_videos: int, shard: Shard = WHOLE, clips_per_video: int = 1) -> int:
    return len(range(shard.index, n_videos * clips_per_video, shard.count))


def batches_per_epoch(n_videos: int, batch_size: int, shard: Shard = WHOLE,
                      sampling: Sampling | None = None) -> int:
    per_video = sampling.clips_per_video if sampling else 1
    samples = samples_in(n_videos, shard, per_video)
    if sampling is not None and sampling.evaluates:
        return -(-samples // batch_size)  # every sample, the last batch padded
    return samples // batch_size


@functools.lru_cache(maxsize=4)
def epoch_order(n_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled samples of one training epoch (cached: the server asks per batch)."""
    rng = np.random.default_rng([_ORDER_STREAM, seed, epoch])
    order = rng.permutation(n_samples)
    order.flags.writeable = False
    return order


def clip_start(n_frames: int, clip_length: int, stride: int, rng: np.random.Generator) -> int:
    valid_starts = _valid_starts(n_frames, clip_length, stride)
    if valid_starts <= 1:
        return 0
    return int(rng.integers(0, valid_starts))


def clip_frames(start: int, n_frames: int, clip_length: int, stride: int, *,
                wrap: bool = False) -> list[int]:
    """Frame indices of a clip; past the end a short video repeats its last frame, or
    starts over from its first with `wrap`."""
    if wrap:
        return [(start + t * stride) % n_frames for t in range(clip_length)]
    last = n_frames - 1
    return [min(start + t * stride, last) for t in range(clip_length)]


def segment_frames(n_frames: int, segments: int, rng: np.random.Generator | None,
                   fraction: float = 0.5) -> list[int]:
    """One frame from each of `segments` equal parts of the video: random in it, or, when
    `rng` is None, at `fraction` of it (the centre by default)."""
    bounds = np.linspace(0, n_frames, segments + 1)
    frames = []
    for lo, hi in itertools.pairwise(bounds):
        first, last = int(np.ceil(lo)), max(int(np.ceil(hi)) - 1, int(np.ceil(lo)))
        if rng is None:
            pick = first + int(fraction * (last - first + 1))
        else:
            pick = int(rng.integers(first, last + 1))
        frames.append(min(pick, last, n_frames - 1))
    return frames


def keyframe_start(n_frames: int, keyframes: np.ndarray, clip_length: int, stride: int,
                   rng: np.random.Generator) -> int:
    """A keyframe that leaves room for a whole clip after it (the first one if none does)."""
    fits = keyframes[keyframes < max(_valid_starts(n_frames, clip_length, stride), 1)]
    if len(fits) == 0:
        return 0
    return int(fits[rng.integers(0, len(fits))])


def choose(sample_index: int, planned_index: int, video_index: int, n_frames: int, *,
           seed: int, epoch: int, sampling: Sampling, attempt: int = 0,
           clip: int = 0, keyframes: np.ndarray | None = None,
           window: tuple[int, int] | None = None,
           times: np.ndarray | None = None) -> ClipChoice:
    """Where clip `clip` of video `video_index` lies, for sample `sample_index`
    (`keyframes`: the video's keyframe indices, for random_keyframe; `window`: the frames
    [first, stop) its manifest row allows; `times`: its frames' seconds, for fps)."""
    first, stop = window if window is not None else (0, n_frames)
    choice = _choose_in(sample_index, planned_index, video_index, max(stop - first, 1),
                        seed=seed, epoch=epoch, sampling=sampling, attempt=attempt, clip=clip,
                        keyframes=None if keyframes is None else keyframes - first,
                        times=None if times is None else times[first:max(stop, first + 1)])
    if not first:
        return choice
    return dataclasses.replace(choice, frames=tuple(first + f for f in choice.frames))


def _choose_in(sample_index: int, planned_index: int, video_index: int, n_frames: int, *,
               seed: int, epoch: int, sampling: Sampling, attempt: int, clip: int,
               keyframes: np.ndarray | None, times: np.ndarray | None) -> ClipChoice:
    rng = np.random.default_rng([_SAMPLE_STREAM, seed, epoch, sample_index, attempt])
    length, stride = sampling.clip_length, sampling.stride
    wrap = sampling.short == "wrap"
    if sampling.fps is not None and times is not None:
        frames = _by_time(times, sampling, clip, keyframes, rng)
    elif sampling.sampler == "segments":
        # In evaluation, clip j of N takes the frame at (j + 1) / (N + 1) of each part.
        fraction = (clip + 1) / (sampling.clips_per_video + 1)
        frames = segment_frames(n_frames, length, None if sampling.evaluates else rng, fraction)
    elif sampling.sampler == "uniform":
        valid = _valid_starts(n_frames, length, stride)
        n = sampling.clips_per_video
        start = (valid - 1) // 2 if n == 1 else round(clip * (valid - 1) / (n - 1))
        frames = clip_frames(max(start, 0), n_frames, length, stride, wrap=wrap)
    elif sampling.sampler == "random_keyframe":
        keys = np.zeros(1, dtype=np.int64) if keyframes is None else keyframes[keyframes >= 0]
        frames = clip_frames(keyframe_start(n_frames, keys, length, stride, rng), n_frames,
                             length, stride, wrap=wrap)
    else:
        frames = clip_frames(clip_start(n_frames, length, stride, rng), n_frames, length, stride,
                             wrap=wrap)
    return ClipChoice(sample_index, planned_index, video_index, tuple(frames), attempt, clip)


def _by_time(times: np.ndarray, sampling: Sampling, clip: int, keyframes: np.ndarray | None,
             rng: np.random.Generator) -> list[int]:
    """Frames presented at start + k / fps seconds (the last one at or before each time)."""
    assert sampling.fps is not None
    seconds = times - times[0]
    span_s = (sampling.clip_length - 1) / sampling.fps
    # Starts that leave a whole clip's time after them (at least the first frame).
    valid = max(int(np.searchsorted(seconds, seconds[-1] - span_s + 1e-9, side="right")), 1)
    if sampling.sampler == "uniform":
        n = sampling.clips_per_video
        start = (valid - 1) // 2 if n == 1 else round(clip * (valid - 1) / (n - 1))
    elif sampling.sampler == "random_keyframe":
        keys = np.zeros(1, np.int64) if keyframes is None else keyframes[keyframes >= 0]
        fits = keys[keys < valid]
        start = int(fits[rng.integers(0, len(fits))]) if len(fits) else 0
    else:
        start = int(rng.integers(0, valid))
    targets = seconds[start] + np.arange(sampling.clip_length) / sampling.fps
    picks = np.searchsorted(seconds, targets + 1e-9, side="right") - 1
    return [int(i) for i in np.clip(picks, 0, len(seconds) - 1)]


def plan_batch(frame_counts: np.ndarray, *, seed: int, epoch: int, batch: int, batch_size: int,
               sampling: Sampling, shard: Shard = WHOLE, rows: np.ndarray | None = None,
               keyframes: Sequence[np.ndarray] | None = None,
               windows: np.ndarray | None = None,
               times: Sequence[np.ndarray] | None = None) -> list[ClipChoice]:
    """The B clips of plan batch `batch` of `epoch` (of `shard`), before any replacement,
    drawn from manifest `rows` (default: all; fewer when short videos are skipped)."""
    rows = np.arange(len(frame_counts)) if rows is None else rows
    n = len(rows)
    if not 0 <= batch < batches_per_epoch(n, batch_size, shard, sampling):
        raise IndexError(f"plan batch {batch} out of range for {n} videos of batch {batch_size}")
    per_video = sampling.clips_per_video
    total = n * per_video
    if sampling.evaluates:
        epoch = 0  # the same clips in every epoch, in manifest order
    order = None if sampling.evaluates else epoch_order(total, seed, epoch)
    clips = []
    for position in range(batch_size):
        # The position in the whole epoch's order, so a clip's random choices are the same
        # whatever the number of shards.
        sample = shard.index + (batch * batch_size + position) * shard.count
        padding = sample >= total
        if padding:  # an evaluation batch past the last sample: repeat the shard's first
            sample = shard.index
        item = int(order[sample]) if order is not None else sample
        row, clip = divmod(item, per_video)
        video = int(rows[row])
        choice = choose(sample, video, video, int(frame_counts[video]), seed=seed, epoch=epoch,
                        sampling=sampling, clip=clip,
                        keyframes=None if keyframes is None else keyframes[video],
                        window=None if windows is None else (int(windows[video][0]),
                                                             int(windows[video][1])),
                        times=None if times is None else times[video])
        clips.append(dataclasses.replace(choice, padding=padding))
    return clips


def replacement(n_videos: int, *, seed: int, epoch: int, sample_index: int, attempt: int) -> int:
    """The manifest row standing in for a failed sample on its `attempt`-th retry."""
    rng = np.random.default_rng([_REPLACE_STREAM, seed, epoch, sample_index, attempt])
    return int(rng.integers(0, n_videos))


def _valid_starts(n_frames: int, clip_length: int, stride: int) -> int:
    return n_frames - ((clip_length - 1) * stride + 1) + 1
