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
        FRAMES, seed=seed, epoch=epoch, batch=b, batch_size=batch_size,
        sampling=sampler.Sampling(8, 2))]


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
        sampler.plan_batch(FRAMES, seed=0, epoch=0, batch=3, batch_size=3,
                           sampling=sampler.Sampling(4))


@settings(max_examples=200, deadline=None)
@given(n_frames=st.integers(1, 500), clip_length=st.integers(1, 40), stride=st.integers(1, 5),
       seed=st.integers(0, 2**31), sample=st.integers(0, 10**6))
def test_clip_stays_inside_the_video(n_frames: int, clip_length: int, stride: int, seed: int,
                                     sample: int) -> None:
    choice = sampler.choose(sample, 0, 0, n_frames, seed=seed, epoch=0,
                            sampling=sampler.Sampling(clip_length, stride))
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
        frames, seed=5, epoch=epoch, batch=b, batch_size=batch_size,
        sampling=sampler.Sampling(4), shard=shard)]


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


def _plan(frames: np.ndarray, sampling: sampler.Sampling, batch_size: int,
          epoch: int = 0) -> list[sampler.ClipChoice]:
    n = sampler.batches_per_epoch(len(frames), batch_size, sampler.WHOLE, sampling)
    return [c for b in range(n) for c in sampler.plan_batch(
        frames, seed=3, epoch=epoch, batch=b, batch_size=batch_size, sampling=sampling)]


def test_random_clips_per_video_serves_each_video_n_times_an_epoch() -> None:
    frames = np.full(6, 50, dtype=np.int64)
    plan = _plan(frames, sampler.Sampling(4, clips_per_video=3), batch_size=3)
    assert sorted(c.video_index for c in plan) == sorted(list(range(6)) * 3)
    starts = {(c.video_index, c.clip): c.start_frame for c in plan}
    assert len(set(starts.values())) > 6  # the clips of a video lie at different places


def test_uniform_is_the_same_every_epoch_in_manifest_order_and_padded() -> None:
    frames = np.array([40, 10, 25], dtype=np.int64)
    sampling = sampler.Sampling(4, stride=2, sampler="uniform", clips_per_video=2)
    plan = _plan(frames, sampling, batch_size=4)
    assert plan == _plan(frames, sampling, batch_size=4, epoch=7)
    real = [c for c in plan if not c.padding]
    assert [(c.video_index, c.clip) for c in real] == [(v, j) for v in range(3) for j in (0, 1)]
    assert len(plan) == 8  # 6 clips, the last batch padded with 2
    assert [c.padding for c in plan].count(True) == 2
    # Two clips of a 40-frame video with a 7-frame span: at its first and last valid start.
    assert [c.frames for c in real[:2]] == [(0, 2, 4, 6), (33, 35, 37, 39)]


def test_segments_take_one_frame_from_each_part_centred_in_evaluation() -> None:
    frames = np.full(4, 100, dtype=np.int64)
    train = _plan(frames, sampler.Sampling(4, sampler="segments"), batch_size=2)
    for clip in train:
        for t, f in enumerate(clip.frames):
            assert 25 * t <= f < 25 * (t + 1)
    other = _plan(frames, sampler.Sampling(4, sampler="segments"), batch_size=2, epoch=1)
    assert {c.frames for c in train} != {c.frames for c in other}
    evaluation = _plan(frames, sampler.Sampling(4, sampler="segments", evaluation=True), 2)
    assert {c.frames for c in evaluation} == {(12, 37, 62, 87)}


def test_a_short_video_repeats_its_last_frame_in_every_sampler() -> None:
    for name in sampler.SAMPLERS:
        clip = sampler.choose(0, 0, 0, 3, seed=0, epoch=0,
                              sampling=sampler.Sampling(6, sampler=name))
        assert len(clip.frames) == 6
        assert all(0 <= f < 3 for f in clip.frames)
        assert list(clip.frames) == sorted(clip.frames)


def test_random_clips_cannot_evaluate() -> None:
    with pytest.raises(ValueError, match="use uniform or segments"):
        sampler.Sampling(4, evaluation=True)
    with pytest.raises(ValueError, match="sampler: must be one of"):
        sampler.Sampling(4, sampler="dense")


def test_wrap_starts_a_short_clip_over_and_rows_limit_the_plan() -> None:
    assert sampler.clip_frames(0, 3, 6, 1, wrap=True) == [0, 1, 2, 0, 1, 2]
    frames = np.array([40, 3, 40, 40, 40], dtype=np.int64)
    rows = np.array([0, 2, 3, 4])  # row 1 left out (--short-policy skip)
    plan = [c for b in range(2) for c in sampler.plan_batch(
        frames, seed=1, epoch=0, batch=b, batch_size=2, sampling=sampler.Sampling(8),
        rows=rows)]
    assert sorted(c.video_index for c in plan) == [0, 2, 3, 4]


def test_segments_evaluation_spreads_several_clips_within_each_part() -> None:
    frames = np.full(2, 100, dtype=np.int64)
    sampling = sampler.Sampling(4, sampler="segments", clips_per_video=3, evaluation=True)
    plan = [c for c in _plan(frames, sampling, batch_size=3) if c.video_index == 0]
    assert [c.frames for c in plan] == [(6, 31, 56, 81), (12, 37, 62, 87), (18, 43, 68, 93)]


def test_random_keyframe_starts_at_keyframes_that_leave_room_for_a_clip() -> None:
    frames = np.full(5, 100, dtype=np.int64)
    keyframes = [np.array([0, 30, 60, 90])] * 5  # 90 leaves no room for 16 frames
    sampling = sampler.Sampling(16, sampler="random_keyframe")
    starts = set()
    for epoch in range(6):
        for b in range(5):
            for clip in sampler.plan_batch(frames, seed=2, epoch=epoch, batch=b, batch_size=1,
                                           sampling=sampling, keyframes=keyframes):
                starts.add(clip.start_frame)
                assert clip.frames == tuple(range(clip.start_frame, clip.start_frame + 16))
    assert starts == {0, 30, 60}


def test_fps_picks_frames_by_time_and_refuses_stride_or_segments() -> None:
    seconds = np.arange(60) / 30  # 30 fps
    clip = sampler.choose(0, 0, 0, 60, seed=0, epoch=0, times=seconds,
                          sampling=sampler.Sampling(4, sampler="uniform", fps=10.0))
    assert np.diff(clip.frames).tolist() == [3, 3, 3]  # 0.1 s apart at 30 fps
    with pytest.raises(ValueError, match="not both"):
        sampler.Sampling(4, stride=2, fps=10.0)
    with pytest.raises(ValueError, match="not by rate"):
        sampler.Sampling(4, sampler="segments", fps=10.0)
