"""systemd's notify protocol (sd_notify(3)): a few lines in a datagram to $NOTIFY_SOCKET.

Under `Type=notify` the daemon says READY=1 once its workers are up and the first
batch is ready, STATUS= with its queue depth and rate, WATCHDOG=1 from the serving
loop at half of `WatchdogSec=` (a loop that stops turning is restarted), and
STOPPING=1 when it stops.  While probing, EXTEND_TIMEOUT_USEC keeps a long start of a
big dataset from being taken for a hang.  Outside systemd every call does nothing.

The variables are taken out of the environment at once, so no worker or probe process
inherits them (`NotifyAccess=main` would ignore their messages anyway).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger("vidring.daemon")

_STATUS_EVERY_S = 2.0
_EXTEND_BY_S = 60.0


class Notifier:
    def __init__(self, environ: dict[str, str] | os._Environ[str] = os.environ) -> None:
        address = environ.pop("NOTIFY_SOCKET", "")
        usec = environ.pop("WATCHDOG_USEC", "")
        pid = environ.pop("WATCHDOG_PID", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        for_us = not pid or pid == str(os.getpid())
        self.watchdog_every_s = int(usec) / 1e6 / 2 if usec.isdigit() and for_us else None
        self.ready = False
        self._last_status = self._last_watchdog = self._last_extend = float("-inf")

    @property
    def active(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except OSError as exc:  # systemd gone or the socket full: never stop serving for it
            log.debug("sd_notify %s: %s", lines, exc)

    def starting(self, now: float, status: str) -> None:
        """While probing: STATUS, and more time for the start."""
        if now - self._last_extend >= _STATUS_EVERY_S:
            self._last_extend = now
            self.send(f"STATUS={status}", f"EXTEND_TIMEOUT_USEC={int(_EXTEND_BY_S * 1e6)}")

    def serving(self, now: float, *, batch_ready: Callable[[], bool],
                status: Callable[[], str]) -> None:
        """Each turn of the serving loop (the callables are asked only when needed)."""
        if self._sock is None:
            return
        if not self.ready and batch_ready():
            self.ready = True
            self._last_status = now
            self.send("READY=1", f"STATUS={status()}")
        elif self.ready and now - self._last_status >= _STATUS_EVERY_S:
            self._last_status = now
            self.send(f"STATUS={status()}")
        if self.watchdog_every_s is not None and now - self._last_watchdog >= self.watchdog_every_s:
            self._last_watchdog = now
            self.send("WATCHDOG=1")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
