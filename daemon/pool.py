"""The decoder processes: start, watch, scale, stop.  See NOTE [ shutdown ] in server.py.

Worker states, each transition written where it happens:
    STARTING -> IDLE     its worker_ready arrived
    IDLE -> BUSY         a task was sent to it
    BUSY -> IDLE         its task_done arrived
    * -> STOPPING        scaled down or shutting down; a BUSY one finishes its clip first
    * -> EXITED          its process is gone (any task it held is handed back)

Scaling only changes `target`; reconcile() starts or stops processes.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A worker told to stop gets this long to exit before SIGKILL.
STOP_GRACE_S = 3.0
# Respawn a worker that dies this soon after starting only after a pause, so a
# worker that cannot start does not spin the CPU.
CRASH_WINDOW_S = 5.0
RESPAWN_BACKOFF_S = 1.0


class WorkerState(enum.IntEnum):
    STARTING = 0
    IDLE = 1
    BUSY = 2
    STOPPING = 3
    EXITED = 4


@dataclass(slots=True)
class Worker:
    worker_id: int
    proc: subprocess.Popen[bytes]
    started_at: float
    state: WorkerState = WorkerState.STARTING
    task: Any = None  # the task it holds, if any
    task_started: float = 0.0
    stop_deadline: float = 0.0

    @property
    def identity(self) -> bytes:
        return f"w{self.worker_id}".encode()


class WorkerPool:
    def __init__(self, endpoint: str, segment: str, ring_id: int, target: int, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.endpoint = endpoint
        self.segment = segment
        self.ring_id = ring_id
        self.target = target
        self.workers: dict[int, Worker] = {}
        self.died_total = 0  # exits the pool did not ask for
        self._clock = clock
        self._next_id = 0
        self._hold_spawn_until = 0.0

    # -- queries ----------------------------------------------------------------

    def by_identity(self, identity: bytes) -> Worker | None:
        try:
            return self.workers.get(int(identity[1:]))
        except ValueError:
            return None

    def alive(self) -> int:
        return sum(w.state != WorkerState.EXITED for w in self.workers.values())

    def serving(self) -> list[Worker]:
        """Workers that count towards the target (not stopping)."""
        return [w for w in self.workers.values()
                if w.state in (WorkerState.STARTING, WorkerState.IDLE, WorkerState.BUSY)]

    # -- life cycle -----------------------------------------------------------

    def _spawn(self) -> Worker:
        worker_id = self._next_id
        self._next_id += 1
        cmd = [sys.executable, "-m", "vidring.daemon.worker", "--endpoint", self.endpoint,
               "--segment", self.segment, "--ring-id", str(self.ring_id),
               "--worker-id", str(worker_id),
               "--parent-pid", str(os.getpid())]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, close_fds=True)
        worker = Worker(worker_id, proc, self._clock())
        self.workers[worker_id] = worker
        return worker

    def reconcile(self, stop: Callable[[Worker], None]) -> list[Worker]:
        """Move toward `target`; returns workers that exited since the last call.

        `stop(worker)` asks an IDLE worker to exit (a worker_stop message).
        """
        now = self._clock()
        exited = self._reap(now)
        serving = self.serving()
        if len(serving) < self.target and now >= self._hold_spawn_until:
            for _ in range(self.target - len(serving)):
                self._spawn()
        elif len(serving) > self.target:
            # Idle ones first, newest first: a busy one finishes its clip before it goes.
            surplus = sorted(serving, key=lambda w: (w.state == WorkerState.BUSY, -w.worker_id))
            for worker in surplus[: len(serving) - self.target]:
                self._begin_stop(worker, now, stop)
        for worker in self.workers.values():
            if worker.state == WorkerState.STOPPING and now >= worker.stop_deadline:
                worker.proc.kill()
        return exited

    def _begin_stop(self, worker: Worker, now: float, stop: Callable[[Worker], None]) -> None:
        was_idle = worker.state == WorkerState.IDLE
        worker.state = WorkerState.STOPPING  # IDLE/BUSY/STARTING -> STOPPING
        worker.stop_deadline = now + STOP_GRACE_S + (0 if was_idle else 3600)
        if was_idle:
            stop(worker)
        elif worker.task is None:
            worker.proc.terminate()  # STARTING: nothing to lose

    def task_finished(self, worker: Worker, stop: Callable[[Worker], None]) -> None:
        """A STOPPING worker that just finished its clip can go now."""
        worker.task = None
        if worker.state == WorkerState.STOPPING:
            worker.stop_deadline = self._clock() + STOP_GRACE_S
            stop(worker)
        else:
            worker.state = WorkerState.IDLE  # BUSY -> IDLE

    def kill(self, worker: Worker) -> None:
        """For a stalled decode: the process goes now, its task is handed back on reap."""
        worker.state = WorkerState.STOPPING  # BUSY -> STOPPING (killed)
        worker.stop_deadline = self._clock()
        worker.proc.kill()

    def _reap(self, now: float) -> list[Worker]:
        exited = []
        for worker_id, worker in list(self.workers.items()):
            if worker.proc.poll() is None:
                continue
            if worker.state != WorkerState.STOPPING:
                self.died_total += 1
                if now - worker.started_at < CRASH_WINDOW_S:
                    self._hold_spawn_until = now + RESPAWN_BACKOFF_S
            worker.state = WorkerState.EXITED  # * -> EXITED
            del self.workers[worker_id]
            exited.append(worker)
        return exited

    def shutdown(self, stop: Callable[[Worker], None], deadline_s: float) -> None:
        """Ask every worker to stop, wait until `deadline_s`, then SIGKILL and reap all."""
        self.target = 0
        for worker in self.workers.values():
            if worker.state == WorkerState.IDLE:
                stop(worker)
            else:
                worker.proc.send_signal(signal.SIGTERM)
            worker.state = WorkerState.STOPPING
        end = self._clock() + deadline_s
        for worker in self.workers.values():
            try:
                worker.proc.wait(timeout=max(0.0, end - self._clock()))
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                try:
                    worker.proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    pass  # stuck in the kernel (a hung mount); init reaps it when it dies
        self.workers.clear()
