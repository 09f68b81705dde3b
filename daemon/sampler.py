"""The epoch plan: which clip of which video goes where.  Pure functions only.

Batch k of epoch e is a function of (number of videos, frame counts, seed,
epoch, k, sampler settings) and nothing else: not the worker count, not
timing, not crashes.  Every random choice comes from a generator seeded by
(seed, epoch, sample index, attempt).

Sampling (issue 3): one clip per video per epoch, random start uniform over
the valid starts, video order shuffled per epoch.  An epoch has
floor(videos / B) full batches; the few videos left over sit that epoch out
(``drop_last`` with shuffling).  A video shorter than a clip repeats its
last frame.  A video that fails is replaced by ``replacement()``, which is
deterministic too, so a fixed set of bad files gives the same bytes every run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

_ORDER_STREAM = 0
_SAMPLE_STREAM = 1
_REPLACE_STREAM = 2


@dataclass(frozen=True, slots=True)
class ClipChoice:
    sample_index: int  # position in the epoch: batch * B + position
    planned_index: int  # manifest row the plan put here
    video_index: int  # manifest row to decode (differs after a replacement)
    start_frame: int
    attempt: int = 0


@dataclass(frozen=True, slots=True)
class Shard:
    """Part `index` of `count` of every epoch (`vidring serve --shard I --num-shards N`, one
    daemon per host): the samples at positions index, index + count, ... of the epoch order.
    Parts are disjoint and cover the epoch; each drops its own last partial batch."""

    index: int = 0
    count: int = 1


WHOLE = Shard()


def samples_in(n_videos: int, shard: Shard = WHOLE) -> int:
    return len(range(shard.index, n_videos, shard.count))


def batches_per_epoch(n_videos: int, batch_size: int, shard: Shard = WHOLE) -> int:
    return samples_in(n_videos, shard) // batch_size


@functools.lru_cache(maxsize=4)
def epoch_order(n_videos: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled manifest rows of one epoch (cached: the server asks per batch)."""
    rng = np.random.default_rng([_ORDER_STREAM, seed, epoch])
    order = rng.permutation(n_videos)
    order.flags.writeable = False
    return order


def clip_start(n_frames: int, clip_length: int, stride: int, rng: np.random.Generator) -> int:
    span = (clip_length - 1) * stride + 1
    valid_starts = n_frames - span + 1
    if valid_starts <= 1:
        return 0
    return int(rng.integers(0, valid_starts))


def clip_frames(start: int, n_frames: int, clip_length: int, stride: int) -> list[int]:
    """Frame indices of a clip; past the end a short video repeats its last frame."""
    last = n_frames - 1
    return [min(start + t * stride, last) for t in range(clip_length)]


def choose(sample_index: int, planned_index: int, video_index: int, n_frames: int, *,
           seed: int, epoch: int, clip_length: int, stride: int, attempt: int = 0) -> ClipChoice:
    rng = np.random.default_rng([_SAMPLE_STREAM, seed, epoch, sample_index, attempt])
    start = clip_start(n_frames, clip_length, stride, rng)
    return ClipChoice(sample_index, planned_index, video_index, start, attempt)


def plan_batch(frame_counts: np.ndarray, *, seed: int, epoch: int, batch: int, batch_size: int,
               clip_length: int, stride: int, shard: Shard = WHOLE) -> list[ClipChoice]:
    """The B clips of plan batch `batch` of `epoch` (of `shard`), before any replacement."""
    n = len(frame_counts)
    if not 0 <= batch < batches_per_epoch(n, batch_size, shard):
        raise IndexError(f"plan batch {batch} out of range for {n} videos of batch {batch_size}")
    order = epoch_order(n, seed, epoch)
    clips = []
    for position in range(batch_size):
        # The position in the whole epoch's order, so a clip's random choices are the same
        # whatever the number of shards.
        sample = shard.index + (batch * batch_size + position) * shard.count
        video = int(order[sample])
        clips.append(choose(sample, video, video, int(frame_counts[video]), seed=seed,
                            epoch=epoch, clip_length=clip_length, stride=stride))
    return clips


def replacement(n_videos: int, *, seed: int, epoch: int, sample_index: int, attempt: int) -> int:
    """The manifest row standing in for a failed sample on its `attempt`-th retry."""
    rng = np.random.default_rng([_REPLACE_STREAM, seed, epoch, sample_index, attempt])
    return int(rng.integers(0, n_videos))
