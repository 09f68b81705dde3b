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
from typing import TYPE_CHECKING, TypeVar

import msgspec
import psutil
import zmq

from vidring.loader import paths, protocol
from vidring.loader.status import StatusRecord

if TYPE_CHECKING:
    from pathlib import Path

# Ping a daemon this often while waiting on a batch, so a slow batch is not a dead daemon.
PING_INTERVAL_S = 0.5
# Any message shows a client is alive.  Only for a client in another pid namespace (whose
# process the daemon cannot see) does silence past `--lease-timeout-s` cost its leases
# (daemon/clients.py): beat well within it.
HEARTBEAT_INTERVAL_S = 1.0
# While waiting, wake this often to send releases queued by other threads.
_SLICE_S = 0.05
# With no daemon of that name starting, wait at most this long for its socket to appear
# (a trainer started right after `vidring serve`), so a typo is not a long wait.
_APPEAR_S = 3.0
_START_POLL_S = 0.1
R = TypeVar("R")


class VidringError(Exception):
    """Base of every error vidring raises in the trainer."""


class DaemonUnavailable(VidringError):
    """No daemon answers for this pipeline (not started, exited, or stuck)."""


class RingExhausted(VidringError):
    """The trainer holds every slot of the ring, so no batch can be produced."""


class DaemonStarting(DaemonUnavailable):
    """The daemon is still probing its videos; `hello` waits for it (up to timeout_s)."""


class RingFull(VidringError):
    """This client holds every slot the daemon could fill: it must spill one (sequence.py)."""


class LeaseExpired(VidringError):
    """Leases were taken back from this client (another pid namespace, silent past
    --lease-timeout-s): arrays of the batches named may have been overwritten."""


