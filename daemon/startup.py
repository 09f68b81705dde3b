"""Build a daemon from its config: every part made, or none left behind.

Each resource is pushed on an ExitStack as it is made, so a failure at any
step unwinds what came before it (lock, ring, sockets) and a daemon is
never half-built.  The stack unwinds in the order of NOTE [ shutdown ] in
server.py: workers, sockets, ring, runtime folder and lock.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import zmq
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from vidring.daemon import sampler
from vidring.daemon.config import default_max_workers
from vidring.daemon.decode import cuda_unavailable
from vidring.daemon.faults import FaultLedger
from vidring.daemon.manifest import Manifest, load_manifest
from vidring.daemon.metrics import Metrics
from vidring.daemon.notify import Notifier
from vidring.daemon.pool import WorkerPool
from vidring.daemon.probe import ProbeCache, ProbeError, VideoInfo, default_cache_dir
from vidring.daemon.production import Production
from vidring.daemon.runtime import RuntimeDir, StartupError
from vidring.daemon.schedule import Scheduler, SlotRecord
from vidring.daemon.server import Daemon, Parts
from vidring.daemon.starting import StopRequested, answer_while
from vidring.daemon.targets import Targets, targets
from vidring.daemon.tasks import PlanSettings
from vidring.daemon.telemetry import Telemetry
from vidring.loader import protocol
from vidring.loader.ring import Ring, RingLayout, segment_name

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from vidring.daemon.config import ServeConfig
    from vidring.daemon.workers import Process, Starter

log = logging.getLogger("vidring.daemon")


def build(config: ServeConfig, stop: threading.Event, notifier: Notifier) -> Daemon:
    """The daemon, serving once its loop runs; StopRequested if `stop` is set while probing."""
    with contextlib.ExitStack() as stack:
        runtime = RuntimeDir.claim(config.name)
        stack.callback(runtime.release)
        ctx = zmq.Context()
        stack.callback(ctx.destroy, linger=0)
        # Bound first, so trainers and `vidring status` hear "probing" rather than nothing.
        control = _bind(ctx, runtime.control_endpoint)
        manifest = load_manifest(config.manifest)
        labels = targets(manifest, config.labels)
        paths = [str(row.path) for row in manifest.rows]
        faults = FaultLedger(paths, config.retry_delay_s)
        infos = _probe_all(config, manifest, faults, control, stop, notifier)
        if len(faults.quarantine) == len(manifest):
            reason = faults.last_error.reason if faults.last_error else ""
            raise StartupError(f"no readable video in {config.manifest}: {reason}")
        shard = sampler.Shard(config.shard, config.num_shards)
        sampling = config.sampling()
        windows = _windows(manifest, infos)
        rows = _rows_to_plan(sampling, manifest, windows, faults)
        batches = sampler.batches_per_epoch(len(rows), config.batch_size, shard, sampling)
        if batches < 1:
            samples = sampler.samples_in(len(rows), shard, sampling.clips_per_video)
            raise StartupError(f"batch size {config.batch_size} is larger than the "
                               f"{samples} clips an epoch of {config.manifest} has for this "
                               "shard")
        layout = RingLayout(config.slots, config.batch_size, config.clip_length, config.height,
                            config.width, config.dtype, y_width=labels.width)
        ring = Ring.create(segment_name(config.name), layout)
        stack.callback(ring.close)
        stack.callback(ring.unlink)
        # Lease ids start at a random base so a release meant for an earlier
        # daemon of this name can never free one of ours.
        sched = Scheduler(config.slots, batches, config.batch_size,
                          on_change=_publisher(ring), first_lease_id=secrets.randbits(48))
        work = _bind(ctx, runtime.work_endpoint)
        stats = _bind(ctx, runtime.stats_endpoint, zmq.PUB)
        stats.setsockopt(zmq.SNDHWM, 8)  # a watcher that falls behind misses seconds
        telemetry = Telemetry(config.name, stats, _metrics(config))
        plan = PlanSettings(np.array([i.frames if i else 1 for i in infos], dtype=np.int64),
                            config.seed, config.batch_size, sampling, shard,
                            None if len(rows) == len(manifest) else rows,
                            tuple(i.keyframe_indices if i else np.zeros(1, np.int64)
                                  for i in infos),
                            None if all(r.start_s is None and r.end_s is None
                                        for r in manifest.rows) else windows,
                            None if sampling.fps is None else tuple(
                                i.seconds() if i else np.zeros(1) for i in infos))
        production = Production(plan, config.augment(), paths, infos, labels, ring, faults)
        decode = decoder_to_use(config)
        pool = WorkerPool(work, python_starter(runtime.work_endpoint, ring.name, ring.ring_id,
                                               config, decode),
                          config.workers, task_timeout_s=config.task_timeout_s,
                          max_workers=config.max_workers or default_max_workers())
        stack.callback(pool.shutdown)
        resources = stack.pop_all()  # the daemon's from here: NOTE [ shutdown ] closes it
    try:
        daemon = Daemon(Parts(config, manifest, labels, ring, sched, faults, production, pool,
                              control, resources, stop, notifier, telemetry))
    except BaseException:
        resources.close()  # a daemon that could not be made leaves nothing behind either
        raise
    _log_start(config, manifest, labels, layout, batches)
    return daemon


def serve(config: ServeConfig) -> int:
    # SIGTERM, Ctrl-C and SIGHUP (its terminal closed) stop it, while it starts as while
    # it serves: a daemon nobody watches any more must not run on unattended.
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    notifier = Notifier()  # takes NOTIFY_SOCKET out of the environment workers inherit
    try:
        daemon = build(config, stop, notifier)
    except StopRequested:
        notifier.stopping()
        log.info("stopped %r while probing", config.name)
        return 0
    except BaseException:
        notifier.stopping()
        raise
    daemon.serve_forever()  # returns at once if a stop came meanwhile
    return 0


def _probe_all(config: ServeConfig, manifest: Manifest, faults: FaultLedger,
               control: zmq.Socket[Any], stop: threading.Event,
               notifier: Notifier) -> list[VideoInfo | None]:
    try:
        cache = ProbeCache(config.probe_cache or default_cache_dir())
    except ProbeError as exc:
        raise StartupError(str(exc)) from None
    started = time.monotonic()
    rows: list[str | Path] = [row.path for row in manifest.rows]

    with progress_bar(len(rows)) as shown:

        def probe(progress: Callable[[int], None]) -> list[VideoInfo | str]:
            def tell(done: int) -> None:
                progress(done)  # for `vidring status`
                shown(done)  # for the operator's terminal
                notifier.starting(time.monotonic(), f"probing {done}/{len(rows)} videos")

            return cache.get_many(rows, processes=max(1, config.workers), progress=tell,
                                  cancel=stop)

        results = answer_while(probe, control, config, len(manifest), str(manifest.source),
                               stop)
    infos: list[VideoInfo | None] = []
    for index, result in enumerate(results):
        if isinstance(result, str):
            infos.append(None)
            faults.probe_failed(index, result)
        else:
            infos.append(result)
    log.info("probed %d videos in %.1f s", len(results), time.monotonic() - started)
    return infos


class _Rate(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(f"{task.speed or 0:6.0f} videos/s")


@contextlib.contextmanager
def progress_bar(total: int) -> Iterator[Callable[[int], None]]:
    """A bar with counts and rate on a terminal's stderr; nothing under systemd or a pipe."""
    columns = (TextColumn("probing"), BarColumn(), MofNCompleteColumn(), _Rate(),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True,
                  disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("probe", total=total)
        yield lambda done: bar.update(task, completed=done)


def _windows(manifest: Manifest, infos: list[VideoInfo | None]) -> np.ndarray:
    """Per row, the frames [first, stop) its start/end allow (all of them by default)."""
    windows = np.zeros((len(infos), 2), dtype=np.int64)
    for index, (row, info) in enumerate(zip(manifest.rows, infos, strict=True)):
        if info is None:
            windows[index] = (0, 1)
        elif row.start_s is None and row.end_s is None:
            windows[index] = (0, info.frames)
        else:
            windows[index] = info.frame_range(row.start_s, row.end_s)
    return windows


def _rows_to_plan(sampling: sampler.Sampling, manifest: Manifest, windows: np.ndarray,
                  faults: FaultLedger) -> np.ndarray:
    """The manifest rows epochs draw from: all, but rows whose start/end select no frame,
    and short ones under --short-policy skip."""
    keep = []
    for index, (row, (first, stop)) in enumerate(zip(manifest.rows, windows, strict=True)):
        frames = int(stop - first)
        if frames <= 0:
            faults.left_out(index, f"start {row.start_s} s, end {row.end_s} s: no frame of the "
                                   "video lies there; left out")
        elif sampling.short == "skip" and frames < sampling.frames_needed:
            faults.left_out(index, f"shorter than a clip ({frames} frames, "
                                   f"{sampling.frames_needed} needed): left out "
                                   "(--short-policy skip)")
        else:
            keep.append(index)
    return np.array(keep, dtype=np.int64)


def _metrics(config: ServeConfig) -> Metrics | None:
    if config.metrics_port is None:
        return None
    metrics = Metrics(config.name)
    try:
        port = metrics.serve(config.metrics_port, config.metrics_address)
    except OSError as exc:
        raise StartupError(f"metrics on {config.metrics_address}:{config.metrics_port}: "
                           f"{exc.strerror or exc}") from None
    log.info("metrics on http://%s:%d/metrics", config.metrics_address, port)
    return metrics


def _bind(ctx: zmq.Context[Any], endpoint: str, kind: int = zmq.ROUTER) -> zmq.Socket[Any]:
    sock: zmq.Socket[Any] = ctx.socket(kind)
    protocol.configure(sock)
    old_umask = os.umask(0o077)  # the ipc socket file: owner only
    try:
        sock.bind(endpoint)
    finally:
        os.umask(old_umask)
    return sock


def decoder_to_use(config: ServeConfig) -> str:
    """`--decode cuda` where a GPU decodes; the CPU, said once in the log, where none can."""
    if config.decode != "cuda":
        return "cpu"
    why = cuda_unavailable()
    if why:
        log.warning("--decode cuda: %s; decoding on the CPU", why)
        return "cpu"
    return "cuda"


def python_starter(endpoint: str, segment: str, ring_id: int, config: ServeConfig,
                   decode: str = "cpu") -> Starter:
    """Workers as `python -m vidring.daemon.worker`, under the daemon's interpreter or
    VIDRING_WORKER_PYTHON's (a wrapper that pins cores or sets a nice level, say)."""
    python = os.environ.get("VIDRING_WORKER_PYTHON") or sys.executable
    parent = str(os.getpid())
    pixels = ["--interpolation", config.interpolation, "--max-clips",
              str(config.worker_max_clips), "--decode", decode]
    for name in ("mean", "std"):
        values = getattr(config, name)
        if values is not None:
            pixels += [f"--{name}", ",".join(map(repr, values))]

    def start(identity: bytes) -> Process:
        cmd = [python, "-m", "vidring.daemon.worker", "--endpoint", endpoint,
               "--segment", segment, "--ring-id", str(ring_id), "--identity", identity.decode(),
               "--parent-pid", parent, *pixels]
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True)

    return start


def _publisher(ring: Ring) -> Callable[[int, SlotRecord], None]:
    """Mirror each slot's state into the ring's header, where trainers check it."""

    def publish(slot: int, rec: SlotRecord) -> None:
        epoch, batch = rec.key if rec.key is not None else (-1, -1)
        ring.set_slot_state(slot, rec.state, epoch=epoch, plan_batch=batch,
                            fill_seq=rec.fill_seq)

    return publish


def _log_start(config: ServeConfig, manifest: Manifest, labels: Targets, layout: RingLayout,
               batches: int) -> None:
    if labels.classes:
        shown = list(labels.classes.items())
        log.info("%d classes: %s%s", len(shown), ", ".join(f"{k}={v}" for k, v in shown[:20]),
                 ", ..." if len(shown) > 20 else "")
    log.info("serving %r: %d videos, %d batches/epoch of %s %s, %d slots (%.1f MiB), "
             "%d workers", config.name, len(manifest), batches,
             "x".join(map(str, layout.x_shape)), config.dtype, config.slots,
             layout.total_bytes / 2**20, config.workers)
