"""`vidring demo` runs the whole path and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil


def test_demo_trains_and_cleans_up() -> None:
    before = set(os.listdir("/dev/shm"))
    done = subprocess.run(
        [sys.executable, "-m", "vidring.daemon.cli", "demo", "--epochs", "2", "--videos", "32"],
        capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validation accuracy" in done.stdout
    assert "clips/s" in done.stdout and "queue depth" in done.stdout
    assert "left in /dev/shm: nothing" in done.stdout
    leaked = {f for f in set(os.listdir("/dev/shm")) - before if f.startswith("vidring")}
    assert not leaked
    strays = [p for p in psutil.process_iter(["cmdline"])
              if "vidring.daemon.worker" in " ".join(p.info["cmdline"] or [])
              and "demo-" in " ".join(p.info["cmdline"] or [])]
    assert not strays, f"demo workers still alive: {strays}"
