"""The task queue: plan batches become clip tasks, failed clips are retried or stood in for.

Pure bookkeeping, in the style of faults.py: no socket, pool or ring, and an
injected clock.  One task is one clip, so many workers fill one batch.

A task's life:
    add_batch()  B tasks queued, one per position of the slot
    pop()        handed to a worker (a task whose video was quarantined while
                 it waited gets a stand-in first)
    failed()     retried after the ledger's delay (front of the queue when due),
                 or, once its video is quarantined, given a stand-in at once
A sample that finds no readable stand-in in _MAX_REPLACEMENTS tries sets
`fatal`: no batch of that epoch can be completed, and waiting trainers are told.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from vidring.daemon import sampler
from vidring.daemon.augment import Look
from vidring.daemon.schedule import Key

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from vidring.daemon.faults import FaultLedger

log = logging.getLogger("vidring.daemon")

_MAX_REPLACEMENTS = 64  # attempts to find a good stand-in for one sample
MAX_CLIPS_PER_JOB = 4


@dataclass(slots=True)
class Task:
    task_id: int
    slot: int
    position: int
    key: Key
    choice: sampler.ClipChoice
    look: Look | None = None  # its crop and flip, once production has drawn them
    look_of: sampler.ClipChoice | None = None  # the choice `look` was drawn for


@dataclass(frozen=True, slots=True)
class Job:
    """What one worker decodes at a time: clips of one video in one slot that one forward
    pass from one keyframe reaches (usually a single clip)."""

    tasks: tuple[Task, ...]

    @property
    def task_id(self) -> int:
        return self.tasks[0].task_id


def one_pass(first: Task, others: list[Task], keyframe_before: Callable[[int], int]) -> list[Task]:
    """The tasks of `others` that decoding on from `first` reaches without a seek: each
    starts after `first` and decodes from a keyframe the pass has reached anyway; at most
    MAX_CLIPS_PER_JOB clips in all, so one video does not hold one core too long.  Pure."""
    joined: list[Task] = []
    last = max(first.choice.frames)
    later = [t for t in others if t.choice.frames[0] >= first.choice.frames[0]]
    for task in sorted(later, key=lambda t: t.choice.frames[0]):
        if len(joined) + 1 >= MAX_CLIPS_PER_JOB or keyframe_before(task.choice.frames[0]) > last:
            break  # a seek would skip frames: leave it to another worker
        joined.append(task)
        last = max(last, *task.choice.frames)
    return joined


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """What the epoch plan depends on besides (epoch, batch)."""

    frame_counts: np.ndarray  # frames per manifest row (1 for rows that failed to probe)
    seed: int
    batch_size: int
    sampling: sampler.Sampling
    shard: sampler.Shard = sampler.WHOLE
    rows: np.ndarray | None = None  # the manifest rows plans draw from (None: all)
    keyframes: tuple[np.ndarray, ...] | None = None  # per row, for random_keyframe
    windows: np.ndarray | None = None  # per row: the frames [first, stop) start/end allow
    times: tuple[np.ndarray, ...] | None = None  # per row: each frame's seconds, for --fps


class TaskQueue:
    def __init__(self, plan: PlanSettings, faults: FaultLedger, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._plan = plan
        self._faults = faults
        self._clock = clock
        self._queue: collections.deque[Task] = collections.deque()
        self._retries: list[tuple[float, Task]] = []  # (due time, task)
        self._next_id = 1
        self.fatal = ""

    def __len__(self) -> int:
        """Tasks waiting for a worker, retries not yet due included."""
        return len(self._queue) + len(self._retries)

    def add_batch(self, slot: int, key: Key) -> None:
        p = self._plan
        clips = sampler.plan_batch(p.frame_counts, seed=p.seed, epoch=key[0], batch=key[1],
                                   batch_size=p.batch_size, sampling=p.sampling, shard=p.shard,
                                   rows=p.rows, keyframes=p.keyframes, windows=p.windows,
                                   times=p.times)
        for position, choice in enumerate(clips):
            self._put(Task(self._next_id, slot, position, key, choice))
            self._next_id += 1

    def pop(self) -> Task | None:
        """The next task to decode, due retries first; None when there is none."""
        self._requeue_due()
        while self._queue:
            task = self._queue.popleft()
            if task.choice.video_index not in self._faults.quarantine:
                return task
            self._put(task, front=True)  # quarantined since it was queued: a stand-in
        return None

    def take_mates(self, first: Task,
                   reach: Callable[[Task, list[Task]], list[Task]]) -> list[Task]:
        """Queued tasks of `first`'s video and slot that `reach` says one pass decodes."""
        mates = [t for t in self._queue if t.slot == first.slot
                 and t.choice.video_index == first.choice.video_index]
        if not mates:
            return []
        joined = reach(first, mates)
        taken = {id(t) for t in joined}
        self._queue = collections.deque(t for t in self._queue if id(t) not in taken)
        return joined

    def requeue(self, tasks: Sequence[Task]) -> None:
        """Tasks handed back unstarted (their worker went away): first in line again."""
        for task in reversed(tasks):
            self._put(task, front=True)

    def failed(self, task: Task, reason: str) -> None:
        self.job_failed((task,), reason)

    def job_failed(self, tasks: Sequence[Task], reason: str, *, permanent: bool = False) -> None:
        """Clips of one video that failed together: one failure of that video (its last
        when `permanent`: the file is gone or changed)."""
        delay_s = self._faults.clip_failed(tasks[0].choice.video_index, reason,
                                           permanent=permanent)
        for task in tasks:
            if delay_s is None:
                self._put(task, front=True)  # quarantined: _put picks a stand-in
            else:
                self._retries.append((self._clock() + delay_s, task))

    def _requeue_due(self) -> None:
        if not self._retries:
            return
        now = self._clock()
        due = [task for when, task in self._retries if when <= now]
        if due:
            self._retries = [(when, task) for when, task in self._retries if when > now]
            for task in reversed(due):
                self._put(task, front=True)

    def _put(self, task: Task, *, front: bool = False) -> None:
        p = self._plan
        choice = task.choice
        quarantine = self._faults.quarantine
        rows = np.arange(len(p.frame_counts)) if p.rows is None else p.rows
        n_videos = len(rows)
        # An evaluation plan does not depend on the epoch: nor do its stand-ins.
        epoch = 0 if p.sampling.evaluates else task.key[0]
        while choice.video_index in quarantine:
            attempt = choice.attempt + 1
            if attempt > _MAX_REPLACEMENTS:
                self.fatal = (f"no readable stand-in for sample {choice.sample_index} of epoch "
                              f"{task.key[0]} after {_MAX_REPLACEMENTS} tries: "
                              f"{len(quarantine)} of {n_videos} videos are quarantined")
                log.error("%s", self.fatal)
                return
            video = int(rows[sampler.replacement(n_videos, seed=p.seed, epoch=epoch,
                                                 sample_index=choice.sample_index,
                                                 attempt=attempt)])
            stand_in = sampler.choose(choice.sample_index, choice.planned_index, video,
                                      int(p.frame_counts[video]), seed=p.seed, epoch=epoch,
                                      sampling=p.sampling, attempt=attempt, clip=choice.clip,
                                      keyframes=None if p.keyframes is None
                                      else p.keyframes[video],
                                      window=None if p.windows is None
                                      else (int(p.windows[video][0]), int(p.windows[video][1])),
                                      times=None if p.times is None else p.times[video])
            # In evaluation a stand-in only keeps the batch whole: weight 0, so metrics are
            # those of the readable clips.
            choice = dataclasses.replace(stand_in,
                                         padding=choice.padding or p.sampling.evaluates)
        task.choice = choice
        if front:
            self._queue.appendleft(task)
        else:
            self._queue.append(task)
