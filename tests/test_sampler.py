"""The epoch plan is a pure function of its inputs."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vidring.daemon import sampler

FRAMES = np.array([30, 3, 100, 16, 17, 50, 8, 64, 20, 21], dtype=np.int64)


def _epoch(seed: int, epoch: int, batch_size: int = 3) -> list[sampler.ClipChoice]:
    n = sampler.batches_per_epoch(len(FRAMES), batch_size)
    return [c for b in range(n) for c in sampler.plan_batch(
        FRAMES, seed=seed, epoch=epoch, batch=b, batch_size=batch_size, clip_length=8, stride=2)]


def test_same_inputs_same_plan_and_each_video_at_most_once() -> None:
    a, b = _epoch(1, 0), _epoch(1, 0)
    assert a == b
    videos = [c.video_index for c in a]
    assert len(videos) == 9
    assert len(set(videos)) == 9


def test_epochs_and_seeds_differ() -> None:
    assert _epoch(1, 0) != _epoch(1, 1)
    assert _epoch(1, 0) != _epoch(2, 0)


def test_batch_out_of_range() -> None:
    with pytest.raises(IndexError):
        sampler.plan_batch(FRAMES, seed=0, epoch=0, batch=3, batch_size=3, clip_length=4,
                           stride=1)


@settings(max_examples=200, deadline=None)
@given(n_frames=st.integers(1, 500), clip_length=st.integers(1, 40), stride=st.integers(1, 5),
       seed=st.integers(0, 2**31), sample=st.integers(0, 10**6))
def test_clip_stays_inside_the_video(n_frames: int, clip_length: int, stride: int, seed: int,
                                     sample: int) -> None:
    choice = sampler.choose(sample, 0, 0, n_frames, seed=seed, epoch=0, clip_length=clip_length,
                            stride=stride)
    frames = sampler.clip_frames(choice.start_frame, n_frames, clip_length, stride)
    assert len(frames) == clip_length
    assert all(0 <= f < n_frames for f in frames)
    assert frames == sorted(frames)
    span = (clip_length - 1) * stride + 1
    if n_frames >= span:  # long enough: a true clip at the stride, no repeats
        assert frames == list(range(choice.start_frame, choice.start_frame + span, stride))


def test_short_video_repeats_last_frame() -> None:
    assert sampler.clip_frames(0, 3, 6, 1) == [0, 1, 2, 2, 2, 2]


def test_replacement_is_deterministic() -> None:
    a = [sampler.replacement(50, seed=3, epoch=1, sample_index=7, attempt=k) for k in range(5)]
    b = [sampler.replacement(50, seed=3, epoch=1, sample_index=7, attempt=k) for k in range(5)]
    assert a == b
    assert all(0 <= v < 50 for v in a)


def _shard_epoch(n: int, batch_size: int, shard: sampler.Shard,
                 epoch: int = 0) -> list[sampler.ClipChoice]:
    frames = np.full(n, 40, dtype=np.int64)
    batches = sampler.batches_per_epoch(n, batch_size, shard)
    return [c for b in range(batches) for c in sampler.plan_batch(
        frames, seed=5, epoch=epoch, batch=b, batch_size=batch_size, clip_length=4, stride=1,
        shard=shard)]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 60), batch_size=st.integers(1, 6), count=st.integers(1, 5),
       epoch=st.integers(0, 3))
def test_shards_are_disjoint_and_cover_the_epoch(n: int, batch_size: int, count: int,
                                                 epoch: int) -> None:
    whole = {c.sample_index: c for c in _shard_epoch(n, 1, sampler.WHOLE, epoch)}
    seen: list[int] = []
    for index in range(count):
        part = _shard_epoch(n, batch_size, sampler.Shard(index, count), epoch)
        in_part = sampler.samples_in(n, sampler.Shard(index, count))
        assert len(part) == in_part - in_part % batch_size  # only its last partial batch drops
        for clip in part:
            assert clip == whole[clip.sample_index]  # the same clip as in an unsharded plan
        seen += [c.video_index for c in part]
    assert len(seen) == len(set(seen))  # disjoint
    dropped = sum(sampler.samples_in(n, sampler.Shard(i, count)) % batch_size
                  for i in range(count))
    assert len(seen) == n - dropped  # covering, but for each part's partial batch
