"""Start a daemon as a child process and wait until it serves; stop it and reap it.

Used by `vidring demo`, the benchmarks and the tests, so they all drive a
real daemon over its real sockets the way an operator's command line does.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from vidring.daemon import commands
from vidring.loader import protocol
from vidring.loader.client import Client, DaemonUnavailable, VidringError

# How often to retry connecting while a daemon starts (it probes videos first).
_START_POLL_S = 0.1


def start_daemon(name: str, serve_args: list[str], *, timeout_s: float = 60.0,
                 **popen_kwargs: Any) -> subprocess.Popen[bytes]:
    """Run `vidring serve --name NAME ...` and return once it answers a status request."""
    cmd = [sys.executable, "-m", "vidring.daemon.cli", "serve", "--name", name, *serve_args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, **popen_kwargs)
    deadline = time.monotonic() + timeout_s
    while True:
        code = proc.poll()
        if code is not None:
            raise DaemonUnavailable(f"daemon {name!r} exited with code {code} while starting")
        try:
            with Client(name, timeout_s=1.0, heartbeat=False) as client:
                status = client.status()
            if status.pid == proc.pid and status.phase == "serving":
                return proc
        except VidringError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait(timeout=10)
            raise DaemonUnavailable(f"daemon {name!r} did not start within {timeout_s:g} s")
        time.sleep(_START_POLL_S)


def stop_daemon(name: str, proc: subprocess.Popen[bytes], *, timeout_s: float = 15.0) -> int:
    """Ask the daemon to stop and wait for it; SIGTERM, then SIGKILL, past the deadline.

    A daemon that cannot be asked (it removed its socket) is stopping already: it is
    waited for, not signalled, so its exit code stays its own.
    """
    if proc.poll() is None:
        try:
            with Client(name, timeout_s=2.0, heartbeat=False) as client:
                client.call(commands.Stop.Request(), protocol.Empty)
        except VidringError:
            pass
    for escalate in (proc.terminate, proc.kill):
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            escalate()
    return proc.wait(timeout=10)
