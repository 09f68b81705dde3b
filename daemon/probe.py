"""Per-video metadata (frame timestamps, keyframes, size), read once and cached on disk.

Probing demuxes every packet of the first video stream without decoding it,
so frame counts and keyframe positions come from the container's own index,
not from header estimates (``frames_from_header`` is often 0 or wrong).
The cache key is the file's absolute path, size and mtime and the FFmpeg
version; a changed file, or a new FFmpeg, probes again.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import av
import numpy as np

from vidring.daemon.decode import Reopen, reopen_format

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Iterable, Iterator

CACHE_FORMAT = 11
# What an entry says (timestamps, edit lists, whether a file reopens unanalysed) is what
# this FFmpeg's demuxers and decoders make of the file: another FFmpeg probes it again.
_FFMPEG = f"{av.library_versions['libavformat']}{av.library_versions['libavcodec']}"


class ProbeError(Exception):
    """A video that cannot be probed; the message names the file and the reason."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """Presentation-ordered frame timestamps and keyframe positions of one video."""

    frame_pts: np.ndarray  # int64, sorted, one per frame
    keyframe_indices: np.ndarray  # int64, indices into frame_pts, sorted, starts at 0
    keyframe_pts: np.ndarray  # int64, the keyframe each of those frames decodes from
    keyframe_dts: np.ndarray  # int64, and that keyframe's decode timestamp
    width: int  # as stored
    height: int
    time_base: float  # seconds per pts unit
    rotation: int = 0  # 0, 90, 180 or 270 degrees counter-clockwise that make frames upright
    size: int = 0  # bytes and mtime of the file probed (0: not known)
    mtime_ns: int = 0
    codec: str = ""
    # decode.reopen_format's word: the format to reopen the file as unanalysed ("": the plain
    # way), and the decoder's reorder depth to set then.
    reopen_as: str = ""
    reorder_depth: int = 0

    @property
    def reopen(self) -> Reopen | None:
        return Reopen(self.reopen_as, self.reorder_depth) if self.reopen_as else None

    @property
    def upright_size(self) -> tuple[int, int]:
        """(height, width) of a frame turned upright."""
        return (self.width, self.height) if self.rotation % 180 else (self.height, self.width)

    def seconds(self) -> np.ndarray:
        """Each frame's presentation time in seconds from the first frame."""
        return np.asarray((self.frame_pts - self.frame_pts[0]) * self.time_base, np.float64)

    def frame_range(self, start_s: float | None, end_s: float | None) -> tuple[int, int]:
        """The frames [first, stop) presented in [start_s, end_s) seconds from the first."""
        times = self.seconds()
        first = 0 if start_s is None else int(np.searchsorted(times, start_s - 1e-9))
        stop = self.frames if end_s is None else int(np.searchsorted(times, end_s - 1e-9))
        return first, stop

    @property
    def frames(self) -> int:
        return len(self.frame_pts)

    def keyframe_before(self, frame: int) -> int:
        """Index of the last keyframe at or before `frame`."""
        return int(self.keyframe_indices[self._key_pos(frame)])

    def seek_target(self, frame: int) -> tuple[int, int]:
        """(pts, dts) of the keyframe to decode `frame` from."""
        pos = self._key_pos(frame)
        return int(self.keyframe_pts[pos]), int(self.keyframe_dts[pos])

    def _key_pos(self, frame: int) -> int:
        return max(int(np.searchsorted(self.keyframe_indices, frame, side="right")) - 1, 0)


