"""Test helpers: real daemons that are always cleaned up, waits with deadlines, reference decodes.

Fixtures that use them live in conftest.py.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import subprocess
import sys
import time
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import av
import numpy as np
import psutil

from vidring.daemon.frames import DEFAULT_INTERPOLATION, INTERPOLATIONS
from vidring.daemon.launch import start_daemon, stop_daemon
from vidring.loader import Client, ClipDataset, paths
from vidring.loader.ring import segment_name

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from vidring.loader.status import StatusRecord

# Test videos: 64x48, GOP 10 with B-frames, so clips cross GOP boundaries.
WIDTH, HEIGHT, GOP = 64, 48, 10
N_VIDEOS = 16
CLIP = 6
SIZE = (24, 32)  # H, W of the delivered clips

_names = itertools.count()


class FakeClock:
    """A monotonic clock that moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_until(predicate: Callable[[], Any], timeout_s: float, what: str,
               interval_s: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy; fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)


def video_frames(index: int, n_frames: int) -> np.ndarray:
    """Distinct content per video and per frame: a moving bar and a per-video tint."""
    rng = np.random.default_rng(index)
    frames = rng.integers(0, 40, size=(n_frames, HEIGHT, WIDTH, 3), dtype=np.uint8)
    frames[..., 0] += np.uint8(index * 13 % 200)
    for t in range(n_frames):
        frames[t, :, (3 * t + index) % WIDTH] = 250
        frames[t, (2 * t) % HEIGHT, :] = 200
    return frames


def reference_decode(path: str | Path, height: int, width: int) -> np.ndarray:
    """Every frame of `path`, decoded sequentially from the start by plain PyAV, and resized
    with the same swscale filter (a fresh reformatter, default threads)."""
    with av.open(str(path)) as container:
        frames = [f.reformat(width=width, height=height, format="rgb24",
                             interpolation=INTERPOLATIONS[DEFAULT_INTERPOLATION]).to_ndarray()
                  for f in container.decode(video=0)]
    return np.stack(frames)


def reference_sample(path: str | Path, prov: np.void, size: tuple[int, int],
                     interpolation: str = DEFAULT_INTERPOLATION) -> np.ndarray:
    """The (T, H, W, 3) uint8 clip a provenance row describes, made independently: frames
    decoded sequentially from the start, the upright box found by turning an index grid,
    cut with FFmpeg's crop filter, resized with the same swscale filter, turned upright
    and flipped with numpy."""
    frames = _decoded(str(path))
    y0, x0, h, w = (int(v) for v in prov["crop"])
    turns = int(prov["rotation"]) // 90 % 4
    out = []
    for index in prov["frames"]:
        frame = frames[int(index)]
        grid = np.arange(frame.height * frame.width).reshape(frame.height, frame.width)
        cells = np.rot90(grid, turns)[y0:y0 + h, x0:x0 + w]
        rows, cols = cells // frame.width, cells % frame.width
        sy, sx = int(rows.min()), int(cols.min())
        sh, sw = int(rows.max()) - sy + 1, int(cols.max()) - sx + 1
        graph = av.filter.Graph()
        source = graph.add_buffer(template=None, width=frame.width, height=frame.height,
                                  format=frame.format.name, time_base=Fraction(1, 30))
        crop = graph.add("crop", f"w={sw}:h={sh}:x={sx}:y={sy}:exact=1")
        sink = graph.add("buffersink")
        source.link_to(crop)
        crop.link_to(sink)
        graph.configure()
        graph.push(frame)
        height, width = (size[1], size[0]) if turns % 2 else size
        rgb = graph.pull().reformat(width=width, height=height, format="rgb24",
                                    interpolation=INTERPOLATIONS[interpolation]).to_ndarray()
        rgb = np.rot90(rgb, turns)
        out.append(rgb[:, ::-1] if prov["flip"] else rgb)
    return np.stack(out)


