"""One clip: open, seek, decode, resize, write into the slot memory.

Where the time goes (DESIGN.md, "The decode path"): pre-roll from the
keyframe dominates, so
- one FFmpeg thread per worker: a pool of processes already fills the cores;
- every packet that is not a clip frame (pre-roll, frames between strided
  clip frames, frames after the clip) is decoded with skip_frame=NONREF: a
  non-reference frame is never needed to decode another, so the output is
  exact; the choice is made per packet from its pts, so no clip frame is
  ever skipped;
- once every packet of the clip is in the decoder, it is drained instead of
  fed the frames that follow (its B-frame reorder delay);
- only kept frames are cropped, converted and resized, in one swscale call
  each, by one long-lived reformatter with threads=1 (PyAV otherwise builds a
  threaded SwsContext per call), and written once, straight into the slot
  (frames.py);
- an MP4/MOV file is reopened as the probe allows (reopen_format), without
  FFmpeg's format probe and stream analysis (which decodes its first frame):
  0.2 instead of 0.7-1.8 ms an open, and a dataset of thousands of files
  reopens on almost every clip.

Not taken: skipping every B-frame of the pre-roll, not only the non-reference
ones.  An H.264 B-frame may be a reference (libx264's default pyramid); whether
a later frame reads a skipped one depends on every slice's reference lists and
on how FFmpeg fills the frame_num gap a skipped reference leaves, which no probe
of the headers proves.  Skipping every B-frame before the clip cut a 640x360
clip's CPU by a third, but left 5 of 160 random clips exact; at GOP 16 it would
save 6% even so.
"""

from __future__ import annotations

import collections
import io
import itertools
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import av
import numpy as np
from av.codec.hwaccel import HWAccel, hwdevices_available

from vidring.daemon.frames import DEFAULT_INTERPOLATION, FrameWriter

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from vidring.daemon.augment import Look

MAX_OPEN_CONTAINERS = 8
# Where a clip's time goes: open and seek, decoding up to its first frame (pre-roll),
# decoding its frames, and cutting, resizing and writing them.
STAGES = ("open", "preroll", "frames", "write")


class DecodeError(Exception):
    """A clip that could not be decoded; the message names the file and the reason."""


# Decoders known to honour skip_frame per frame, checked exact by the tests.  Others
# (libdav1d reads it once, when it opens) decode every frame.
NONREF_CODECS = frozenset({"h264", "hevc", "mpeg1video", "mpeg2video", "mpeg4", "vp9"})
# Containers whose timestamps are not trustworthy right after a seek (an MPEG program
# stream resyncs mid-packet) or that have no index: read from the start instead.
UNSEEKABLE_FORMATS = frozenset({"mpeg", "mpegvideo", "m4v", "h264", "hevc"})


DECODERS = ("cpu", "cuda")

# Formats whose header holds every stream's parameters and every packet's timestamps.
# Not Matroska: it stores no dts, and FFmpeg guesses them differently unanalysed.
REOPENABLE_FORMATS = frozenset({"mov"})
# Read nothing past the header, and decode nothing while FFmpeg analyses the streams (PyAV
# gives entry i to stream i alone, and the video need not be the first stream).
_NO_ANALYSIS = {"probesize": "32", "analyzeduration": "1"}
_NO_PROBE_DECODE = [{"skip_frame": "all"}] * 32


def cuda_unavailable() -> str:
    """Why `--decode cuda` cannot decode here ('' if it can): a tiny H.264 video, made in
    memory, is decoded on the GPU through FFmpeg's CUDA hwaccel (NVDEC)."""
    if "cuda" not in hwdevices_available():
        return "this FFmpeg has no CUDA hwaccel"
    buffer = io.BytesIO()
    try:
        with av.open(buffer, "w", format="mp4") as out:
            stream = out.add_stream("libx264", rate=30)
            stream.width = stream.height = 64
            stream.pix_fmt = "yuv420p"
            black = av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")
            for packet in [*stream.encode(black), *stream.encode()]:
                out.mux(packet)
        buffer.seek(0)
        with av.open(buffer, "r", hwaccel=HWAccel("cuda", allow_software_fallback=False)) as src:
            next(iter(src.decode(video=0)))
    except (av.FFmpegError, OSError, StopIteration) as exc:
        return f"no usable CUDA device ({type(exc).__name__}: {exc})"
    return ""


