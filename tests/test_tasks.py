"""The task queue with a fake clock: plan batches to tasks, retries, stand-ins."""

from __future__ import annotations

import numpy as np

from tests.support import FakeClock
from vidring.daemon.faults import MAX_FAILURES_IN_A_ROW, FaultLedger
from vidring.daemon.sampler import ClipChoice, Sampling
from vidring.daemon.tasks import MAX_CLIPS_PER_JOB, PlanSettings, Task, TaskQueue, one_pass

N_VIDEOS = 8



def _queue(retry_delay_s: float = 2.0) -> tuple[TaskQueue, FaultLedger, FakeClock]:
    plan = PlanSettings(np.full(N_VIDEOS, 30, dtype=np.int64), seed=1, batch_size=4,
                        sampling=Sampling(4))
    faults = FaultLedger([f"v{i}.mp4" for i in range(N_VIDEOS)], retry_delay_s)
    clock = FakeClock()
    return TaskQueue(plan, faults, clock=clock), faults, clock


def _drain(queue: TaskQueue) -> list[Task]:
    out = []
    while (task := queue.pop()) is not None:
        out.append(task)
    return out


def test_a_batch_becomes_one_task_per_position() -> None:
    queue, _, _ = _queue()
    queue.add_batch(slot=2, key=(0, 1))
    tasks = _drain(queue)
    assert [(t.slot, t.position, t.key) for t in tasks] == [(2, p, (0, 1)) for p in range(4)]
    assert len({t.task_id for t in tasks}) == 4
    assert len(queue) == 0


def test_a_failed_clip_waits_its_delay_then_goes_first() -> None:
    queue, _, clock = _queue(retry_delay_s=2.0)
    queue.add_batch(0, (0, 0))
    first = queue.pop()
    assert first is not None
    queue.failed(first, "flaky read")
    assert len(queue) == 4
    clock.now = 1.9
    assert queue.pop() is not first
    clock.now = 2.0
    assert queue.pop() is first  # due: ahead of what was queued
    assert first.choice.attempt == 0  # the same clip, not a stand-in


def test_a_quarantined_video_gets_the_same_stand_in_every_time() -> None:
    stand_ins = []
    for _ in range(2):
        queue, faults, clock = _queue(retry_delay_s=1.0)
        queue.add_batch(0, (0, 0))
        task = queue.pop()
        assert task is not None
        planned = task.choice.video_index
        for _ in range(MAX_FAILURES_IN_A_ROW - 1):
            queue.failed(task, "bad file")
            clock.now += 100
            assert queue.pop() is task
        queue.failed(task, "bad file")  # quarantined: a stand-in at once, first in line
        assert planned in faults.quarantine
        again = queue.pop()
        assert again is task
        assert task.choice.video_index != planned
        assert task.choice.planned_index == planned
        assert task.choice.attempt >= 1
        stand_ins.append((task.choice.video_index, task.choice.start_frame))
    assert stand_ins[0] == stand_ins[1]


def test_a_video_quarantined_while_queued_is_replaced_at_pop() -> None:
    queue, faults, _ = _queue()
    queue.add_batch(0, (0, 0))
    doomed = _drain(queue)
    queue.add_batch(1, (0, 0))
    faults.probe_failed(doomed[0].choice.video_index, "gone")
    task = queue.pop()
    assert task is not None
    assert task.choice.video_index != doomed[0].choice.video_index


def test_no_readable_video_is_fatal_not_a_loop() -> None:
    queue, faults, _ = _queue()
    for video in range(N_VIDEOS):
        faults.probe_failed(video, "unreadable")
    queue.add_batch(0, (0, 0))
    assert queue.pop() is None
    assert "no readable stand-in" in queue.fatal


def test_an_evaluation_stand_in_weighs_nothing() -> None:
    plan = PlanSettings(np.full(N_VIDEOS, 30, dtype=np.int64), seed=1, batch_size=4,
                        sampling=Sampling(4, sampler="uniform"))
    faults = FaultLedger([f"v{i}.mp4" for i in range(N_VIDEOS)], 1.0)
    faults.probe_failed(1, "unreadable")
    queue = TaskQueue(plan, faults, clock=FakeClock())
    queue.add_batch(0, (0, 0))  # videos 0..3 in manifest order
    tasks = _drain(queue)
    stand_in = next(t for t in tasks if t.choice.planned_index == 1)
    assert stand_in.choice.video_index != 1
    assert stand_in.choice.padding  # weight 0: metrics stay those of readable clips
    assert not any(t.choice.padding for t in tasks if t is not stand_in)


def _clip_task(task_id: int, frames: tuple[int, ...], video: int = 0, slot: int = 0) -> Task:
    return Task(task_id, slot, task_id, (0, 0), ClipChoice(task_id, video, video, frames))


def test_one_pass_joins_clips_a_forward_decode_reaches_and_stops_at_a_seek() -> None:
    keyframes = np.array([0, 50, 100])

    def keyframe_before(frame: int) -> int:
        return int(keyframes[np.searchsorted(keyframes, frame, side="right") - 1])

    first = _clip_task(1, (10, 11, 12, 13))
    near = _clip_task(2, (30, 31, 32, 33))  # decodes from keyframe 0: on the way
    chained = _clip_task(3, (52, 53, 54, 55))  # keyframe 50 <= 33? no: would need a seek
    assert one_pass(first, [chained, near], keyframe_before) == [near]
    long_first = _clip_task(4, (40, 45, 50, 55))  # the pass has passed keyframe 50
    assert one_pass(long_first, [chained], keyframe_before) == [chained]


def test_mates_are_taken_only_from_the_same_video_and_slot() -> None:
    queue, _, _ = _queue()
    queue.add_batch(0, (0, 0))
    first = queue.pop()
    assert first is not None
    others = len(queue)
    mates = queue.take_mates(first, lambda _first, candidates: candidates)
    assert all(t.choice.video_index == first.choice.video_index for t in mates)
    assert len(queue) == others - len(mates)


def test_one_pass_never_extends_backwards() -> None:
    first = _clip_task(1, (200, 201, 202, 203))
    earlier = _clip_task(2, (5, 6, 7, 8))  # its own keyframe 0 is before the pass
    assert one_pass(first, [earlier], lambda frame: 0 if frame < 100 else 100) == []


def test_a_failed_job_counts_once_against_its_video() -> None:
    queue, faults, clock = _queue(retry_delay_s=2.0)
    tasks = [_clip_task(i, (i * 5, i * 5 + 1), video=3) for i in range(3)]
    queue.job_failed(tasks, "decode stalled")
    assert faults.error_count == 1
    assert 3 not in faults.quarantine
    clock.now = 2.0
    assert {t.task_id for t in _drain(queue)} == {0, 1, 2}  # all retried together


def test_a_job_holds_at_most_max_clips() -> None:
    first = _clip_task(0, (0, 1))
    others = [_clip_task(i, (i, i + 1)) for i in range(1, 9)]
    assert len(one_pass(first, others, lambda _frame: 0)) == MAX_CLIPS_PER_JOB - 1
