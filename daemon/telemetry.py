"""What the daemon measures while it serves, published once a second (`vidring top`) and
exported to Prometheus (`--metrics-port`).

Telemetry owns the recent measurements (trainer waits, decode stages, per-file decode
time, queue depth, scaling decisions), each bounded in size.  The serving loop tells it
what happened; once a second it reads the rest from the daemon's parts and publishes a
loader.stats.Stats on the PUB socket, which costs one send whoever watches.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import zmq

from vidring.daemon.decode import STAGES
from vidring.loader import stats as wire
from vidring.loader.status import printable

if TYPE_CHECKING:
    from vidring.daemon.metrics import Metrics
    from vidring.daemon.server import Daemon

log = logging.getLogger("vidring.daemon")

PUBLISH_EVERY_S = 1.0
WINDOW_S = 60.0  # waits and stage times are summarised over this
_MAX_SAMPLES = 20_000  # per window, whatever the rate
_MAX_FILES = 4096  # files whose decode time is remembered (the least recent go)
_SLOWEST = 5


class Telemetry:
    def __init__(self, name: str, socket: zmq.Socket[Any] | None, metrics: Metrics | None,
                 *, clock: Any = time.monotonic) -> None:
        self._name = name
        self._socket = socket
        self.metrics = metrics
        self._clock = clock
        self._waits: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=_MAX_SAMPLES)
        self._stages: collections.deque[tuple[float, tuple[float, ...]]] = collections.deque(
            maxlen=_MAX_SAMPLES)
        self._files: collections.OrderedDict[str, tuple[float, int]] = (
            collections.OrderedDict())
        self._queue: collections.deque[int] = collections.deque(maxlen=wire.QUEUE_HISTORY_S)
        self.scaling: collections.deque[str] = collections.deque(maxlen=5)
        self._processes: dict[int, psutil.Process] = {}
        self._next_publish = 0.0

    # -- events from the serving loop -----------------------------------------------

    def trainer_waited(self, seconds: float) -> None:
        self._waits.append((self._clock(), seconds))
        if self.metrics is not None:
            self.metrics.trainer_wait.observe(seconds)

    def clip_done(self, path: str, seconds: float, clips: int, stages: list[float]) -> None:
        per_clip = seconds / max(clips, 1)
        if len(stages) == len(STAGES):
            self._stages.append((self._clock(), tuple(s / max(clips, 1) for s in stages)))
        total, count = self._files.pop(path, (0.0, 0))
        self._files[path] = (total + seconds, count + clips)
        if len(self._files) > _MAX_FILES:
            self._files.popitem(last=False)
        if self.metrics is not None:
            for _ in range(clips):
                self.metrics.decode.observe(per_clip)

    def scaled(self, text: str) -> None:
        self.scaling.append(f"{time.strftime('%H:%M:%S')} {text}")

    # -- once a second ----------------------------------------------------------------

    def tick(self, now: float, daemon: Daemon) -> None:
        if now < self._next_publish:
            return
        self._next_publish = now + PUBLISH_EVERY_S
        slots = daemon.sched.counts()
        self._queue.append(slots.ready)
        if self.metrics is not None:
            self.metrics.update(daemon)
        if self._socket is None:
            return
        try:
            self._socket.send(wire.encode(self.snapshot(now, daemon)), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("stats not published: %s", exc)

    def snapshot(self, now: float, daemon: Daemon) -> wire.Stats:
        since = now - WINDOW_S
        waits = np.array([s for t, s in self._waits if t >= since]) * 1000
        stage_rows = np.array([s for t, s in self._stages if t >= since]).reshape(
            -1, len(STAGES)) * 1000
        slots = daemon.sched.counts()
        errors = daemon.faults.summary()
        slowest = sorted(self._files.items(), key=lambda kv: kv[1][0] / kv[1][1],
                         reverse=True)[:_SLOWEST]
        return wire.Stats(
            name=self._name, pid=os.getpid(), epoch=daemon.sched.consumer_epoch,
            slots=slots.total, ready=slots.ready, queue_history=list(self._queue),
            clips_per_s=daemon.production.clips_per_s(),
            wait_p50_ms=_pct(waits, 50), wait_p95_ms=_pct(waits, 95), waits=len(waits),
            stages=[wire.StageTime(stage, _pct(stage_rows[:, k], 50), _pct(stage_rows[:, k], 95))
                    for k, stage in enumerate(STAGES)],
            workers=self._workers(daemon), target=daemon.pool.target,
            autoscale=daemon.autoscale_range, scaling=list(self.scaling),
            slowest=[wire.FileTime(printable(path), round(total / n * 1000, 1), n)
                     for path, (total, n) in slowest],
            errors=errors.count, quarantined=errors.quarantined,
            recent_errors=[f"{e.path}: {e.reason}"[:200] for e in errors.recent_quarantined[-3:]],
            spilled=daemon.clients.spilled_total)

    def _workers(self, daemon: Daemon) -> list[wire.WorkerLine]:
        lines = []
        alive = set()
        for worker in daemon.pool.workers():
            pid = worker.proc.pid if worker.proc is not None else 0
            cpu = rss = 0.0
            if pid:
                alive.add(pid)
                process = self._processes.get(pid)
                try:
                    if process is None:
                        process = self._processes[pid] = psutil.Process(pid)
                        process.cpu_percent()  # the first call only starts the count
                    cpu = process.cpu_percent()
                    rss = process.memory_info().rss / 2**20
                except psutil.Error:
                    pass
            file = ""
            if worker.task is not None:
                file = printable(daemon.production.path_of(worker.task.tasks[0]))
            lines.append(wire.WorkerLine(worker.worker_id, worker.state.name.lower(), pid, file,
                                         round(cpu, 1), round(rss, 1)))
        for pid in set(self._processes) - alive:
            del self._processes[pid]
        return lines


def _pct(values: np.ndarray, q: float) -> float:
    return round(float(np.percentile(values, q)), 2) if len(values) else 0.0