def probe(path: str | Path) -> VideoInfo:
    try:
        st = os.stat(path)
        with av.open(os.fsdecode(path)) as container:
            if not container.streams.video:
                raise ProbeError(f"{path}: no video stream")
            stream = container.streams.video[0]
            if stream.codec_context is None:
                raise ProbeError(f"{path}: this FFmpeg has no decoder for its video codec")
            # Read again, so a regular file's alone (a pipe is read once); before any decode.
            reopen = (reopen_format(os.fsdecode(path), container)
                      if stat.S_ISREG(st.st_mode) else None)
            stream.codec_context.thread_type = "NONE"
            stream.codec_context.thread_count = 1
            rotation: int | None = None  # from the first decoded frame's display matrix
            pts: list[int] = []
            dts_of: dict[int, int] = {}  # pts -> dts
            key_pts_flagged: list[int] = []
            cut_short = False
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # end-of-stream marker
                cut_short = packet.is_corrupt
                if packet.pts is None:
                    raise ProbeError(f"{path}: packet without a timestamp; remux the file")
                dts_of[packet.pts] = packet.dts if packet.dts is not None else packet.pts
                if packet.is_keyframe:
                    # Kept even when an edit list drops it (a stream-copy cut): the
                    # frames after it up to the next keyframe decode from it.
                    key_pts_flagged.append(packet.pts)
                if not packet.is_discard:
                    pts.append(packet.pts)  # a frame that is presented
                if rotation is None:
                    rotation = _rotation(packet)
            if cut_short:
                # An interrupted copy: its last frame cannot decode, nor can any clip
                # that reaches it; said here rather than as failed clips mid-epoch.
                raise ProbeError(f"{path}: truncated: the file ends inside its last frame; "
                                 "copy it again")
            width, height = stream.codec_context.width, stream.codec_context.height
            codec = stream.codec_context.name
            time_base = float(stream.time_base) if stream.time_base else 0.0
    except ProbeError:
        raise
    except (av.FFmpegError, OSError) as exc:
        # strerror: str(exc) names the file again.
        raise ProbeError(f"{path}: cannot read video ({type(exc).__name__}: "
                         f"{getattr(exc, 'strerror', None) or exc})") from None
    if not pts:
        raise ProbeError(f"{path}: video stream has no frames")
    frame_pts = np.unique(np.asarray(pts, dtype=np.int64))
    if len(frame_pts) != len(pts):
        raise ProbeError(f"{path}: duplicate frame timestamps; remux the file")
    if not key_pts_flagged:
        raise ProbeError(f"{path}: no keyframe in the video stream")
    key_pts = np.unique(np.asarray(key_pts_flagged, dtype=np.int64))
    key_idx = np.searchsorted(frame_pts, key_pts)
    dts = np.asarray([dts_of.get(int(p), int(p)) for p in key_pts], dtype=np.int64)
    if key_idx[0] != 0:
        # Frames presented before the first keyframe (an open GOP's leading
        # frames) are decoded from that keyframe too.
        key_idx = np.concatenate([[0], key_idx]).astype(np.int64)
        key_pts = np.concatenate([key_pts[:1], key_pts])
        dts = np.concatenate([dts[:1], dts])
    return VideoInfo(frame_pts, key_idx, key_pts, dts, width, height, time_base, rotation or 0,
                     st.st_size, st.st_mtime_ns, codec, *(reopen or ("", 0)))


def _rotation(packet: Any) -> int | None:
    """The display rotation, a multiple of 90 degrees, once `packet` gives a frame (phones
    store portrait video landscape with a matrix that turns it); 0 if it cannot decode."""
    try:
        frames = packet.decode()
    except (av.FFmpegError, ValueError):
        return 0
    for frame in frames:
        turns = round(float(frame.rotation) / 90) % 4
        return turns * 90
    return None


# Below this many uncached videos, starting probe processes costs more than it saves.
_PARALLEL_MIN_VIDEOS = 32
_CHUNK_VIDEOS = 16
_CANCEL_POLL_S = 0.1


def _probe_or_reason(path: str) -> VideoInfo | str:
    """The info, or why not without the path (whoever shows it names the file)."""
    try:
        return probe(path)
    except ProbeError as exc:
        return str(exc).removeprefix(f"{path}: ")