def _unanalysed(path: str, fmt: str, hwaccel: HWAccel | None = None) -> Any:
    return av.open(path, format=fmt, options=_NO_ANALYSIS,
                   # PyAV's stub says list[str]; it takes a dict per stream.
                   stream_options=_NO_PROBE_DECODE,  # type: ignore[arg-type]
                   hwaccel=hwaccel)


class Reopen(NamedTuple):
    """How the probe allows a file to be reopened without FFmpeg's analysis."""

    fmt: str  # the demuxer, one of REOPENABLE_FORMATS
    reorder_depth: int  # the decoder's B-frame reorder depth that the analysis found


def reopen_format(path: str, container: Any) -> Reopen | None:
    """How a worker may reopen `path` unanalysed (None: the plain way), given `path` open and
    analysed as `container`, not yet decoded: the probe's word.

    Only where the unanalysed open gives the decoder what the analysis gives it but the
    reorder depth, which the worker then sets: the same size and codec and the same codec
    headers (an MPEG-4 part 2 file may carry them in its first frame alone, which only the
    analysis moves into extradata).  The depth must be set, not left to the stream's
    headers: a fragmented MP4's first SPS may say more than the ones after it.
    """
    fmt = container.format.name.split(",")[0]
    if fmt not in REOPENABLE_FORMATS or not container.streams.video:
        return None
    analysed = container.streams.video[0].codec_context
    try:
        with _unanalysed(path, fmt) as quick:
            if not quick.streams.video:
                return None
            seen = quick.streams.video[0].codec_context
            same = ((seen.extradata, seen.width, seen.height, seen.name)
                    == (analysed.extradata, analysed.width, analysed.height, analysed.name))
    except (av.FFmpegError, OSError, ValueError):
        return None
    return Reopen(fmt, analysed.reorder_depth) if same else None


def _open(path: str, reopen: Reopen | None = None,
          hwaccel: HWAccel | None = None) -> tuple[Any, Any]:
    # With NVDEC, frames come back to system memory (NV12) for the CPU's crop and resize.
    if reopen is not None and reopen.fmt in REOPENABLE_FORMATS:
        container = _unanalysed(path, reopen.fmt, hwaccel)
    else:
        reopen = None
        container = av.open(path, hwaccel=hwaccel)
    if not container.streams.video:
        container.close()
        raise DecodeError(f"{path}: no video stream")
    stream = container.streams.video[0]
    ctx = stream.codec_context
    ctx.thread_type = "NONE"
    ctx.thread_count = 1
    ctx.skip_frame = "DEFAULT"
    if reopen is not None:
        ctx.reorder_depth = reopen.reorder_depth  # as the analysis would have started it
    ctx.open(strict=False)  # now, not at the first packet, which may be skipped pre-roll
    return container, stream


def _from_key(packets: Iterator[Any], key_pts: int, key_dts: int) -> Iterator[Any] | None:
    """`packets` from the keyframe's own on; None if they start past it."""
    for packet in packets:
        if packet.pts == key_pts:
            return itertools.chain([packet], packets)
        dts = packet.dts if packet.dts is not None else packet.pts
        if dts is not None and dts > key_dts:
            return None
    return None


