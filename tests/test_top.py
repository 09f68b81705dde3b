"""`vidring top` in a real terminal (a pty, 80x24): it shows what the daemon publishes,
switches pipelines with Tab, and `q` leaves it with the terminal restored."""

from __future__ import annotations

import fcntl
import os
import re
import select
import struct
import subprocess
import sys
import termios
from typing import TYPE_CHECKING

from tests.support import Daemons, status, wait_until
from vidring.loader import ClipDataset

if TYPE_CHECKING:
    from pathlib import Path

_ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-Za-z]|\x1b[=>]")


class Terminal:
    """A child process on the slave side of a pty of 80x24; the screen's text, stripped of
    escape sequences, accumulates in `seen`."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.saved = termios.tcgetattr(slave)
        self.slave = slave
        self.proc = subprocess.Popen([sys.executable, "-m", "vidring.daemon.cli", *args],
                                     stdin=slave, stdout=slave, stderr=slave,
                                     env={**os.environ, "TERM": "xterm-256color",
                                          "COLUMNS": "80", "LINES": "24"},
                                     start_new_session=True)
        self.seen = b""

    def read(self) -> str:
        while select.select([self.master], [], [], 0.1)[0]:
            try:
                self.seen += os.read(self.master, 65536)
            except OSError:
                break
        return _ANSI.sub(b"", self.seen).decode(errors="replace")

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.master)
        os.close(self.slave)


def test_top_shows_the_pipeline_switches_and_quits(daemons: Daemons, manifest: Path) -> None:
    first = daemons.start(manifest, workers=2, slots=2)
    second = daemons.start(manifest, workers=1, slots=2)
    with ClipDataset(first) as ds:
        for i in range(len(ds)):
            ds[i]
    wait_until(lambda: status(first).clips_total > 0, 10, "clips decoded")
    term = Terminal("top", first)
    try:
        wait_until(lambda: "trainer wait" in term.read(), 30, "the first frame")
        screen = term.read()
        assert f">{first}" in screen  # the overview marks the one shown
        assert second in screen
        assert "queue" in screen
        assert "workers 2 / 2 wanted" in screen
        assert "ms/clip p50/p95" in screen
        assert "open" in screen
        assert "preroll" in screen
        # Each frame is drawn from the home position: the newest whole one fits 80 columns.
        frame = [f for f in term.seen.split(b"\x1b[H") if b"trainer wait" in f][-1]
        lines = _ANSI.sub(b"", frame).decode(errors="replace").splitlines()
        assert max(len(line.rstrip()) for line in lines) <= 80, lines
        term.seen = b""
        term.type(b"\t")
        wait_until(lambda: f">{second}" in term.read(), 10, "Tab to the second pipeline")
        term.type(b"q")
        assert term.proc.wait(timeout=10) == 0
        # The terminal is left as it was found (cbreak mode undone).
        assert termios.tcgetattr(term.slave)[3] == term.saved[3]
    finally:
        term.close()
    assert term.proc.returncode == 0


def test_top_of_a_pipeline_that_is_not_there() -> None:
    done = subprocess.run([sys.executable, "-m", "vidring.daemon.cli", "top",
                           f"absent-{os.getpid()}", "--once"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1
    assert "no running pipeline" in done.stderr


def test_top_into_a_pipe_prints_one_frame_and_exits(daemons: Daemons, manifest: Path) -> None:
    name = daemons.start(manifest, workers=1, slots=2)
    done = subprocess.run([sys.executable, "-m", "vidring.daemon.cli", "top", name],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert name in done.stdout
    assert "workers 1 / 1 wanted" in done.stdout
    assert done.stdout.endswith("\n")  # the shell's prompt starts a line of its own


def test_top_into_a_pipe_with_no_pipeline_says_so() -> None:
    """From cron or a script: never a wait without end."""
    env = {**os.environ, "VIDRING_RUNTIME_DIR": f"/tmp/vidring-top-none-{os.getpid()}"}
    done = subprocess.run([sys.executable, "-m", "vidring.daemon.cli", "top"],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 1
    assert "no pipelines running" in done.stderr
