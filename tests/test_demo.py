"""`vidring demo` runs the whole path and leaves nothing of its own behind."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from vidring.loader import paths
from vidring.loader.ring import segment_name


@pytest.mark.slow
def test_demo_trains_and_cleans_up() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "vidring.daemon.cli", "demo", "--epochs", "2", "--videos", "32"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=240)
    finally:
        proc.kill()
    assert proc.returncode == 0, out + err
    assert "validation accuracy" in out
    assert "clips/s" in out
    assert "queue depth" in out
    assert "left in /dev/shm: nothing" in out
    # Only this demo's pipelines: other vidring pipelines may run on this machine.
    names = [f"demo-{proc.pid}-{part}" for part in ("train", "val")]
    for name in names:
        assert not os.path.exists(f"/dev/shm/{segment_name(name)}"), name
        assert not paths.lock_path(name).exists(), name
    strays = [p for p in psutil.process_iter(["cmdline"])
              if "vidring.daemon.worker" in " ".join(p.info["cmdline"] or [])
              and any(segment_name(n) in " ".join(p.info["cmdline"]) for n in names)]
    assert not strays, f"demo workers still alive: {strays}"
