"""Samplers end to end: each clip is the frames the plan names, byte-exact; evaluation
pipelines give Keras exactly the metrics of their real clips."""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.support import CLIP, N_VIDEOS, SIZE, Daemons, epoch_bytes, reference_decode, video_frames
from vidring.daemon import sampler
from vidring.daemon.probe import probe
from vidring.loader import ClipDataset

if TYPE_CHECKING:
    from pathlib import Path

SAMPLINGS = {
    "random-stride2-x2": (["--sampler", "random", "--stride", "2", "--clips-per-video", "2"],
                          sampler.Sampling(CLIP, 2, "random", 2)),
    "uniform-x2": (["--sampler", "uniform", "--clips-per-video", "2"],
                   sampler.Sampling(CLIP, 1, "uniform", 2)),
    "segments": (["--sampler", "segments"], sampler.Sampling(CLIP, 1, "segments")),
    "segments-eval": (["--sampler", "segments", "--evaluation"],
                      sampler.Sampling(CLIP, 1, "segments", evaluation=True)),
    "random_keyframe-stride2": (["--sampler", "random_keyframe", "--stride", "2"],
                                sampler.Sampling(CLIP, 2, "random_keyframe")),
    "uniform-stride2": (["--sampler", "uniform", "--stride", "2"],
                        sampler.Sampling(CLIP, 2, "uniform")),
    # Video 5 has 3 frames, fewer than a clip: its clips start over instead of repeating.
    "random-wrap": (["--short-policy", "wrap"], sampler.Sampling(CLIP, short="wrap")),
}


@pytest.mark.parametrize("kind", list(SAMPLINGS))
def test_every_clip_is_the_planned_frames_byte_exact(kind: str, daemons: Daemons,
                                                     manifest: Path, video_dir: Path) -> None:
    args, sampling = SAMPLINGS[kind]
    name = daemons.start(manifest, batch_size=4, workers=2, slots=3, seed=11, extra=args)
    paths = [video_dir / f"v{i:02d}.mp4" for i in range(N_VIDEOS)]
    infos = [probe(p) for p in paths]
    frame_counts = np.array([info.frames for info in infos], dtype=np.int64)
    keyframes = [info.keyframe_indices for info in infos]
    refs = {i: reference_decode(p, *SIZE) for i, p in enumerate(paths)}
    with ClipDataset(name) as ds:
        assert ds.info.status.sampler == sampling.sampler
        for epoch in range(2):
            served = []
            for i in range(len(ds)):
                b = ds.batch(i)
                plan = sampler.plan_batch(frame_counts, seed=11, epoch=b.epoch,
                                          batch=b.plan_batch, batch_size=4, sampling=sampling,
                                          keyframes=keyframes)
                for pos, clip in enumerate(plan):
                    prov = b.provenance[pos]
                    assert int(prov["video_index"]) == clip.video_index
                    assert bool(prov["padding"]) == clip.padding
                    np.testing.assert_array_equal(
                        b.x[pos], refs[clip.video_index][list(clip.frames)],
                        err_msg=f"{kind}: video {clip.video_index} frames {clip.frames}")
                    if not clip.padding:
                        served.append(clip.video_index)
            per_video = sampling.clips_per_video
            if sampling.evaluates:  # every clip of every video, every epoch
                assert sorted(served) == sorted(list(range(N_VIDEOS)) * per_video)
            else:  # whole batches, no video more often than its clips
                assert len(served) == len(ds) * 4
                assert max(served.count(v) for v in set(served)) <= per_video
            ds.set_epoch(epoch + 1)


@pytest.mark.parametrize("kind", list(SAMPLINGS))
def test_the_same_bytes_with_one_or_three_workers(kind: str, daemons: Daemons,
                                                  manifest: Path) -> None:
    args, _ = SAMPLINGS[kind]
    one = daemons.start(manifest, batch_size=4, workers=1, slots=2, seed=5, extra=args)
    three = daemons.start(manifest, batch_size=4, workers=3, slots=4, seed=5, extra=args)
    with ClipDataset(one) as a, ClipDataset(three) as b:
        assert epoch_bytes(a) + epoch_bytes(a) == epoch_bytes(b) + epoch_bytes(b)


