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
import time

import zmq

from vidring.daemon.decode import ClipDecoder, DecodeError
from vidring.loader import protocol
from vidring.loader.ring import Ring

# How long one wait for a task lasts before the worker checks its parent again.
_POLL_TIMEOUT_S = 0.5
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Linux only, best effort: the getppid() check below covers the rest.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def run(endpoint: str, segment: str, ring_id: int, worker_id: int, parent_pid: int) -> int:
    _die_with_parent()
    # Ctrl-C in the daemon's terminal reaches the whole process group; the
    # daemon decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent_pid:
        return 0
    ring = Ring.attach(segment, writable=True)
    if ring.ring_id != ring_id:
        # Another daemon replaced the segment of this name: never write into its ring.
        ring.close()
        return 1
    lay = ring.layout
    decoder = ClipDecoder(lay.height, lay.width)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
    sock.setsockopt(zmq.IDENTITY, f"w{worker_id}".encode())
    sock.connect(endpoint)
    sock.send(protocol.encode("worker_ready", worker_id=worker_id, pid=os.getpid()))
    try:
        while os.getppid() == parent_pid:
            if not sock.poll(int(_POLL_TIMEOUT_S * 1000)):
                continue
            msg = protocol.decode(sock.recv(), allowed=frozenset({"task", "worker_stop"}))
            if msg.type == "worker_stop":
                break
            sock.send(_do_task(decoder, ring, worker_id, msg))
    finally:
        decoder.close()
        sock.close(linger=0)
        ctx.term()
        ring.close()
    return 0


def _do_task(decoder: ClipDecoder, ring: Ring, worker_id: int, msg: protocol.Message) -> bytes:
    started = time.perf_counter()
    path = msg["path"]
    error = ""
    try:
        out = ring.sample_array(msg["slot"], msg["position"])
        decoder.decode_into(path, msg["key_pts"], msg["key_dts"], msg["frame_pts"], out)
    except DecodeError as exc:
        error = f"in decoder worker {worker_id}: {exc}"
    except Exception as exc:  # noqa: BLE001 - any failure of one clip is reported, not fatal
        error = f"in decoder worker {worker_id}, file {path}: {type(exc).__name__}: {exc}"
    return protocol.encode(
        "task_done", worker_id=worker_id, task_id=msg["task_id"], ok=not error, error=error,
        seconds=time.perf_counter() - started,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vidring-worker")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--segment", required=True)
    parser.add_argument("--ring-id", type=int, required=True)
    parser.add_argument("--worker-id", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    return run(args.endpoint, args.segment, args.ring_id, args.worker_id, args.parent_pid)


if __name__ == "__main__":
    sys.exit(main())
