"""Run a vidring daemon for a benchmark: start it, connect a ClipDataset, always stop it.

Shared by throughput.py and handoff.py; measures nothing itself. vidring is imported only
when a daemon is started, so the other loaders run without the package installed.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

CLIENT_TIMEOUT_S = 10
CONNECT_TIMEOUT_S = 120  # a cold start probes every video before serving
CONNECT_RETRY_S = 0.2
STATUS_POLL_S = 0.05
STATUS_TIMEOUT_S = 15  # one `vidring status` run, Python start-up included
STOP_TIMEOUT_S = 30
EXIT_TIMEOUT_S = 30  # the daemon's own shutdown: stop workers, unlink the ring
KILL_WAIT_S = 10
LOG_TAIL_BYTES = 4000


def cli_command(*args: str) -> list[str]:
    """The `vidring` command line, run with this interpreter (same as the console script)."""
    return [sys.executable, "-m", "vidring.daemon.cli", *args]


@contextlib.contextmanager
def serving(manifest_path: Path, name: str, *, batch_size: int, clip_length: int,
            width: int, height: int, workers: int, slots: int, log_path: Path,
            seed: int = 0, dtype: str | None = None) -> Iterator:
    """Start `vidring serve` and yield a connected ClipDataset; close it and stop the
    daemon on exit, killing it if it does not exit in time."""
    command = cli_command(
        "serve", "--manifest", str(manifest_path), "--name", name,
        "--batch-size", str(batch_size), "--clip-length", str(clip_length),
        "--size", f"{height}x{width}", "--workers", str(workers), "--slots", str(slots),
        "--seed", str(seed), *(["--dtype", dtype] if dtype else []))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT)
    dataset = None
    try:
        dataset = _connect(name, process, log_path)
        yield dataset
    finally:
        try:
            if dataset is not None:
                dataset.close()
        finally:
            _stop(name, process)


def slot_counts(name: str) -> dict[str, int]:
    """`vidring status NAME --json`'s slots: {total, free, filling, ready, leased}."""
    done = subprocess.run(cli_command("status", name, "--json"), capture_output=True,
                          text=True, timeout=STATUS_TIMEOUT_S, check=True)
    return json.loads(done.stdout)["slots"]


def wait_for_slots(name: str, condition: Callable[[dict[str, int]], bool],
                   timeout_s: float) -> dict[str, int]:
    """Poll slot_counts until `condition` holds; return the counts that satisfied it."""
    deadline = time.monotonic() + timeout_s
    while not condition(counts := slot_counts(name)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"vidring {name}: slots still {counts} after {timeout_s:g} s")
        time.sleep(STATUS_POLL_S)
    return counts


def indices_across_epochs(dataset) -> Iterator[int]:
    """0, 1, ..., len-1, then on_epoch_end() and again, as Keras asks for them unshuffled."""
    while True:
        if len(dataset) == 0:
            raise RuntimeError("vidring reports an epoch of 0 batches")
        yield from range(len(dataset))
        dataset.on_epoch_end()


def _connect(name: str, process: subprocess.Popen, log_path: Path):
    from vidring.loader import ClipDataset, DaemonUnavailable

    deadline = time.monotonic() + CONNECT_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"vidring daemon exited with status {process.returncode}:\n"
                               f"{_log_tail(log_path)}")
        try:
            return ClipDataset(name, timeout_s=CLIENT_TIMEOUT_S)
        except DaemonUnavailable as error:
            if time.monotonic() > deadline:
                raise TimeoutError(f"vidring {name}: no connection after "
                                   f"{CONNECT_TIMEOUT_S} s:\n{_log_tail(log_path)}") from error
            time.sleep(CONNECT_RETRY_S)


def _stop(name: str, process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    try:
        stopped = subprocess.run(cli_command("stop", name), capture_output=True,
                                 timeout=STOP_TIMEOUT_S).returncode == 0
    except subprocess.TimeoutExpired:
        stopped = False
    if not stopped:
        process.terminate()
    try:
        process.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=KILL_WAIT_S)


def _log_tail(log_path: Path) -> str:
    return Path(log_path).read_bytes()[-LOG_TAIL_BYTES:].decode(errors="replace")
