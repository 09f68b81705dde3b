"""From plan batches to clips in slots: tasks out to workers, labels and provenance in.

Production owns the task queue and the throughput counters.  The daemon's
loop (server.py) tells it which slots to fill (schedule.py decides), lends it
the pool to hand tasks to idle workers, and gives it every finished task; a
clip done returns its (slot, position) for the scheduler.  Workers write the
pixels; production writes each sample's label and provenance beside them.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING

from vidring.daemon.tasks import PlanSettings, Task, TaskQueue
from vidring.loader import protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

    from vidring.daemon.faults import FaultLedger
    from vidring.daemon.pool import Finished, WorkerPool
    from vidring.daemon.probe import VideoInfo
    from vidring.daemon.schedule import Key
    from vidring.loader.ring import Ring

log = logging.getLogger("vidring.daemon")

_RATE_WINDOW_S = 5.0


class Production:
    def __init__(self, plan: PlanSettings, paths: list[str], infos: list[VideoInfo | None],
                 labels: np.ndarray, ring: Ring, faults: FaultLedger, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._plan = plan
        self._paths = paths
        self._infos = infos
        self._labels = labels
        self._ring = ring
        self._faults = faults
        self._clock = clock
        self.tasks = TaskQueue(plan, faults, clock=clock)
        self._done_times: collections.deque[float] = collections.deque()
        self._started = clock()
        self.clips_total = 0
        self.last_clip_at = self._started

    def add_batch(self, slot: int, key: Key) -> None:
        log.debug("fill slot %d with epoch %d batch %d", slot, *key)
        self.tasks.add_batch(slot, key)

    def dispatch(self, pool: WorkerPool) -> None:
        """Hand queued clips to the pool's idle workers."""
        for worker in pool.idle():
            task = self.tasks.pop()
            if task is None:
                return
            pool.assign(worker, task, self._message(task))

    def _message(self, task: Task) -> bytes:
        info = self._infos[task.choice.video_index]
        assert info is not None, "a video that failed to probe is quarantined"
        frames = task.choice.frames
        key_pts, key_dts = info.seek_target(frames[0])
        return protocol.encode(protocol.Task(
            task_id=task.task_id, slot=task.slot, position=task.position,
            path=self._paths[task.choice.video_index],
            frame_pts=[int(info.frame_pts[i]) for i in frames], key_pts=key_pts,
            key_dts=key_dts))

    def finished(self, result: Finished) -> tuple[int, int] | None:
        """Record a task's outcome; returns (slot, position) when its clip is in place."""
        task = result.task
        if result.error:
            self.tasks.failed(task, result.error)
            return None
        choice = task.choice
        replaced = choice.video_index != choice.planned_index
        views = self._ring.views(task.slot)
        views.y[task.position] = self._labels[choice.video_index]
        info = self._infos[choice.video_index]
        assert info is not None
        sampling = self._plan.sampling
        stride = 0 if sampling.sampler == "segments" else sampling.stride
        views.provenance[task.position] = (
            choice.video_index, choice.planned_index, choice.start_frame, stride,
            (0, 0, info.height, info.width), 0, int(replaced), int(choice.padding), 0)
        self._faults.clip_ok(choice.video_index, replaced=replaced)
        now = self._clock()
        self.last_clip_at = now
        self.clips_total += 1
        self._done_times.append(now)
        self._trim(now)
        return task.slot, task.position

    def clips_per_s(self) -> float:
        """Clips finished per second over the last few seconds."""
        now = self._clock()
        self._trim(now)
        window_s = min(_RATE_WINDOW_S, max(now - self._started, 1e-3))
        return round(len(self._done_times) / window_s, 2)

    def _trim(self, now: float) -> None:
        # Trimmed on every clip, so memory stays bounded when nobody asks for status.
        while self._done_times and now - self._done_times[0] > _RATE_WINDOW_S:
            self._done_times.popleft()
