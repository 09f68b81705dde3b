"""From plan batches to clips in slots: tasks, stand-ins, dispatch to workers, results.

One task is one clip, so many workers fill one batch.  Idle workers have
asked for work (worker_ready or their last task_done) and get the next task;
a failed clip is retried or given a stand-in (faults.py); a worker that dies
or stalls has its clip handled as a failure.  The daemon's loop (server.py)
calls fill(), dispatch() and on_worker() and reads the counters for status.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from vidring.daemon import sampler
from vidring.daemon.config import ServeConfig
from vidring.daemon.faults import FaultLedger
from vidring.daemon.pool import Worker, WorkerPool, WorkerState
from vidring.daemon.probe import VideoInfo
from vidring.daemon.schedule import Key, Scheduler
from vidring.loader import protocol
from vidring.loader.ring import Ring

log = logging.getLogger("vidring.daemon")

_MAX_REPLACEMENTS = 64  # attempts to find a good stand-in for one sample
_RATE_WINDOW_S = 5.0


@dataclass(slots=True)
class Task:
    task_id: int
    slot: int
    position: int
    key: Key
    choice: sampler.ClipChoice


class Production:
    def __init__(self, config: ServeConfig, paths: list[str], infos: list[VideoInfo | None],
                 labels: np.ndarray, ring: Ring, sched: Scheduler, pool: WorkerPool,
                 work: zmq.Socket[Any], faults: FaultLedger) -> None:
        self.config = config
        self._paths = paths
        self._infos = infos
        self._frame_counts = np.array([i.frames if i else 1 for i in infos], dtype=np.int64)
        self._labels = labels
        self._ring = ring
        self._sched = sched
        self._pool = pool
        self._work = work
        self._faults = faults
        self._next_task = 1
        self.tasks: collections.deque[Task] = collections.deque()
        self._retries: list[tuple[float, Task]] = []  # (due time, task)
        self._idle: collections.deque[Worker] = collections.deque()
        self._done_times: collections.deque[float] = collections.deque()
        self._started = time.monotonic()
        self.clips_total = 0
        self.last_progress = time.monotonic()
        self.fatal = ""  # set when a sample cannot be filled at all

    # -- tasks --------------------------------------------------------------------

    def fill(self, waiting: list[Key]) -> None:
        """Start filling the slots the scheduler picks; one task per clip."""
        for slot, key in self._sched.next_fills(waiting):
            log.debug("fill slot %d with epoch %d batch %d", slot, *key)
            clips = sampler.plan_batch(
                self._frame_counts, seed=self.config.seed, epoch=key[0], batch=key[1],
                batch_size=self.config.batch_size, clip_length=self.config.clip_length,
                stride=self.config.stride)
            for position, choice in enumerate(clips):
                self._queue(Task(self._next_task, slot, position, key, choice))
                self._next_task += 1

    def _queue(self, task: Task, *, front: bool = False) -> None:
        choice = task.choice
        quarantine = self._faults.quarantine
        while choice.video_index in quarantine:
            attempt = choice.attempt + 1
            if attempt > _MAX_REPLACEMENTS:
                self.fatal = (f"no readable stand-in for sample {choice.sample_index} of epoch "
                              f"{task.key[0]} after {_MAX_REPLACEMENTS} tries: "
                              f"{len(quarantine)} of {len(self._paths)} videos are quarantined")
                log.error("%s", self.fatal)
                return
            video = sampler.replacement(len(self._paths), seed=self.config.seed,
                                        epoch=task.key[0], sample_index=choice.sample_index,
                                        attempt=attempt)
            choice = sampler.choose(choice.sample_index, choice.planned_index, video,
                                    int(self._frame_counts[video]), seed=self.config.seed,
                                    epoch=task.key[0], clip_length=self.config.clip_length,
                                    stride=self.config.stride, attempt=attempt)
        task.choice = choice
        if front:
            self.tasks.appendleft(task)
        else:
            self.tasks.append(task)

    def requeue_due_retries(self, now: float) -> None:
        due = [task for when, task in self._retries if when <= now]
        if due:
            self._retries = [(when, task) for when, task in self._retries if when > now]
            for task in due:
                self._queue(task, front=True)

    def dispatch(self) -> None:
        """Hand queued clips to idle workers."""
        while self.tasks and self._idle:
            worker = self._idle.popleft()
            if worker.state != WorkerState.IDLE:
                continue
            task = self.tasks.popleft()
            if task.choice.video_index in self._faults.quarantine:
                # Quarantined since it was queued: give the worker a stand-in instead.
                self._idle.appendleft(worker)
                self._queue(task, front=True)
                continue
            info = self._infos[task.choice.video_index]
            assert info is not None
            frames = sampler.clip_frames(task.choice.start_frame, info.frames,
                                         self.config.clip_length, self.config.stride)
            frame_pts = [int(info.frame_pts[i]) for i in frames]
            key_pts, key_dts = info.seek_target(frames[0])
            self._work.send_multipart([worker.identity, protocol.encode(
                "task", task_id=task.task_id, slot=task.slot, position=task.position,
                path=self._paths[task.choice.video_index], frame_pts=frame_pts,
                key_pts=key_pts, key_dts=key_dts)])
            worker.state = WorkerState.BUSY  # IDLE -> BUSY
            worker.task = task
            worker.task_started = time.monotonic()

    # -- workers ------------------------------------------------------------------

    def on_worker(self, identity: bytes, data: bytes) -> None:
        worker = self._pool.by_identity(identity)
        try:
            msg = protocol.decode(data, allowed=protocol.WORKER_TYPES)
        except protocol.ProtocolError as exc:
            log.error("worker %r sent a bad message: %s", identity, exc)
            return
        if worker is None or worker.state == WorkerState.EXITED:
            return
        if msg.type == "worker_ready":
            if worker.state == WorkerState.STARTING:
                worker.state = WorkerState.IDLE  # STARTING -> IDLE
                self._idle.append(worker)
            elif worker.state == WorkerState.STOPPING:
                self.send_stop(worker)
            return
        task = worker.task
        if task is None or task.task_id != msg["task_id"]:
            return  # a result for a task already handed to someone else
        if msg["ok"]:
            self._task_ok(task)
        else:
            self._task_failed(task, msg.get("error", "unknown error"))
        self._pool.task_finished(worker, self.send_stop)
        if worker.state == WorkerState.IDLE:
            self._idle.append(worker)

    def send_stop(self, worker: Worker) -> None:
        self._work.send_multipart([worker.identity, protocol.encode("worker_stop")])

    def worker_gone(self, worker: Worker) -> None:
        task = worker.task
        worker.task = None
        if task is not None:
            self._task_failed(task, f"decoder worker {worker.worker_id} died (exit code "
                                    f"{worker.proc.returncode}) while decoding this clip")

    def kill_stalled(self, now: float) -> None:
        """A decode running past task_timeout_s: kill its worker, fail its clip."""
        for worker in list(self._pool.workers.values()):
            if (worker.task is not None and worker.state != WorkerState.EXITED
                    and now - worker.task_started > self.config.task_timeout_s):
                task = worker.task
                worker.task = None
                self._pool.kill(worker)
                self._task_failed(task, f"decode stalled for over "
                                        f"{self.config.task_timeout_s:g} s; worker killed")

    def _task_ok(self, task: Task) -> None:
        choice = task.choice
        replaced = choice.video_index != choice.planned_index
        views = self._ring.views(task.slot)
        views.y[task.position] = self._labels[choice.video_index]
        info = self._infos[choice.video_index]
        assert info is not None
        views.provenance[task.position] = (
            choice.video_index, choice.planned_index, choice.start_frame, self.config.stride,
            (0, 0, info.height, info.width), 0, int(replaced), (0, 0))
        self._faults.clip_ok(choice.video_index, replaced=replaced)
        now = time.monotonic()
        self.last_progress = now
        self.clips_total += 1
        self._done_times.append(now)
        self._sched.clip_done(task.slot, task.position)

    def _task_failed(self, task: Task, reason: str) -> None:
        delay_s = self._faults.clip_failed(task.choice.video_index, reason)
        if delay_s is None:
            self._queue(task, front=True)  # quarantined: _queue picks a stand-in
        else:
            self._retries.append((time.monotonic() + delay_s, task))

    # -- stats --------------------------------------------------------------------

    def clips_per_s(self) -> float:
        """Clips finished per second over the last few seconds."""
        now = time.monotonic()
        while self._done_times and now - self._done_times[0] > _RATE_WINDOW_S:
            self._done_times.popleft()
        window_s = min(_RATE_WINDOW_S, max(now - self._started, 1e-3))
        return round(len(self._done_times) / window_s, 2)