class UntrustedPipeline(VidringError):
    """The pipeline's folder, socket or ring is not this user's own: another user's
    daemon could be behind it, so nothing is sent to it or read from it."""


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
        self._deadline = time.monotonic() + self.timeout_s  # for a daemon still starting
        sock_path = self._wait_for_socket()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        protocol.configure(self._sock)
        self._sock.connect(f"ipc://{sock_path}")
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending_releases: collections.deque[int] = collections.deque()
        self._pending_spills: collections.deque[int] = collections.deque()
        self._closed = False
        self.daemon_pid: int | None = None
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        if heartbeat:
            self._heartbeat = threading.Thread(target=self._beat, name=f"vidring-heartbeat-{name}",
                                               daemon=True)

    # -- public -----------------------------------------------------------

    def hello(self, shard: int = 0, num_shards: int = 1) -> protocol.HelloReply:
        """Introduce this client (reading part `shard` of `num_shards` of every epoch);
        waits (up to timeout_s) for a daemon still probing."""
        while True:
            try:
                hello = protocol.Hello(client_pid=os.getpid(), pid_ns=pid_namespace(),
                                       shard=shard, num_shards=num_shards)
                info = self.call(hello, protocol.HelloReply)
                break
            except DaemonStarting as exc:
                if time.monotonic() > self._deadline:
                    raise DaemonUnavailable(f"{exc} (still starting after "
                                            f"{self.timeout_s:g} s)") from None
                time.sleep(_START_POLL_S)
        # A daemon in another pid namespace (across a container boundary) has a pid
        # that means nothing here: rely on the timeout alone.
        self.daemon_pid = info.status.pid if same_pid_namespace(info.pid_ns) else None
        if self._heartbeat is not None and not self._heartbeat.is_alive():
            self._heartbeat.start()
        return info

    def get_batch(self, epoch: int, index: int) -> protocol.Lease:
        return self.call(protocol.GetBatch(epoch=epoch, index=index), protocol.Lease)

    def status(self) -> StatusRecord:
        return self.call(protocol.Status(), StatusRecord)

    def paths(self, indices: list[int]) -> list[str]:
        """The files of these manifest rows."""
        found: list[str] = []
        for start in range(0, len(indices), protocol.MAX_PATHS_ASKED):
            asked = indices[start:start + protocol.MAX_PATHS_ASKED]
            reply = self.call(protocol.Paths(indices=asked), protocol.PathsReply)
            found += [os.fsdecode(path) for path in reply.paths]
        return found

    def call(self, request: protocol.Request, reply_type: type[R]) -> R:
        """Send one request and wait for its reply (bounded by timeout_s)."""
        if request.reply_type is not reply_type:
            raise TypeError(f"{type(request).__name__} is answered with "
                            f"{request.reply_type}, not {reply_type}")
        with self._lock:
            self._flush_releases()
            reply = self._roundtrip(request)
            try:
                return protocol.decode_body(reply, reply_type)
            except protocol.ProtocolError as exc:
                self._discard(reply)  # a lease in a reply we cannot read still goes back
                raise DaemonError(self.name, protocol.E_BAD_MESSAGE,
                                  f"unreadable reply: {exc}") from None

    def release(self, lease_id: int) -> None:
        """Give a lease back; safe from any thread, never blocks."""
        self._pending_releases.append(lease_id)
        self._try_flush()

    def release_spilled(self, lease_id: int) -> None:
        """Give back the lease of a batch copied out of the ring (counted by the daemon)."""
        self._pending_spills.append(lease_id)
        self._try_flush()

    def _try_flush(self) -> None:
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
                self._sock.send(protocol.encode(protocol.Bye()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            self._sock.close(linger=0)
            self._ctx.term()

    def _wait_for_socket(self) -> Path:
        appear_by = time.monotonic() + min(self.timeout_s, _APPEAR_S)
        while True:
            sock_path = paths.control_socket_path(self.name)
            running = paths.daemon_running(self.name)
            if sock_path.exists():
                for path, folder in ((sock_path.parent.parent, True), (sock_path.parent, True),
                                     (sock_path, False)):
                    why = paths.distrust(path, folder=folder)
                    if why:
                        raise UntrustedPipeline(f"pipeline {self.name!r}: refusing to connect: "
                                                f"{why}")
                if running:
                    return sock_path
                raise DaemonUnavailable(
                    f"pipeline {self.name!r} is not running: its daemon (pid "
                    f"{paths.lock_pid(self.name) or '?'}) is gone; `vidring stop {self.name}` "
                    "removes what it left")
            if time.monotonic() > (self._deadline if running else appear_by):
                raise DaemonUnavailable(
                    f"no vidring daemon named {self.name!r} on this machine (no socket at "
                    f"{sock_path}); start one with `vidring serve --name {self.name} ...`")
            time.sleep(_START_POLL_S)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------

    def _roundtrip(self, request: protocol.Request) -> protocol.Reply:
        if self._closed:
            raise DaemonUnavailable(f"pipeline {self.name!r}: client is closed")
        protocol.check(request)  # a bad request fails here, not as a silent wait
        req_id = next(self._ids)
        what = protocol.type_name(type(request))
        self._send(protocol.encode(msgspec.structs.replace(request, id=req_id)))
        last_heard = time.monotonic()
        next_ping = last_heard + PING_INTERVAL_S
        while True:
            now = time.monotonic()
            if now - last_heard > self.timeout_s:
                raise DaemonUnavailable(
                    f"pipeline {self.name!r}: daemon did not answer {what!r} "
                    f"within {self.timeout_s:g} s"
                )
            # Releases queued by other threads while we wait must still go out:
            # the batch we wait for may need exactly that slot.
            self._flush_releases()
            wait_s = max(0.0, min(next_ping, last_heard + self.timeout_s, now + _SLICE_S) - now)
            if self._sock.poll(int(wait_s * 1000) + 1, zmq.POLLIN):
                try:
                    msg = protocol.decode(self._sock.recv(), protocol.ANSWERS)
                except protocol.ProtocolError as exc:
                    raise DaemonError(self.name, protocol.E_BAD_MESSAGE,
                                      f"unreadable answer: {exc}") from None
                last_heard = time.monotonic()
                if isinstance(msg, protocol.ErrorReply) and msg.id in (req_id, 0):
                    raise _error_for(self.name, msg.code, msg.message)
                if isinstance(msg, protocol.Reply) and msg.id == req_id:
                    return msg
                self._discard(msg)
            elif time.monotonic() >= next_ping:
                if self.daemon_pid is not None and not pid_alive(self.daemon_pid):
                    raise DaemonUnavailable(
                        f"pipeline {self.name!r}: daemon (pid {self.daemon_pid}) has exited"
                    )
                self._send(protocol.encode(protocol.Ping()))
                next_ping = time.monotonic() + PING_INTERVAL_S

    def _discard(self, msg: protocol.Message) -> None:
        # A lease granted to a request we gave up on must still be given back.
        if isinstance(msg, protocol.Reply) and msg.id != 0:
            try:
                lease = protocol.decode_body(msg, protocol.Lease)
            except protocol.ProtocolError:
                return  # not a lease: nothing to give back
            self._send(protocol.encode(protocol.Release(lease_ids=[lease.lease_id])))

    def _send(self, data: bytes) -> None:
        try:
            self._sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            raise DaemonUnavailable(f"pipeline {self.name!r}: daemon is not reading") from None

    def _flush_releases(self) -> None:
        for pending, spilled in ((self._pending_releases, False), (self._pending_spills, True)):
            ids: list[int] = []
            while pending:
                ids.append(pending.popleft())
            if ids and not self._closed:
                try:
                    self._send(protocol.encode(protocol.Release(lease_ids=ids, spilled=spilled)))
                except DaemonUnavailable:
                    # Not sent (the daemon is not reading): keep them for the next flush,
                    # since a live trainer's leases are never taken back.
                    pending.extendleft(reversed(ids))

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            if not self._lock.acquire(blocking=False):
                continue  # the holder is talking to the daemon right now
            try:
                if self._closed:
                    return
                self._flush_releases()
                self._sock.send(protocol.encode(protocol.Heartbeat()), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
            finally:
                self._lock.release()


def _error_for(name: str, code: str, message: str) -> VidringError:
    if code == protocol.E_RING_EXHAUSTED:
        return RingExhausted(f"pipeline {name!r}: {message}")
    if code == protocol.E_STOPPING:
        return DaemonUnavailable(f"pipeline {name!r}: {message}")
    if code == protocol.E_STARTING:
        return DaemonStarting(f"pipeline {name!r}: {message}")
    if code == protocol.E_RING_FULL:
        return RingFull(f"pipeline {name!r}: {message}")
    if code == protocol.E_LEASE_EXPIRED:
        return LeaseExpired(f"pipeline {name!r}: {message}")
    return DaemonError(name, code, message)


def pid_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.Error:
        return True


def same_pid_namespace(other: int) -> bool:
    """Whether a pid from namespace `other` names a process here (0: unknown, so no)."""
    return other != 0 and other == pid_namespace()


def pid_namespace() -> int:
    """Inode of this process's pid namespace: pids mean the same only within one."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0