class ProbeCache:
    """probe() behind a folder of small JSON files.

    The daemon trusts an entry's timestamps and keyframes, so the folder is this
    user's own (0700) and an entry is read only if it is a file of this user that
    nobody else can write, and holds a consistent result; anything else is probed
    again and rewritten (0600).
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder is not None else None
        if self.folder is not None:
            self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = os.lstat(self.folder)
            if st.st_uid != os.getuid() or not stat.S_ISDIR(st.st_mode):
                raise ProbeError(f"probe cache {self.folder} is not a folder of this user: "
                                 "give --probe-cache a folder of your own")
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(self.folder, 0o700)

    def _entry(self, path: str | Path) -> Path | None:
        st = os.stat(path)
        if self.folder is None:
            return None
        key = b"\0".join([os.fsencode(os.path.abspath(path)),
                          f"{st.st_size}\0{st.st_mtime_ns}\0{CACHE_FORMAT}\0{_FFMPEG}".encode()])
        return self.folder / (hashlib.sha1(key).hexdigest() + ".json")

    def _load(self, entry: Path | None) -> VideoInfo | None:
        if entry is None:
            return None
        try:
            fd = os.open(entry, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if st.st_uid != os.getuid() or stat.S_IMODE(st.st_mode) & 0o022:
                return None  # another user could have written it
            with os.fdopen(fd, "rb", closefd=False) as fh:
                data = json.loads(fh.read())
            pts, keys, key_pts, key_dts = (np.asarray(data[k], np.int64)
                                           for k in ("pts", "keys", "key_pts", "key_dts"))
            info = VideoInfo(pts, keys, key_pts, key_dts, int(data["width"]),
                             int(data["height"]), float(data["time_base"]),
                             int(data["rotation"]), int(data["size"]), int(data["mtime_ns"]),
                             str(data["codec"]), str(data["reopen_as"]),
                             int(data["reorder_depth"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        finally:
            os.close(fd)
        return info if _consistent(info) else None

    def _store(self, entry: Path | None, info: VideoInfo) -> None:
        if entry is None:
            return
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({
                "pts": info.frame_pts.tolist(), "keys": info.keyframe_indices.tolist(),
                "key_pts": info.keyframe_pts.tolist(), "key_dts": info.keyframe_dts.tolist(),
                "width": info.width, "height": info.height, "time_base": info.time_base,
                "rotation": info.rotation, "size": info.size, "mtime_ns": info.mtime_ns,
                "codec": info.codec, "reopen_as": info.reopen_as,
                "reorder_depth": info.reorder_depth}))
        os.replace(tmp, entry)

    def get(self, path: str | Path) -> VideoInfo:
        result = self.get_many([path], processes=1)[0]
        if isinstance(result, str):
            raise ProbeError(f"{path}: {result}")
        return result

    def get_many(self, paths: list[str | Path], *, processes: int,
                 progress: Callable[[int], None] = lambda _done: None,
                 cancel: threading.Event | None = None) -> list[VideoInfo | str]:
        """Each video's info, or why it cannot be probed (not naming it); uncached videos are
        probed in `processes` processes when there are many (a cold start of a big set).
        `progress(done)` is told how many are known so far; `cancel` ends a parallel probe
        (ProbeCancelled), killing its processes."""
        results: list[VideoInfo | str | None] = [None] * len(paths)
        entries: dict[int, Path | None] = {}
        for i, path in enumerate(paths):
            try:
                entries[i] = entry = self._entry(path)
            except OSError as exc:
                results[i] = exc.strerror or str(exc)
                continue
            results[i] = self._load(entry)
        todo = [i for i in entries if results[i] is None]
        done = len(paths) - len(todo)
        progress(done)
        if len(todo) >= _PARALLEL_MIN_VIDEOS and processes > 1:
            # spawn, not fork: the caller may hold threads or sockets that must not be copied.
            ctx = multiprocessing.get_context("spawn")
            # Leaving the block terminates the processes, also when cancelled mid-probe.
            with ctx.Pool(processes, initializer=_leave_signals_to_the_daemon) as pool:
                names = [str(paths[i]) for i in todo]
                chunks = [names[k:k + _CHUNK_VIDEOS] for k in range(0, len(names), _CHUNK_VIDEOS)]
                probing = pool.imap(_probe_chunk, chunks)
                self._collect(todo, _until_cancelled(probing, cancel), entries, results, done,
                              progress)
        else:
            inline = (_probe_or_reason(str(paths[i])) for i in todo)
            self._collect(todo, inline, entries, results, done, progress)
        return [r if r is not None else "not probed" for r in results]

    def _collect(self, todo: list[int], found: Iterable[VideoInfo | str],
                 entries: dict[int, Path | None], results: list[VideoInfo | str | None],
                 done: int, progress: Callable[[int], None]) -> None:
        for i, result in zip(todo, found, strict=True):
            results[i] = result
            if isinstance(result, VideoInfo):
                self._store(entries[i], result)
            done += 1
            progress(done)


def _consistent(info: VideoInfo) -> bool:
    """What probe() guarantees, checked on what a cache file says."""
    n = info.frames
    keys = info.keyframe_indices
    return bool(
        n > 0 and info.width > 0 and info.height > 0 and info.time_base > 0
        and info.rotation in (0, 90, 180, 270)
        and (n == 1 or np.all(np.diff(info.frame_pts) > 0))
        and len(keys) > 0 and keys[0] == 0 and np.all(keys < n)
        and np.all(np.diff(keys) >= 0)
        and len(info.keyframe_pts) == len(keys) == len(info.keyframe_dts))


class ProbeCancelled(Exception):
    """A parallel probe was cancelled (the daemon was stopped while starting)."""


def _leave_signals_to_the_daemon() -> None:
    # Ctrl-C and a closed terminal reach the whole process group: the daemon ends the
    # probe (cancel), so its processes print no traceback of their own.
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)


def _probe_chunk(paths: list[str]) -> list[VideoInfo | str]:
    return [_probe_or_reason(path) for path in paths]


def _until_cancelled(chunks: Any, cancel: threading.Event | None) -> Iterator[VideoInfo | str]:
    while True:
        if cancel is not None and cancel.is_set():
            raise ProbeCancelled
        try:
            yield from chunks.next(timeout=_CANCEL_POLL_S)
        except multiprocessing.TimeoutError:
            continue
        except StopIteration:
            return


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "vidring" / "probe"