@pytest.mark.slow
def test_evaluate_with_padding_equals_the_metric_of_the_real_clips(
        daemons: Daemons, video_dir: Path, tmp_path: Path) -> None:
    import keras

    rows = [f"{video_dir / f'v{i:02d}.mp4'},{i % 3}" for i in range(10)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    name = daemons.start(tmp_path / "m.csv", batch_size=4, workers=2, slots=3,
                         dtype="float32", extra=["--sampler", "uniform"])
    model = keras.Sequential([keras.Input((CLIP, *SIZE, 3)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    # Weighted metrics are means over the real clips; Keras's loss divides by batch size.
    model.compile("sgd", "sparse_categorical_crossentropy",
                  weighted_metrics=["accuracy", keras.metrics.SparseCategoricalCrossentropy()])
    with ClipDataset(name) as ds:
        assert len(ds) == 3  # 10 clips: the last batch holds 2 and 2 of padding
        first = model.evaluate(ds, verbose=0)
        second = model.evaluate(ds, verbose=0)
        xs, ys = [], []
        for i in range(len(ds)):
            x, y, w = ds[i]
            assert w.tolist() == ([1.0] * 4 if i < 2 else [1.0, 1.0, 0.0, 0.0])
            xs.append(np.array(x[w > 0]))
            ys.append(np.array(y[w > 0]))
        direct = model.evaluate(np.concatenate(xs), np.concatenate(ys), batch_size=16,
                                verbose=0)
    assert first == second
    assert first[1:] == pytest.approx(direct[1:], rel=1e-5)  # accuracy, cross-entropy


def test_short_videos_can_be_left_out_and_are_reported(daemons: Daemons,
                                                       manifest: Path) -> None:
    name = daemons.start(manifest, batch_size=4, workers=2, slots=3,
                         extra=["--short-policy", "skip"])
    with ClipDataset(name) as ds:
        assert len(ds) == (N_VIDEOS - 1) // 4  # video 5 (3 frames) is out of every plan
        for _ in range(2):
            videos = [int(v) for _, _, prov in _batches(ds) for v in prov["video_index"]]
            assert 5 not in videos
            assert len(videos) == len(set(videos))
        st = ds.status()
    assert st.errors.quarantined == 1
    assert st.errors.last is not None
    assert "shorter than a clip (3 frames, 6 needed)" in st.errors.last.reason
    assert st.errors.replaced_samples == 0  # left out, not stood in for


def _batches(ds: ClipDataset) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    out = [(b.x, b.y, b.provenance) for b in (ds.batch(i) for i in range(len(ds)))]
    ds.set_epoch(ds.epoch + 1)
    return out


def test_start_and_end_bound_every_clip_to_its_segment(daemons: Daemons, video_dir: Path,
                                                       tmp_path: Path) -> None:
    # The test videos run at 30 fps: [0.2 s, 0.6 s) is frames 6..17 of each.
    files = [i for i in range(N_VIDEOS) if i != 5] + [5]  # manifest row -> test video
    rows = [f"{video_dir / f'v{i:02d}.mp4'},{i},0.2,0.6" for i in files[:-1]]
    rows.append(f"{video_dir / 'v05.mp4'},5,2.0,3.0")  # 3 frames long: nothing lies there
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    name = daemons.start(tmp_path / "m.csv", batch_size=3, workers=2, slots=3, seed=4)
    refs = {row: reference_decode(video_dir / f"v{i:02d}.mp4", *SIZE)
            for row, i in enumerate(files)}
    with ClipDataset(name) as ds:
        starts = set()
        for _ in range(3):
            videos = []
            for i in range(len(ds)):
                b = ds.batch(i)
                for pos, prov in enumerate(b.provenance):
                    video, start = int(prov["video_index"]), int(prov["frames"][0])
                    assert 6 <= start <= 18 - CLIP, f"video {video} starts at {start}"
                    np.testing.assert_array_equal(b.x[pos], refs[video][start:start + CLIP])
                    videos.append(video)
                    starts.add(start)
            assert len(files) - 1 not in videos  # the row whose segment holds no frame
            assert len(videos) == len(set(videos)) == len(ds) * 3
            ds.set_epoch(ds.epoch + 1)
        assert len(starts) > 1  # random within the segment, not pinned to its start
        st = ds.status()
    assert st.errors.quarantined == 1
    assert st.errors.last is not None
    assert "no frame of the video lies there" in st.errors.last.reason


def _write_timed(path: Path, frames: np.ndarray, times_ms: list[int]) -> None:
    """Encode frames at exactly these presentation times (constant or variable rate)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)
        stream.options = {"preset": "veryfast",
                          "x264-params": "keyint=10:min-keyint=10:scenecut=0:bframes=2"}
        for frame, ms in zip(frames, times_ms, strict=True):
            picture = av.VideoFrame.from_ndarray(frame, format="rgb24")
            picture.pts, picture.time_base = ms, Fraction(1, 1000)
            container.mux(stream.encode(picture))
        container.mux(stream.encode())


@pytest.mark.parametrize("kind", ["random", "random_keyframe", "uniform"])
def test_fps_takes_frames_by_timestamp_at_24_30_and_variable_rates(
        kind: str, daemons: Daemons, tmp_path: Path) -> None:
    vfr_ms = list(np.cumsum([0] + [20 if i % 3 else 70 for i in range(1, 45)]))
    timings = {"24fps": [round(i * 1000 / 24) for i in range(48)],
               "30fps": [round(i * 1000 / 30) for i in range(60)], "vfr": vfr_ms}
    paths = []
    for k, (rate, times_ms) in enumerate(timings.items()):
        path = tmp_path / f"{rate}.mp4"
        _write_timed(path, video_frames(k, len(times_ms)), [int(t) for t in times_ms])
        paths.append(path)
    rows = [f"{p},{i % 3}" for i, p in enumerate(paths * 2)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    name = daemons.start(tmp_path / "m.csv", batch_size=3, workers=2, slots=3, seed=2,
                         clip_length=4, extra=["--fps", "6", "--sampler", kind])  # 0.5 s
    infos = [probe(p) for p in paths * 2]
    refs = [reference_decode(p, *SIZE) for p in paths * 2]
    sampling = sampler.Sampling(4, sampler=kind, fps=6.0)
    with ClipDataset(name) as ds:
        for _ in range(3):
            for i in range(len(ds)):
                b = ds.batch(i)
                plan = sampler.plan_batch(
                    np.array([info.frames for info in infos]), seed=2, epoch=b.epoch,
                    batch=b.plan_batch, batch_size=3, sampling=sampling,
                    times=[info.seconds() for info in infos],
                    keyframes=[info.keyframe_indices for info in infos])
                for pos, clip in enumerate(plan):
                    # Frame k is the last one presented at or before start + k / 6 s.
                    seconds = infos[clip.video_index].seconds()
                    start = seconds[clip.frames[0]]
                    for k, f in enumerate(clip.frames):
                        target = start + k / 6
                        assert seconds[f] <= target + 1e-6
                        assert f + 1 == len(seconds) or seconds[f + 1] > target + 1e-6
                    np.testing.assert_array_equal(
                        b.x[pos], refs[clip.video_index][list(clip.frames)])
            ds.set_epoch(ds.epoch + 1)


def test_clips_of_one_video_decoded_in_one_pass_are_exact(daemons: Daemons,
                                                          tmp_path: Path) -> None:
    from vidring.daemon.demo import write_video

    # One GOP a video: its three clips of a batch decode from the same keyframe, in one pass.
    paths = []
    for i in range(4):
        path = tmp_path / f"g{i}.mp4"
        write_video(path, video_frames(20 + i, 40), gop=64)
        paths.append(path)
    (tmp_path / "m.csv").write_text("".join(f"{p},{i}\n" for i, p in enumerate(paths)))
    name = daemons.start(tmp_path / "m.csv", batch_size=3, workers=2, slots=2,
                         extra=["--sampler", "uniform", "--clips-per-video", "3"])
    infos = [probe(p) for p in paths]
    refs = [reference_decode(p, *SIZE) for p in paths]
    sampling = sampler.Sampling(CLIP, sampler="uniform", clips_per_video=3)
    with ClipDataset(name) as ds:
        for i in range(len(ds)):
            b = ds.batch(i)
            plan = sampler.plan_batch(np.array([info.frames for info in infos]), seed=0,
                                      epoch=0, batch=b.plan_batch, batch_size=3,
                                      sampling=sampling)
            assert len({c.video_index for c in plan}) == 1  # one video's three clips
            for pos, clip in enumerate(plan):
                np.testing.assert_array_equal(b.x[pos], refs[clip.video_index][list(clip.frames)])
