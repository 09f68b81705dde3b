"""The decode path is exact: seek, NONREF pre-roll and one swscale call per kept frame
equal a full sequential decode."""

from __future__ import annotations

import json
import os
import shutil
import stat
from typing import TYPE_CHECKING

import numpy as np
import pytest

from tests.support import reference_decode
from vidring.daemon import probe as probe_module
from vidring.daemon import sampler
from vidring.daemon.decode import ClipDecoder, DecodeError
from vidring.daemon.probe import ProbeCache, ProbeError, probe

if TYPE_CHECKING:
    from pathlib import Path

H, W = 24, 32


@pytest.fixture(scope="module")
def video(video_dir: Path) -> Path:
    return video_dir / "v12.mp4"  # 32 frames, keyframes at 0, 10, 20, 30


def _decode(decoder: ClipDecoder, path: Path, frames: list[int]) -> np.ndarray:
    info = probe(path)
    out = np.zeros((len(frames), H, W, 3), np.uint8)
    decoder.decode_into(str(path), *info.seek_target(frames[0]),
                        [int(info.frame_pts[f]) for f in frames], out)
    return out


def test_probe_reads_frames_and_keyframes(video: Path) -> None:
    info = probe(video)
    assert info.frames == 32
    assert info.keyframe_indices.tolist() == [0, 10, 20, 30]
    assert (info.width, info.height) == (64, 48)
    assert info.keyframe_before(19) == 10
    assert info.keyframe_before(20) == 20


@pytest.mark.parametrize("start", [0, 3, 8, 9, 10, 11, 19, 26])
def test_clip_equals_sequential_decode(video: Path, start: int) -> None:
    reference = reference_decode(video, H, W)
    frames = sampler.clip_frames(start, len(reference), 6, 1)
    decoder = ClipDecoder(H, W)
    np.testing.assert_array_equal(_decode(decoder, video, frames), reference[frames])
    decoder.close()


def test_many_clips_through_one_decoder_with_stride_and_repeats(video: Path,
                                                                video_dir: Path) -> None:
    decoder = ClipDecoder(H, W)
    short = video_dir / "v05.mp4"  # 3 frames: the last repeats
    refs = {p: reference_decode(p, H, W) for p in (video, short)}
    for path, start, stride in [(video, 25, 1), (video, 2, 3), (short, 0, 1), (video, 9, 2)]:
        frames = sampler.clip_frames(start, len(refs[path]), 6, stride)
        np.testing.assert_array_equal(_decode(decoder, path, frames), refs[path][frames])
    decoder.close()


def test_float32_is_uint8_over_255(video: Path) -> None:
    info = probe(video)
    decoder = ClipDecoder(H, W)
    frames = [12, 13, 14]
    pts = [int(info.frame_pts[f]) for f in frames]
    out = np.zeros((3, H, W, 3), np.float32)
    decoder.decode_into(str(video), *info.seek_target(12), pts, out)
    reference = reference_decode(video, H, W)[frames]
    np.testing.assert_allclose(out, reference / 255.0, atol=1e-6)
    assert out.min() >= 0.0
    assert out.max() <= 1.0


def test_unreadable_file_is_a_decode_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01garbage" * 100)
    with pytest.raises(DecodeError, match=r"bad\.mp4"):
        ClipDecoder(H, W).decode_into(str(bad), 0, 0, [0], np.zeros((1, H, W, 3), np.uint8))
    with pytest.raises(ProbeError, match=r"bad\.mp4"):
        probe(bad)


def test_missing_frames_are_an_error_not_a_short_clip(video: Path) -> None:
    out = np.zeros((2, H, W, 3), np.uint8)
    info = probe(video)
    with pytest.raises(DecodeError, match="1 of 2 clip frames never decoded"):
        ClipDecoder(H, W).decode_into(str(video), *info.seek_target(0), [0, 10**9], out)


