"""Exact clips across codecs and containers: B-frame pyramids, open GOPs, MPEG-TS's
approximate seeking, and decoders that read skip_frame only when they open (AV1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import av
import numpy as np
import pytest

from tests.support import reference_decode
from vidring.daemon import sampler
from vidring.daemon.decode import ClipDecoder
from vidring.daemon.probe import probe

if TYPE_CHECKING:
    from pathlib import Path

H, W = 16, 24
N_FRAMES = 75
X264 = "keyint=25:min-keyint=25:scenecut=0"

FORMATS = {
    # name: (file name, codec, codec options, container format, frame size)
    "h264-mp4": ("a.mp4", "libx264", {"bf": "3", "x264-params": X264}, None, (48, 64)),
    "h264-open-gop": ("b.mp4", "libx264", {"bf": "3", "x264-params": X264 + ":open-gop=1"},
                      None, (48, 64)),
    "h264-pyramid-mkv": ("c.mkv", "libx264", {"bf": "3", "x264-params": X264 + ":b-pyramid=2"},
                         None, (48, 64)),
    "h264-mpegts": ("d.ts", "libx264", {"bf": "3", "x264-params": X264}, "mpegts", (48, 64)),
    "hevc-mp4": ("e.mp4", "libx265", {"x265-params": "keyint=25:min-keyint=25:scenecut=0:"
                                                     "bframes=3:log-level=none"}, None, (48, 64)),
    "vp9-webm": ("f.webm", "libvpx-vp9", {"lag-in-frames": "16", "auto-alt-ref": "1"}, None,
                 (48, 64)),
    "mpeg4-avi": ("g.avi", "mpeg4", {"bf": "2"}, None, (48, 64)),
    "mpeg4-mp4": ("j.mp4", "mpeg4", {"bf": "2"}, None, (48, 64)),
    "mpeg2-ps": ("h.mpg", "mpeg2video", {"bf": "2"}, "mpeg", (48, 64)),
    "av1-mp4": ("i.mp4", "libsvtav1", {"svtav1-params": "keyint=25"}, None, (64, 64)),
    # An empty moov, then fragments: what live encoders and DASH write.
    "h264-fragmented-mp4": ("l.mp4", "libx264", {"bf": "3", "x264-params": X264}, "fmp4",
                            (48, 64)),
}


def _encode(path: Path, codec: str, options: dict[str, str], fmt: str | None,
            size: tuple[int, int]) -> None:
    height, width = size
    rng = np.random.default_rng(1)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    fragmented = fmt == "fmp4"
    with av.open(str(path), "w", format="mp4" if fragmented else fmt,
                 options={"movflags": "frag_keyframe+empty_moov"} if fragmented else {}
                 ) as container:
        stream = container.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = 25
        stream.codec_context.options = options
        for i in range(N_FRAMES):
            img = np.roll(base, 2 * i, axis=1)
            img[(3 * i) % height:(3 * i) % height + 4] = (37 * i) % 255
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# The files a worker reopens unanalysed (decode.reopen_format): the MP4s, fragmented too
# (its B-frame depth is not in the moov; the probe records what the analysis found).
REOPENED = frozenset({"h264-mp4", "h264-open-gop", "h264-fragmented-mp4", "hevc-mp4",
                      "mpeg4-mp4", "av1-mp4"})


@pytest.mark.parametrize(("name", "reopen"), [
    *((name, "as probed") for name in sorted(FORMATS)),
    *((name, "plain") for name in sorted(REOPENED)),
])
def test_random_clips_equal_a_sequential_decode(name: str, reopen: str, tmp_path: Path) -> None:
    """`as probed` opens the file as the workers do, unanalysed where the probe allows;
    `plain` lets FFmpeg find everything again."""
    file_name, codec, options, fmt, size = FORMATS[name]
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path = tmp_path / file_name
    _encode(path, codec, options, fmt, size)
    info = probe(path)
    reference = reference_decode(path, H, W)
    assert info.frames == len(reference)
    assert info.reopen_as == ("mov" if name in REOPENED else "")
    decoder = ClipDecoder(H, W)
    rng = np.random.default_rng(0)
    for clip in range(16):
        stride = 1 + clip % 3
        start = int(rng.integers(0, len(reference)))
        frames = sampler.clip_frames(start, len(reference), 8, stride)
        out = np.zeros((8, H, W, 3), np.uint8)
        decoder.forget(str(path))  # reopened for every clip, each way
        decoder.decode_into(str(path), *info.seek_target(frames[0]),
                            [int(info.frame_pts[f]) for f in frames], out,
                            reopen=info.reopen if reopen == "as probed" else None)
        np.testing.assert_array_equal(out, reference[frames],
                                      err_msg=f"{name}: start {start} stride {stride}")
    decoder.close()


def _stream_copy_cut(src: Path, dst: Path, first_frame: int) -> None:
    """What `ffmpeg -ss ... -c copy` makes: the packets from the keyframe before
    `first_frame` on, timestamps shifted so `first_frame` is at 0; the MP4 muxer writes an
    edit list that discards the frames before it."""
    with av.open(str(src)) as source, av.open(str(dst), "w") as out:
        stream = source.streams.video[0]
        copy = out.add_stream_from_template(stream)
        packets = [p for p in source.demux(stream) if p.size]
        order = sorted(p.pts for p in packets)
        cut = order[first_frame]
        keyframe = max(p.pts for p in packets if p.is_keyframe and p.pts <= cut)
        for packet in packets:
            if packet.pts < keyframe:
                continue
            packet.pts -= cut
            packet.dts -= cut
            packet.stream = copy
            out.mux(packet)


@pytest.mark.parametrize(("gop", "n_frames", "first_frame"), [(16, 60, 20), (250, 300, 100)])
def test_stream_copy_cuts_with_edit_lists_are_exact(tmp_path: Path, gop: int, n_frames: int,
                                                    first_frame: int) -> None:
    from tests.support import video_frames
    from vidring.daemon.demo import write_video

    source, cut = tmp_path / "source.mp4", tmp_path / "cut.mp4"
    write_video(source, video_frames(7, n_frames), gop=gop)
    _stream_copy_cut(source, cut, first_frame)
    info = probe(cut)
    reference = reference_decode(cut, H, W)
    assert info.frames == len(reference) == n_frames - first_frame
    np.testing.assert_array_equal(reference[0], reference_decode(source, H, W)[first_frame])
    decoder = ClipDecoder(H, W)
    try:
        # Every start, including those before the first keyframe the edit list keeps.
        for start in [*range(0, 12), *range(12, info.frames - 8, 7)]:
            frames = sampler.clip_frames(start, info.frames, 8, 1)
            out = np.zeros((8, H, W, 3), np.uint8)
            key_pts, key_dts = info.seek_target(frames[0])
            decoder.decode_into(str(cut), key_pts, key_dts,
                                [int(info.frame_pts[f]) for f in frames], out,
                                reopen=info.reopen)
            np.testing.assert_array_equal(out, reference[frames], err_msg=f"start {start}")
    finally:
        decoder.close()
