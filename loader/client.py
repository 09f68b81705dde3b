"""Talks to a daemon: requests, leases, heartbeats, bounded waits, typed errors.

One DEALER socket per client, guarded by a lock because Keras calls
``__getitem__`` from tf.data's generator thread while leases may be released
from whatever thread drops the last array.  No REQ sockets: a REQ whose peer
died hangs forever.  Every receive has a deadline.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from typing import Any

import psutil
import zmq

from vidring.loader import paths, protocol

# Ping a daemon this often while waiting on a batch, so a slow batch is not a dead daemon.
PING_INTERVAL_S = 0.5
# The daemon drops a silent client's leases only after this; see server.py.
HEARTBEAT_INTERVAL_S = 1.0
# While waiting, wake this often to send releases queued by other threads.
_SLICE_S = 0.05


class VidringError(Exception):
    """Base of every error vidring raises in the trainer."""


class DaemonUnavailable(VidringError):
    """No daemon answers for this pipeline (not started, exited, or stuck)."""


class RingExhausted(VidringError):
    """The trainer holds every slot of the ring, so no batch can be produced."""


class DaemonError(VidringError):
    """The daemon refused a request; `code` is the protocol's error code."""

    def __init__(self, name: str, code: str, message: str) -> None:
        super().__init__(f"pipeline {name!r}: {message}")
        self.code = code


class Client:
    """A connection to the daemon of pipeline `name`."""

    def __init__(self, name: str, *, timeout_s: float = 10.0, heartbeat: bool = True) -> None:
        self.name = paths.check_name(name)
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.timeout_s = float(timeout_s)
        sock_path = paths.control_socket_path(name)
        if not sock_path.exists():
            raise DaemonUnavailable(
                f"no vidring daemon named {name!r} on this machine (no socket at {sock_path}); "
                f"start one with `vidring serve --name {name} ...`"
            )
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        self._sock.connect(paths.control_endpoint(name))
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending_releases: collections.deque[int] = collections.deque()
        self._closed = False
        self.daemon_pid: int | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if heartbeat:
            self._heartbeat = threading.Thread(target=self._beat, name=f"vidring-heartbeat-{name}",
                                               daemon=True)

    # -- public -----------------------------------------------------------

    def hello(self) -> dict[str, Any]:
        info = self.request("hello", client_pid=os.getpid(), pid_ns=pid_namespace())
        # A daemon in another pid namespace (across a container boundary) has a pid
        # that means nothing here: rely on the timeout alone.
        same_ns = info.get("pid_ns", 0) in (0, pid_namespace())
        self.daemon_pid = info.get("pid") if same_ns else None
        if self._heartbeat is not None and not self._heartbeat.is_alive():
            self._heartbeat.start()
        return info

    def request(self, type_: str, **fields: Any) -> dict[str, Any]:
        """Send one request and wait for its reply (bounded by timeout_s)."""
        with self._lock:
            self._flush_releases()
            return self._roundtrip(type_, fields)

    def release(self, lease_id: int) -> None:
        """Give a lease back; safe from any thread, never blocks."""
        self._pending_releases.append(lease_id)
        if self._lock.acquire(blocking=False):
            try:
                self._flush_releases()
            finally:
                self._lock.release()

    def close(self) -> None:
        if self._closed:
            return
        self._stop.set()
        if self._heartbeat is not None and self._heartbeat.is_alive():
            self._heartbeat.join(timeout=2 * HEARTBEAT_INTERVAL_S)
        with self._lock:
            self._closed = True
            try:
                self._flush_releases()
                # bye releases every lease this client still holds.
                self._sock.send(protocol.encode("bye"), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._sock.close(linger=0)
            self._ctx.term()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _roundtrip(self, type_: str, fields: dict[str, Any]) -> dict[str, Any]:
        if self._closed:
            raise DaemonUnavailable(f"pipeline {self.name!r}: client is closed")
        protocol.check(type_, **fields)  # a bad request fails here, not as a silent wait
        req_id = next(self._ids)
        self._send(protocol.encode(type_, req_id, **fields))
        last_heard = time.monotonic()
        next_ping = last_heard + PING_INTERVAL_S
        while True:
            now = time.monotonic()
            if now - last_heard > self.timeout_s:
                raise DaemonUnavailable(
                    f"pipeline {self.name!r}: daemon did not answer {type_!r} "
                    f"within {self.timeout_s:g} s"
                )
            # Releases queued by other threads while we wait must still go out:
            # the batch we wait for may need exactly that slot.
            self._flush_releases()
            wait_s = max(0.0, min(next_ping, last_heard + self.timeout_s, now + _SLICE_S) - now)
            if self._sock.poll(int(wait_s * 1000) + 1, zmq.POLLIN):
                msg = protocol.decode(self._sock.recv())
                last_heard = time.monotonic()
                if msg.id == req_id or (msg.type == "error" and msg.id == 0):
                    if msg.type == "error":
                        raise _error_for(self.name, msg["code"], msg["message"])
                    return msg.fields
                self._discard(msg)
            elif time.monotonic() >= next_ping:
                if self.daemon_pid is not None and not pid_alive(self.daemon_pid):
                    raise DaemonUnavailable(
                        f"pipeline {self.name!r}: daemon (pid {self.daemon_pid}) has exited"
                    )
                self._send(protocol.encode("ping", 0))
                next_ping = time.monotonic() + PING_INTERVAL_S

    def _discard(self, msg: protocol.Message) -> None:
        # A lease granted to a request we gave up on must still be given back.
        lease_id = msg.get("lease_id")
        if msg.type == "reply" and isinstance(lease_id, int):
            self._send(protocol.encode("release", lease_ids=[lease_id]))

    def _send(self, data: bytes) -> None:
        try:
            self._sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            raise DaemonUnavailable(f"pipeline {self.name!r}: daemon is not reading") from None

    def _flush_releases(self) -> None:
        ids: list[int] = []
        while self._pending_releases:
            ids.append(self._pending_releases.popleft())
        if ids and not self._closed:
            try:
                self._send(protocol.encode("release", lease_ids=ids))
            except DaemonUnavailable:
                pass  # the daemon drops a gone client's leases itself

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            if not self._lock.acquire(blocking=False):
                continue  # the holder is talking to the daemon right now
            try:
                if self._closed:
                    return
                self._flush_releases()
                self._sock.send(protocol.encode("heartbeat"), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            finally:
                self._lock.release()


def _error_for(name: str, code: str, message: str) -> VidringError:
    if code == protocol.E_RING_EXHAUSTED:
        return RingExhausted(f"pipeline {name!r}: {message}")
    if code == protocol.E_STOPPING:
        return DaemonUnavailable(f"pipeline {name!r}: {message}")
    return DaemonError(name, code, message)


def pid_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.Error:
        return True


def pid_namespace() -> int:
    """Inode of this process's pid namespace: pids mean the same only within one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0