def test_probe_cache_reuses_and_invalidates(tmp_path: Path, video: Path) -> None:
    copy = tmp_path / "copy.mp4"
    shutil.copy(video, copy)
    cache = ProbeCache(tmp_path / "cache")
    a = cache.get(copy)
    b = cache.get(copy)
    assert a.frame_pts.tolist() == b.frame_pts.tolist()
    assert len(list((tmp_path / "cache").iterdir())) == 1
    st = copy.stat()
    os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed file is re-probed
    cache.get(copy)
    assert len(list((tmp_path / "cache").iterdir())) == 2


def test_another_ffmpeg_probes_again(tmp_path: Path, video: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    cache = ProbeCache(tmp_path / "cache")
    cache.get(video)
    monkeypatch.setattr(probe_module, "_FFMPEG", "(63, 0, 100)(63, 0, 100)")  # an upgrade
    cache.get(video)
    assert len(list((tmp_path / "cache").iterdir())) == 2


@pytest.mark.parametrize("tamper", ["world-writable", "foreign", "inconsistent", "not JSON"])
def test_a_cache_entry_that_cannot_be_trusted_is_probed_again(tmp_path: Path, video: Path,
                                                               tamper: str) -> None:
    if tamper == "foreign" and os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    cache = ProbeCache(tmp_path / "cache")
    truth = cache.get(video)
    (entry,) = (tmp_path / "cache").iterdir()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "cache").stat().st_mode) == 0o700
    data = json.loads(entry.read_text())
    data["pts"] = list(range(len(data["pts"])))  # timestamps the daemon would seek to
    if tamper == "inconsistent":
        data["keys"] = [5, 1]
    entry.write_text("{" if tamper == "not JSON" else json.dumps(data))
    if tamper == "world-writable":
        entry.chmod(0o666)
    elif tamper == "foreign":
        os.chown(entry, 65534, 65534)
    again = ProbeCache(tmp_path / "cache").get(video)
    assert again.frame_pts.tolist() == truth.frame_pts.tolist()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert entry.stat().st_uid == os.getuid()


def test_probe_many_in_processes_matches_probe(tmp_path: Path, video_dir: Path) -> None:
    paths: list[str | Path] = []
    for copy in range(2):
        for src in sorted(video_dir.glob("v*.mp4")):
            dst = tmp_path / f"{copy}-{src.name}"
            shutil.copy(src, dst)
            paths.append(dst)
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 50)
    paths += [tmp_path / "bad.mp4", tmp_path / "gone.mp4"]
    cache = ProbeCache(tmp_path / "cache")
    results = cache.get_many(paths, processes=2)  # 34 uncached: probed in 2 processes
    for path, result in zip(paths[:-2], results[:-2], strict=True):
        assert not isinstance(result, str), result
        assert result.frame_pts.tolist() == probe(path).frame_pts.tolist()
    assert results[-2].startswith("cannot read video (InvalidDataError")
    assert "No such file" in results[-1]
    assert len(list((tmp_path / "cache").iterdir())) == 32  # failures are not cached


def test_several_clips_decode_in_one_pass_into_their_own_places(video_dir: Path) -> None:
    path = video_dir / "v12.mp4"
    info = probe(path)
    reference = reference_decode(path, H, W)
    clips = [[2, 3, 4], [3, 4, 5, 5], [9, 10, info.frames - 1]]  # overlapping, repeated
    outs = [np.zeros((len(c), H, W, 3), np.uint8) for c in clips]
    frame_pts = [int(info.frame_pts[f]) for c in clips for f in c]
    key_pts, key_dts = info.seek_target(2)
    decoder = ClipDecoder(H, W)
    try:
        decoder.decode_frames(str(path), key_pts, key_dts, frame_pts,
                              [frame for out in outs for frame in out])
    finally:
        decoder.close()
    for clip, out in zip(clips, outs, strict=True):
        np.testing.assert_array_equal(out, reference[clip])