@functools.lru_cache(maxsize=32)
def _decoded(path: str) -> list[Any]:
    with av.open(path) as container:
        return list(container.decode(video=0))


class Daemons:
    """Starts real daemons; on teardown stops each, reaps its workers, checks /dev/shm."""

    def __init__(self, probe_cache: Path) -> None:
        self.probe_cache = probe_cache
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, manifest: Path | str, *, name: str | None = None, batch_size: int = 4,
              clip_length: int = CLIP, size: tuple[int, int] = SIZE, workers: int = 2,
              slots: int = 4, seed: int = 0, dtype: str = "uint8",
              extra: list[str] | None = None, env: dict[str, str] | None = None,
              log: Path | None = None) -> str:
        """`log`: where the daemon's log (its stderr) goes; the test's own stderr if None."""
        name = name or f"t{os.getpid()}-{next(_names)}"
        args = ["--manifest", str(manifest), "--batch-size", str(batch_size),
                "--clip-length", str(clip_length), "--size", f"{size[0]}x{size[1]}",
                "--workers", str(workers), "--slots", str(slots), "--seed", str(seed),
                "--dtype", dtype, "--probe-cache", str(self.probe_cache), "--log-level", "warning",
                *(extra or [])]
        with contextlib.ExitStack() as stack:
            stderr = None if log is None else stack.enter_context(log.open("ab"))
            self.running[name] = start_daemon(name, args, timeout_s=60, stderr=stderr,
                                              env=None if env is None else {**os.environ, **env})
        return name

    def pid(self, name: str) -> int:
        return self.running[name].pid

    def workers(self, name: str) -> list[psutil.Process]:
        """The daemon's live worker processes (not ones exited but not yet reaped)."""
        try:
            children = psutil.Process(self.pid(name)).children()
        except psutil.NoSuchProcess:
            return []
        live = []
        for child in children:
            try:
                if child.status() != psutil.STATUS_ZOMBIE:
                    live.append(child)
            except psutil.NoSuchProcess:
                pass
        return live

    def stop(self, name: str) -> None:
        proc = self.running.pop(name)
        workers = []
        try:
            workers = psutil.Process(proc.pid).children()
        except psutil.NoSuchProcess:
            pass
        code = stop_daemon(name, proc)
        _, alive = psutil.wait_procs(workers, timeout=10)
        for p in alive:
            p.kill()
        leaked = os.path.exists(f"/dev/shm/{segment_name(name)}")
        if leaked:  # clean up even when the assertion below fails the test
            os.unlink(f"/dev/shm/{segment_name(name)}")
        assert not alive, f"workers of {name} still alive after stop: {alive}"
        assert not leaked, f"segment of {name} left in /dev/shm after stop"
        assert code == 0, f"daemon {name} exited with code {code}"
        left = [p for p in (paths.lock_path(name), paths.runtime_dir(name)) if p.exists()]
        assert not left, f"{name} left {left} after stop"

    def close(self) -> None:
        errors = []
        for name in list(self.running):
            try:
                self.stop(name)
            except AssertionError as exc:
                errors.append(str(exc))
        assert not errors, errors


def status(name: str) -> StatusRecord:
    with Client(name, timeout_s=5, heartbeat=False) as client:
        return client.status()


def epoch_bytes(ds: ClipDataset) -> list[tuple[bytes, bytes, bytes]]:
    """The bytes of x, y and provenance of every batch of the current epoch, in index
    order; then the dataset moves on to the next epoch."""
    out = []
    for i in range(len(ds)):
        b = ds.batch(i)
        out.append((b.x.tobytes(), b.y.tobytes(), b.provenance.tobytes()))
    ds.set_epoch(ds.epoch + 1)
    return out


def cli(*args: str, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the `vidring` command as an operator would."""
    return subprocess.run([sys.executable, "-m", "vidring.daemon.cli", *args],
                          capture_output=True, text=True, timeout=timeout_s)
