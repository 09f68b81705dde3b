"""systemd's notify protocol against a real datagram socket, path and abstract: READY=1
only once a batch is ready, WATCHDOG=1 at its interval, STOPPING=1 at the stop, and no
worker sees NOTIFY_SOCKET."""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support import Daemons, status, wait_until

if TYPE_CHECKING:
    from collections.abc import Iterator

WATCHDOG_USEC = 400_000  # WatchdogSec=0.4: pings every 0.2 s


class Listener:
    """systemd's end: a datagram socket collecting (arrival time, fields) messages."""

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.address = address
        self.messages: list[tuple[float, list[str]]] = []

    def collect(self) -> list[tuple[float, list[str]]]:
        while True:
            try:
                data = self.sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return self.messages
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def first(self, field: str) -> tuple[float, list[str]] | None:
        return next((m for m in self.collect() if field in m[1]), None)


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        address = f"@vidring-test-notify-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + address[1:])
    try:
        yield Listener(sock, address)
    finally:
        sock.close()


def test_ready_watchdog_status_and_stopping(daemons: Daemons, manifest: Path,
                                            listener: Listener) -> None:
    name = daemons.start(manifest, workers=2, slots=2, env={
        "NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)})
    ready = wait_until(lambda: listener.first("READY=1"), 30, "READY=1")
    # READY=1 came once a batch was ready: its STATUS says so, and status agrees.
    status_line = next(f for f in ready[1] if f.startswith("STATUS="))
    assert int(status_line.split("=")[1].split("/")[0]) >= 1, status_line
    assert status(name).slots.ready >= 1
    before_ready = [m for m in listener.messages if m[0] < ready[0]]
    assert not any("READY=1" in fields for _, fields in before_ready)
    listener.collect()
    listener.messages.clear()  # from here on each ping is read within 50 ms of its arrival
    wait_until(lambda: len([m for m in listener.collect() if "WATCHDOG=1" in m[1]]) >= 10, 10,
               "ten watchdog pings", interval_s=0.02)
    pings = [t for t, fields in listener.messages if "WATCHDOG=1" in fields]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # within WatchdogSec, every time
    assert min(gaps) > WATCHDOG_USEC / 1e6 / 4, gaps  # at about half of it, not every tick
    for worker in daemons.workers(name):
        environ = Path(f"/proc/{worker.pid}/environ").read_bytes().split(b"\0")
        assert not any(v.startswith((b"NOTIFY_SOCKET=", b"WATCHDOG_")) for v in environ)
    daemons.stop(name)
    assert wait_until(lambda: listener.first("STOPPING=1"), 5, "STOPPING=1")


def test_no_notify_socket_no_messages(daemons: Daemons, manifest: Path,
                                      listener: Listener) -> None:
    name = daemons.start(manifest, workers=1, slots=2)
    wait_until(lambda: status(name).slots.ready >= 1, 30, "a batch ready")
    daemons.stop(name)
    assert listener.collect() == []
