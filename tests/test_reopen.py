"""Files the probe lets workers reopen without FFmpeg's analysis stay exact, and files whose
analysis gives the decoder something the container's header does not open the plain way
(decode.reopen_format).  Both files here are ones an early version got wrong."""

from __future__ import annotations

from typing import TYPE_CHECKING

import av
import numpy as np
import pytest

from tests.support import reference_decode, video_frames
from vidring.daemon import sampler
from vidring.daemon.decode import ClipDecoder, DecodeError, Reopen
from vidring.daemon.probe import VideoInfo, probe

if TYPE_CHECKING:
    from pathlib import Path

# The videos' own size: the second file's two SPSs differ in their VUI, which moves
# swscale's chroma siting when it resizes; what is compared here is the decode.
H, W = 48, 64
FRAGMENTED = {"movflags": "frag_keyframe+empty_moov"}
X264 = "keyint=12:min-keyint=12:scenecut=0:b-pyramid=normal"


def _clips(path: Path, info: VideoInfo, reopen: Reopen | None, n: int = 24) -> list[bool]:
    """Whether each of `n` random clips, reopened each time, equals a sequential decode."""
    reference = reference_decode(path, H, W)
    decoder = ClipDecoder(H, W, max_open=1)
    rng = np.random.default_rng(3)
    exact = []
    for _ in range(n):
        start = int(rng.integers(0, info.frames))
        frames = sampler.clip_frames(start, info.frames, 6, 1)
        out = np.zeros((6, H, W, 3), np.uint8)
        decoder.forget(str(path))
        try:
            decoder.decode_into(str(path), *info.seek_target(frames[0]),
                                [int(info.frame_pts[f]) for f in frames], out, reopen=reopen)
        except DecodeError:
            exact.append(False)
            continue
        exact.append(bool(np.array_equal(out, reference[frames])))
    decoder.close()
    return exact


def test_codec_headers_in_the_first_frame_alone_open_the_plain_way(tmp_path: Path) -> None:
    # MPEG-4 part 2 without global headers: its VOL header rides in the first frame, which
    # only FFmpeg's analysis moves into extradata; the audio stream first keeps an
    # unanalysed open from ever reading that frame.
    path = tmp_path / "vol-in-frame.mp4"
    with av.open(str(path), "w", options=FRAGMENTED) as container:
        audio = container.add_stream("mp2", rate=44100)
        audio.layout = "stereo"
        video = container.add_stream("mpeg4", rate=25)
        video.width, video.height, video.pix_fmt = 64, 48, "yuv420p"
        video.codec_context.gop_size = 12
        video.codec_context.options = {"bf": "2", "strict": "very", "flags": "-global_header"}
        for i, image in enumerate(video_frames(5, 60)):
            sound = av.AudioFrame.from_ndarray(np.zeros((1, 2 * 1152), np.int16), format="s16",
                                               layout="stereo")
            sound.sample_rate, sound.pts = 44100, i * 1152
            container.mux(audio.encode(sound))
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        container.mux(audio.encode())
    info = probe(path)
    assert info.reopen is None
    assert all(_clips(path, info, info.reopen))
    # What it would cost to allow it: clips that cannot be decoded.
    assert not all(_clips(path, info, Reopen("mov", info.reorder_depth)))


