"""Run a vidring daemon for a benchmark: start it, connect a ClipDataset, always stop it.

Shared by throughput.py and handoff.py; measures nothing itself.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from vidring.daemon.launch import start_daemon, stop_daemon
from vidring.loader import Client, ClipDataset

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from vidring.loader.status import SlotCounts

CLIENT_TIMEOUT_S = 10
START_TIMEOUT_S = 120  # a cold start probes every video before serving
STATUS_POLL_S = 0.02


@contextlib.contextmanager
def serving(manifest_path: Path, name: str, *, batch_size: int, clip_length: int,
            width: int, height: int, workers: int, slots: int, log_path: Path,
            seed: int = 0, dtype: str | None = None,
            extra: list[str] | None = None) -> Iterator[ClipDataset]:
    """Start `vidring serve` and yield a connected ClipDataset; close and stop on exit."""
    args = ["--manifest", str(manifest_path), "--batch-size", str(batch_size),
            "--clip-length", str(clip_length), "--size", f"{height}x{width}",
            "--workers", str(workers), "--slots", str(slots), "--seed", str(seed),
            *(["--dtype", dtype] if dtype else []), *(extra or [])]
    with open(log_path, "wb") as log:
        process = start_daemon(name, args, timeout_s=START_TIMEOUT_S, stdout=log, stderr=log)
    try:
        with ClipDataset(name, timeout_s=CLIENT_TIMEOUT_S) as dataset:
            yield dataset
    finally:
        stop_daemon(name, process)


def slot_counts(name: str) -> SlotCounts:
    """The daemon's slots: total, free, filling, ready, leased."""
    with Client(name, timeout_s=CLIENT_TIMEOUT_S, heartbeat=False) as client:
        return client.status().slots


def wait_for_slots(name: str, condition: Callable[[SlotCounts], bool],
                   timeout_s: float) -> dict[str, int]:
    """Poll slot_counts until `condition` holds; return the counts that satisfied it."""
    deadline = time.monotonic() + timeout_s
    while not condition(counts := slot_counts(name)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"vidring {name}: slots still {counts} after {timeout_s:g} s")
        time.sleep(STATUS_POLL_S)
    return counts


def indices_across_epochs(dataset: ClipDataset) -> Iterator[int]:
    """0, 1, ..., len-1, then the next epoch, as an unshuffled trainer asks for them."""
    while True:
        yield from range(len(dataset))
        dataset.set_epoch(dataset.epoch + 1)
