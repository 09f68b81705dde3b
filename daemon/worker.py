"""The decoder process: pull a task, decode one clip into the ring, report, repeat.

Started by the daemon as ``python -m vidring.daemon.worker``.  It owns no
state the daemon cannot rebuild: if it dies, the daemon re-issues its task.
It exits on a ``worker_stop`` message, on SIGTERM, or when its parent is gone
(see NOTE [ shutdown ] in server.py).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import sys

import zmq

from vidring.daemon.augment import Look
from vidring.daemon.decode import ClipDecoder, DecodeError, Reopen
from vidring.daemon.frames import DEFAULT_INTERPOLATION, INTERPOLATIONS
from vidring.loader import protocol
from vidring.loader.ring import Ring
from vidring.loader.status import printable

# How long one wait for a task lasts before the worker checks its parent again.
_POLL_TIMEOUT_S = 0.5
# FFmpeg's many small allocations fragment glibc's heap: a worker's private memory grew
# 30 MiB over 20,000 clips (benchmarks/soak.py).  Handing free pages back every so often
# takes most of that away; retiring a worker after --worker-max-clips bounds the rest.
_TRIM_EVERY_CLIPS = 1000
_PR_SET_PDEATHSIG = 1


def _trim_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _die_with_parent() -> None:
    # Linux only, best effort: the getppid() check below covers the rest.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def run(endpoint: str, segment: str, ring_id: int, identity: str, parent_pid: int, *,
        interpolation: str = DEFAULT_INTERPOLATION, mean: list[float] | None = None,
        std: list[float] | None = None, max_clips: int = 0, decode: str = "cpu") -> int:
    _die_with_parent()
    # Ctrl-C or a closed terminal reaches the whole process group; the daemon
    # decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    if os.getppid() != parent_pid:
        return 0
    ring = Ring.attach(segment, writable=True)
    if ring.ring_id != ring_id:
        # Another daemon replaced the segment of this name: never write into its ring.
        ring.close()
        return 1
    lay = ring.layout
    decoder = ClipDecoder(lay.height, lay.width, interpolation=interpolation, mean=mean, std=std,
                          decode=decode)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    protocol.configure(sock)
    sock.setsockopt(zmq.IDENTITY, identity.encode())  # the pool knows this process by it
    sock.connect(endpoint)
    sock.send(protocol.encode(protocol.WorkerReady()))
    clips = 0
    try:
        while os.getppid() == parent_pid:
            if not sock.poll(int(_POLL_TIMEOUT_S * 1000)):
                continue
            msg = protocol.decode(sock.recv(), protocol.DAEMON_TO_WORKER)
            if isinstance(msg, protocol.WorkerPing):
                sock.send(protocol.encode(protocol.WorkerReady()))
                continue
            if not isinstance(msg, protocol.Task):
                break  # worker_stop
            before, clips = clips, clips + len(msg.clips)
            retiring = bool(max_clips) and clips >= max_clips
            sock.send(_do_task(decoder, ring, identity, msg, retiring=retiring))
            if retiring:
                break  # a fresh process takes its place (see _TRIM_EVERY_CLIPS)
            if clips // _TRIM_EVERY_CLIPS != before // _TRIM_EVERY_CLIPS:
                _trim_heap()
    finally:
        decoder.close()
        sock.close(linger=0)
        ctx.term()
        ring.close()
    return 0


def _do_task(decoder: ClipDecoder, ring: Ring, identity: str, task: protocol.Task, *,
             retiring: bool = False) -> bytes:
    path = os.fsdecode(task.path)
    changed = _changed(path, task)
    if changed:
        decoder.forget(path)
        return protocol.encode(protocol.TaskDone(
            task_id=task.task_id, error=f"in decoder worker {identity}: {printable(path)}: "
                                        f"{changed}", permanent=True, retiring=retiring))
    error = ""
    try:
        # Each clip frame's place in the slot, in the order of the timestamps.
        outs = [frame for clip in task.clips
                for frame in ring.sample_array(task.slot, clip.position)]
        frame_pts = [pts for clip in task.clips for pts in clip.frame_pts]
        looks = [None if clip.box is None else Look(clip.box, clip.flip)
                 for clip in task.clips for _ in clip.frame_pts]
        reopen = Reopen(task.reopen_as, task.reorder_depth) if task.reopen_as else None
        decoder.decode_frames(path, task.key_pts, task.key_dts, frame_pts, outs, looks,
                              task.rotation, reopen=reopen)
    except DecodeError as exc:
        error = f"in decoder worker {identity}: {printable(str(exc))}"
    except Exception as exc:
        error = (f"in decoder worker {identity}, file {printable(path)}: "
                 f"{type(exc).__name__}: {printable(str(exc))}")
    return protocol.encode(protocol.TaskDone(
        task_id=task.task_id, error=error, retiring=retiring,
        stages=[] if error else [round(s, 6) for s in decoder.last_stages]))


def _changed(path: str, task: protocol.Task) -> str:
    """Why the file is not the one probed, or "" (a stat per clip: microseconds)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no longer exists"
    except OSError:
        return ""  # EIO, ESTALE, EACCES: maybe passing; the decode says, and is retried
    if task.size and (st.st_size, st.st_mtime_ns) != (task.size, task.mtime_ns):
        return (f"changed since it was probed (now {st.st_size} bytes, was {task.size}; "
                "modified since): replaced or rewritten")
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidring-worker")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--segment", required=True)
    parser.add_argument("--ring-id", type=int, required=True)
    parser.add_argument("--identity", required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--interpolation", choices=list(INTERPOLATIONS),
                        default=DEFAULT_INTERPOLATION)
    parser.add_argument("--mean", type=_floats)
    parser.add_argument("--std", type=_floats)
    parser.add_argument("--max-clips", type=int, default=0)
    parser.add_argument("--decode", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    return run(args.endpoint, args.segment, args.ring_id, args.identity, args.parent_pid,
               interpolation=args.interpolation, mean=args.mean, std=args.std,
               max_clips=args.max_clips, decode=args.decode)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",")]


if __name__ == "__main__":
    sys.exit(main())
