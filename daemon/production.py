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
import os
import time
from typing import TYPE_CHECKING

from vidring.daemon.augment import Augment, Look, place
from vidring.daemon.tasks import Job, PlanSettings, Task, TaskQueue, one_pass
from vidring.loader import protocol

if TYPE_CHECKING:
    from collections.abc import Callable

    from vidring.daemon.faults import FaultLedger
    from vidring.daemon.pool import WorkerPool
    from vidring.daemon.probe import VideoInfo
    from vidring.daemon.schedule import Key
    from vidring.daemon.targets import Targets
    from vidring.daemon.workers import Finished
    from vidring.loader.ring import Ring

log = logging.getLogger("vidring.daemon")

_RATE_WINDOW_S = 5.0


class Production:
    def __init__(self, plan: PlanSettings, augment: Augment, paths: list[str],
                 infos: list[VideoInfo | None], labels: Targets, ring: Ring,
                 faults: FaultLedger, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._plan = plan
        self._augment = augment
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
        """Hand queued clips to the pool's idle workers; clips of one video in one slot
        that a single forward pass reaches go to one worker together."""
        for worker in pool.takers():
            task = self.tasks.pop()
            if task is None:
                return
            job = Job((task, *self.tasks.take_mates(task, self._reach)))
            pool.assign(worker, job, self._message(job))

    def _reach(self, first: Task, others: list[Task]) -> list[Task]:
        info = self._infos[first.choice.video_index]
        assert info is not None, "a video that failed to probe is quarantined"
        return one_pass(first, others, info.keyframe_before)

    def _message(self, job: Job) -> bytes:
        first = job.tasks[0]
        info = self._infos[first.choice.video_index]
        assert info is not None, "a video that failed to probe is quarantined"
        start = min(t.choice.frames[0] for t in job.tasks)
        key_pts, key_dts = info.seek_target(start)
        clips = []
        for t in job.tasks:
            look = self._look(t, info)
            clips.append(protocol.Clip(
                position=t.position, frame_pts=[int(info.frame_pts[i]) for i in t.choice.frames],
                box=look.box, flip=look.flip))
        return protocol.encode(protocol.Task(
            task_id=job.task_id, slot=first.slot,
            path=os.fsencode(self._paths[first.choice.video_index]),
            clips=clips, key_pts=key_pts, key_dts=key_dts, rotation=info.rotation,
            size=info.size, mtime_ns=info.mtime_ns, reopen_as=info.reopen_as,
            reorder_depth=info.reorder_depth))

    def path_of(self, task: Task) -> str:
        return self._paths[task.choice.video_index]

    def _look(self, task: Task, info: VideoInfo) -> Look:
        """The clip's crop and flip: a pure function of the plan, like its frames (drawn
        once per task and choice: a stand-in gets its own)."""
        choice = task.choice
        if task.look is None or task.look_of is not choice:
            epoch = 0 if self._plan.sampling.evaluates else task.key[0]
            task.look = place(self._augment, info.upright_size, seed=self._plan.seed,
                              epoch=epoch, sample=choice.sample_index, attempt=choice.attempt)
            task.look_of = choice
        return task.look

    def finished(self, result: Finished) -> list[tuple[int, int]]:
        """Record a job's outcome; returns the (slot, position) of each clip now in place."""
        if result.requeue:
            self.tasks.requeue(result.job.tasks)
            return []
        if result.error:
            self.tasks.job_failed(result.job.tasks, result.error, permanent=result.permanent)
            return []
        return [self._clip_done(task) for task in result.job.tasks]

    def _clip_done(self, task: Task) -> tuple[int, int]:
        choice = task.choice
        replaced = choice.video_index != choice.planned_index
        views = self._ring.views(task.slot)
        views.y[task.position] = self._labels.y[choice.video_index]
        views.w[task.position] = 0.0 if choice.padding else self._labels.weights[choice.video_index]
        info = self._infos[choice.video_index]
        assert info is not None
        look = self._look(task, info)
        views.provenance[task.position] = (
            choice.video_index, choice.planned_index, choice.frames,
            [int(info.frame_pts[i]) for i in choice.frames], look.box, info.rotation,
            int(look.flip), int(replaced), int(choice.padding), 0)
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