def test_a_reorder_depth_only_the_first_sps_states_is_kept(tmp_path: Path) -> None:
    # A fragmented MP4 whose header's SPS has no VUI (no reorder depth) while the first
    # sample carries the full SPS in-band: the analysis learns a depth of 2 from it, a
    # worker that seeks past that sample never sees it, so the depth must be set.
    source, path = tmp_path / "source.mp4", tmp_path / "inband-sps.mp4"
    with av.open(str(source), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.codec_context.options = {"bf": "3", "x264-params": X264}
        for i, image in enumerate(video_frames(9, 60)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(str(source)) as src, av.open(str(path), "w", options=FRAGMENTED) as out:
        template = src.streams.video[0]
        sps, pps = _avcc_parameter_sets(template.codec_context.extradata)
        copy = out.add_stream_from_template(template)
        copy.codec_context.extradata = _avcc(_without_vui(sps), pps)
        for k, packet in enumerate(p for p in src.demux(template) if p.size):
            if k == 0:  # the full SPS and the PPS ride in the first sample alone
                inband = b"".join(len(n).to_bytes(4, "big") + n for n in (sps, pps))
                first = av.Packet(inband + bytes(packet))
                first.pts, first.dts, first.time_base = packet.pts, packet.dts, packet.time_base
                first.is_keyframe = True
                packet = first
            packet.stream = copy
            out.mux(packet)
    info = probe(path)
    assert info.reopen == Reopen("mov", 2)
    assert all(_clips(path, info, info.reopen))
    # The depth left to the header's SPS: frames are lost.
    assert not all(_clips(path, info, Reopen("mov", 0)))


def _avcc_parameter_sets(avcc: bytes) -> tuple[bytes, bytes]:
    """The one SPS and one PPS of an avcC record (what libx264 writes)."""
    assert avcc[5] & 0x1F == 1, "one SPS"
    sps_end = 8 + int.from_bytes(avcc[6:8], "big")
    assert avcc[sps_end] == 1, "one PPS"
    pps_start = sps_end + 3
    return avcc[8:sps_end], avcc[pps_start:pps_start + int.from_bytes(avcc[sps_end + 1:pps_start],
                                                                   "big")]


def _avcc(sps: bytes, pps: bytes) -> bytes:
    return (bytes([1, sps[1], sps[2], sps[3], 0xFF, 0xE1]) + len(sps).to_bytes(2, "big") + sps
            + bytes([1]) + len(pps).to_bytes(2, "big") + pps)


def _without_vui(sps: bytes) -> bytes:
    """`sps` (a NAL unit) with vui_parameters_present_flag cleared and the VUI dropped."""
    bits = _Bits(_unescape(sps))
    bits.read(8)  # NAL header
    profile = bits.read(8)
    bits.read(16)  # constraint flags, level
    bits.ue()  # seq_parameter_set_id
    if profile in (100, 110, 122, 244, 44, 83, 86, 118, 128):
        if bits.ue() == 3:  # chroma_format_idc
            bits.read(1)
        bits.ue()
        bits.ue()
        bits.read(1)
        if bits.read(1):
            pytest.skip("an SPS with scaling matrices")
    bits.ue()  # log2_max_frame_num_minus4
    if bits.ue() == 0:  # pic_order_cnt_type
        bits.ue()
    else:
        pytest.skip("an SPS with pic_order_cnt_type != 0")
    bits.ue()  # max_num_ref_frames
    bits.read(1)
    bits.ue()
    bits.ue()
    if not bits.read(1):  # frame_mbs_only_flag
        bits.read(1)
    bits.read(1)  # direct_8x8_inference_flag
    if bits.read(1):  # frame_cropping_flag
        for _ in range(4):
            bits.ue()
    kept = bits.taken() + "0" + "1"  # no VUI, then the stop bit
    kept += "0" * (-len(kept) % 8)
    return _escape(bytes(int(kept[i:i + 8], 2) for i in range(0, len(kept), 8)))


class _Bits:
    def __init__(self, data: bytes) -> None:
        self._bits = "".join(f"{byte:08b}" for byte in data)
        self._at = 0

    def read(self, n: int) -> int:
        value = int(self._bits[self._at:self._at + n] or "0", 2)
        self._at += n
        return value

    def ue(self) -> int:
        zeros = 0
        while self.read(1) == 0:
            zeros += 1
        return (1 << zeros) - 1 + self.read(zeros)

    def taken(self) -> str:
        return self._bits[:self._at]


def _unescape(nal: bytes) -> bytes:
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def _escape(rbsp: bytes) -> bytes:
    out, zeros = bytearray(), 0
    for byte in rbsp:
        if zeros >= 2 and byte <= 3:
            out.append(3)
            zeros = 0
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)