class ClipDecoder:
    """Decodes clips into caller-owned (T, H, W, 3) arrays, keeping files open."""

    def __init__(self, height: int, width: int, *, interpolation: str = DEFAULT_INTERPOLATION,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                 max_open: int = MAX_OPEN_CONTAINERS, decode: str = "cpu") -> None:
        if decode not in DECODERS:
            raise ValueError(f"decode: must be one of {', '.join(DECODERS)}, got {decode!r}")
        self.height = height
        self.width = width
        self.decode = decode
        # One for every file this decoder opens, so they can share its device.
        self._hwaccel = HWAccel("cuda", allow_software_fallback=True) if decode == "cuda" else None
        self._writer = FrameWriter(height, width, interpolation=interpolation, mean=mean,
                                   std=std)
        self._open: collections.OrderedDict[str, tuple[Any, Any]] = collections.OrderedDict()
        self._max_open = max_open
        # Seconds of the last decode_frames in each STAGES part, for `vidring top`.
        self.last_stages: tuple[float, ...] = (0.0,) * len(STAGES)
        self._marks = _Marks()

    def close(self) -> None:
        while self._open:
            _, (container, _) = self._open.popitem()
            container.close()

    def _container(self, path: str, reopen: Reopen | None) -> tuple[Any, Any]:
        entry = self._open.get(path)
        if entry is not None:
            self._open.move_to_end(path)
            return entry
        entry = _open(path, reopen, self._hwaccel)
        self._open[path] = entry
        while len(self._open) > self._max_open:
            _, (old, _) = self._open.popitem(last=False)
            old.close()
        return entry

    def forget(self, path: str) -> None:
        """Close `path` if open (it changed on disk)."""
        self._forget(path)

    def _forget(self, path: str) -> None:
        entry = self._open.pop(path, None)
        if entry is not None:
            entry[0].close()

    def decode_into(self, path: str, key_pts: int, key_dts: int, frame_pts: list[int],
                    out: np.ndarray, look: Look | None = None, rotation: int = 0, *,
                    reopen: Reopen | None = None) -> None:
        """Write the frames with timestamps `frame_pts` (in order) into out[0..T-1].

        Decoding starts at the keyframe (`key_pts`, `key_dts`) at or before the
        first of them.  Repeated timestamps (a short video's last frame) are
        decoded once and copied.  `look` cuts them (the whole frame when None);
        `rotation` (degrees, the video's display matrix) turns them upright.
        `reopen` is VideoInfo.reopen: where the probe allows, a file opens without FFmpeg's
        analysis.
        """
        if out.shape[0] != len(frame_pts):
            raise ValueError(f"out has {out.shape[0]} frames, the clip {len(frame_pts)}")
        self.decode_frames(path, key_pts, key_dts, frame_pts, list(out),
                           [look] * len(frame_pts), rotation, reopen=reopen)

    def decode_frames(self, path: str, key_pts: int, key_dts: int, frame_pts: list[int],
                      outs: Sequence[np.ndarray], looks: Sequence[Look | None] | None = None,
                      rotation: int = 0, *, reopen: Reopen | None = None) -> None:
        """Write the frame with timestamp frame_pts[k], cut by looks[k], into outs[k] (an
        (H, W, 3) array), for every k: one forward pass from the keyframe, for one clip or
        several of a video."""
        if len(outs) != len(frame_pts):
            raise ValueError(f"{len(outs)} places for {len(frame_pts)} frames")
        if looks is None:
            looks = [None] * len(frame_pts)
        elif len(looks) != len(frame_pts):
            raise ValueError(f"{len(looks)} looks for {len(frame_pts)} frames")
        for out in outs:
            if out.shape != (self.height, self.width, 3):
                raise ValueError(f"a frame's place has shape {out.shape}, frames are "
                                 f"({self.height}, {self.width}, 3)")
        self._marks = _Marks()
        try:
            stream, packets = self._packets_from_key(path, key_pts, key_dts, reopen)
            self._marks.opened = time.perf_counter()
            self._decode(path, stream, packets, frame_pts, _Places(outs, looks, rotation))
            self.last_stages = self._marks.stages()
        except DecodeError:
            self._forget(path)
            raise
        except (av.FFmpegError, OSError, ValueError) as exc:
            self._forget(path)
            raise DecodeError(f"{path}: {type(exc).__name__}: {exc}") from None

    def _packets_from_key(self, path: str, key_pts: int, key_dts: int,
                          reopen: Reopen | None) -> tuple[Any, Iterator[Any]]:
        """(stream, packets) with the keyframe's packet first.

        Seeking by the keyframe's decode timestamp lands on it or before it in
        most containers; MPEG-TS seeks approximately and can land after it.
        Then, and for UNSEEKABLE_FORMATS, the file is read from its start
        instead: slower, still exact.
        """
        container, stream = self._container(path, reopen)
        if not set(container.format.name.split(",")) & UNSEEKABLE_FORMATS:
            container.seek(key_dts, stream=stream, backward=True, any_frame=False)
            packets = _from_key(container.demux(stream), key_pts, key_dts)
            if packets is not None:
                return stream, packets
        self._forget(path)
        container, stream = self._container(path, reopen)  # freshly opened: at the start
        packets = _from_key(container.demux(stream), key_pts, key_dts)
        if packets is None:
            raise DecodeError(f"{path}: keyframe at pts {key_pts} not found: truncated or corrupt")
        return stream, packets

    def _decode(self, path: str, stream: Any, packets: Iterator[Any], frame_pts: list[int],
                out: _Places) -> None:
        ctx = stream.codec_context
        targets: dict[int, list[int]] = {}
        for t, pts in enumerate(frame_pts):
            targets.setdefault(pts, []).append(t)
        wanted = frozenset(targets)
        last_pts = max(wanted)
        unfed = set(targets)  # clip frames whose packets the decoder has not seen yet
        can_skip = ctx.codec.name in NONREF_CODECS
        skipping = False
        try:
            for packet in packets:
                pts = packet.pts
                if can_skip and pts is not None:
                    # A non-reference frame that is not a clip frame is never needed.
                    skip = pts not in wanted
                    if skip is not skipping:
                        ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                        skipping = skip
                self._take(path, packet.decode(), targets, out, last_pts)
                if not targets:
                    return
                unfed.discard(pts)
                if not unfed:
                    # Every clip frame is inside the decoder: drain its reorder delay
                    # rather than decode the frames that follow the clip.
                    self._take(path, ctx.decode(None), targets, out, last_pts)
                    break
        finally:
            ctx.skip_frame = "DEFAULT"
        if targets:
            self._missing(path, targets, len(frame_pts))

    @staticmethod
    def _missing(path: str, targets: dict[int, list[int]], n: int) -> None:
        missing = sorted(targets)
        raise DecodeError(
            f"{path}: {len(missing)} of {n} clip frames never decoded (first missing pts "
            f"{missing[0]}): truncated or corrupt"
        )

    def _take(self, path: str, frames: Any, targets: dict[int, list[int]],
              out: _Places, last_pts: int) -> None:
        for frame in frames:
            positions = targets.pop(frame.pts, None)
            if positions is not None:
                self._write(frame, out, positions)
            elif targets and frame.pts is not None and frame.pts > last_pts:
                # Frames leave the decoder in presentation order: the rest are lost,
                # so fail now instead of decoding to the end of the file.
                self._missing(path, targets, len(out.outs))

    def _write(self, frame: Any, out: _Places, positions: list[int]) -> None:
        # A frame repeated in one clip (a short video's last) is converted once; clips of
        # one pass that share a frame may cut it differently.
        marks = self._marks
        started = time.perf_counter()
        if marks.first_frame == 0.0:
            marks.first_frame = started
        written: dict[Look | None, np.ndarray] = {}
        for t in positions:
            look, place = out.looks[t], out.outs[t]
            done = written.get(look)
            if done is None:
                self._writer.write(frame, look, out.rotation, place)
                written[look] = place
            else:
                np.copyto(place, done)
        marks.writing += time.perf_counter() - started


class _Marks:
    """When one decode_frames call reached each stage (perf_counter seconds)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.opened = self.first_frame = 0.0
        self.writing = 0.0  # seconds in crop, resize and copy

    def stages(self) -> tuple[float, ...]:
        """Seconds spent in each of STAGES."""
        end = time.perf_counter()
        opened = self.opened or end
        first = self.first_frame or end
        return (opened - self.started, first - opened, max(end - first - self.writing, 0.0),
                self.writing)


class _Places(NamedTuple):
    """Where each clip frame goes and how it is cut."""

    outs: Sequence[np.ndarray]
    looks: Sequence[Look | None]
    rotation: int
