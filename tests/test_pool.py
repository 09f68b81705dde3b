"""Worker states with a fake clock and fake processes: restarts, back-off, stops, stalls."""

from __future__ import annotations

import errno
import signal
import subprocess
from typing import Any

import pytest
import zmq

from tests.support import FakeClock
from vidring.daemon import liveness
from vidring.daemon import pool as pool_mod
from vidring.daemon.pool import WorkerPool
from vidring.daemon.sampler import ClipChoice
from vidring.daemon.tasks import Job, Task
from vidring.daemon.workers import Finished, Worker, WorkerState
from vidring.loader import protocol


class FakeProcess:
    """A worker process that exits when told to by the test, or on the signals it obeys."""

    def __init__(self, pid: int, obeys: frozenset[int]) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.obeys = obeys
        self.signals: list[int] = []
        self.frozen = False  # SIGSTOP: answers nothing

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig in self.obeys:
            self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            raise subprocess.TimeoutExpired("worker", timeout or 0)
        return self.returncode


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def send_multipart(self, frames: list[bytes]) -> None:
        self.sent.append((frames[0], protocol.decode(frames[1], protocol.DAEMON_TO_WORKER)))

    def recv_multipart(self, flags: int = 0) -> list[bytes]:  # noqa: ARG002 - zmq's signature
        raise zmq.Again()

    def stops_to(self, identity: bytes) -> int:
        return sum(who == identity and isinstance(m, protocol.WorkerStop) for who, m in self.sent)


class Harness:
    def __init__(self, target: int, *, obeys: frozenset[int] = frozenset({signal.SIGKILL}),
                 fail_spawns: int = 0, max_workers: int = protocol.MAX_WORKERS) -> None:
        self.clock = FakeClock()
        self.socket = FakeSocket()
        self.procs: list[FakeProcess] = []
        self.by_identity: dict[bytes, FakeProcess] = {}
        self.obeys = obeys
        self.fail_spawns = fail_spawns
        self.pool = WorkerPool(self.socket, self.start, target,  # type: ignore[arg-type]
                               task_timeout_s=10.0, max_workers=max_workers, clock=self.clock)

    def start(self, identity: bytes) -> FakeProcess:
        if self.fail_spawns:
            self.fail_spawns -= 1
            raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
        proc = FakeProcess(1000 + len(self.procs), self.obeys)
        self.procs.append(proc)
        self.by_identity[identity] = proc
        return proc

    def busy_worker(self, task_id: int = 1) -> tuple[Worker, Job]:
        """The pool's first worker, started, ready and given a job."""
        self.tick()
        self.ready_all()
        worker = self.pool.workers()[0]
        job = _task(task_id)
        self.pool.assign(worker, job, _payload(job))
        return worker, job

    def ready_all(self) -> None:
        for w in self.pool.workers():
            if w.state == WorkerState.STARTING:
                self.pool.handle(w.identity, protocol.encode(protocol.WorkerReady()))

    def tick(self, advance_s: float = 0.0) -> list[Finished]:
        """Move the clock; live workers answer the pings the pool sent meanwhile."""
        self.clock.now += advance_s
        sent = len(self.socket.sent)
        lost = self.pool.reconcile()
        for identity, msg in self.socket.sent[sent:]:
            proc = self.by_identity[identity]
            if isinstance(msg, protocol.WorkerPing) and not proc.frozen and proc.returncode is None:
                self.pool.handle(identity, protocol.encode(protocol.WorkerReady()))
        return lost


def _task(task_id: int = 1) -> Job:
    clip = ClipChoice(0, 0, 0, (0,))
    return Job((Task(task_id, slot=0, position=0, key=(0, 0), choice=clip),))


def _payload(job: Job) -> bytes:
    return protocol.encode(protocol.Task(
        task_id=job.task_id, slot=0, path=b"v.mp4",
        clips=[protocol.Clip(position=0, frame_pts=[0])], key_pts=0, key_dts=0))


def test_workers_start_become_idle_and_take_tasks() -> None:
    h = Harness(2)
    h.tick()
    assert h.pool.counts().starting == 2
    h.ready_all()
    worker = h.pool.idle()[0]
    task = _task()
    h.pool.assign(worker, task, _payload(task))
    assert worker.state == WorkerState.BUSY
    assert h.pool.counts().busy == 1
    (done,) = h.pool.handle(worker.identity, protocol.encode(protocol.TaskDone(task_id=1)))
    assert (done.job, done.error) == (task, "")
    assert worker.state == WorkerState.IDLE


def test_a_large_scale_starts_a_few_workers_per_tick() -> None:
    """Each start holds up the loop: a scale to hundreds must leave it answering."""
    h = Harness(0)
    h.pool.set_target(30)
    started = _starts_per_tick(h, until=30)
    assert max(started) == pool_mod.STARTS_PER_TICK
    assert sum(started) == 30
    assert h.pool.counts().starting == 30
    h.tick()
    assert len(h.procs) == 30


def _starts_per_tick(h: Harness, *, until: int) -> list[int]:
    """Processes started by each tick until `until` have been; the loop ticks fast
    (in_flight) all the while."""
    started = []
    while len(h.procs) < until:
        assert h.pool.in_flight()
        before = len(h.procs)
        h.tick()
        started.append(len(h.procs) - before)
    return started


def test_restarts_after_back_off_share_the_starts_of_a_tick() -> None:
    h = Harness(10)
    while len(h.procs) < 10:
        h.tick()
    for proc in h.procs:
        proc.returncode = 1  # all crash at once, soon after their start: back-off
    h.tick()
    assert h.pool.counts().backoff == 10
    h.tick(pool_mod.RESPAWN_BACKOFF_S)
    assert h.pool.counts().starting == pool_mod.STARTS_PER_TICK
    while h.pool.counts().starting < 10:
        h.tick()
    assert len(h.procs) == 20


def test_restarts_after_a_long_run_share_the_starts_of_a_tick() -> None:
    """Workers killed together (the OOM killer) come back a few per tick, not all at once."""
    h = Harness(10)
    while len(h.procs) < 10:
        h.tick()
    h.ready_all()
    h.tick(pool_mod.CRASH_WINDOW_S + 1)
    for proc in h.procs:
        proc.returncode = -9
    assert _starts_per_tick(h, until=20) == [4, 4, 2]
    assert h.pool.counts().starting == 10
    assert h.pool.restarts == 10


def test_scaling_down_while_workers_wait_to_start_starts_no_more() -> None:
    h = Harness(0)
    h.pool.set_target(30)
    h.tick()
    assert len(h.procs) == pool_mod.STARTS_PER_TICK
    h.pool.set_target(2)
    h.tick()
    h.tick()
    assert len(h.procs) == pool_mod.STARTS_PER_TICK  # none started after the scale-down
    assert h.pool.counts().starting == 2


def test_the_target_is_capped_at_max_workers() -> None:
    h = Harness(12, max_workers=3)
    assert h.pool.target == 3
    assert h.pool.set_target(1000) == 3
    assert h.pool.target == 3
    for _ in range(3):
        h.tick()
    assert len(h.procs) == 3
    h.pool.set_target(2)
    assert h.pool.target == 2


def test_a_crash_loop_backs_off_then_goes_fatal() -> None:
    h = Harness(1)
    h.tick()
    delays = []
    for _ in range(pool_mod.MAX_FAILED_STARTS):
        h.procs[-1].returncode = 1  # dies at once, never ready
        h.tick(0.1)
        worker = h.pool.workers()[0]
        if worker.state == WorkerState.FATAL:
            break
        assert worker.state == WorkerState.BACKOFF
        delays.append(worker.deadline - h.clock.now)
        h.tick(worker.deadline - h.clock.now)  # BACKOFF -> STARTING
        assert worker.state == WorkerState.STARTING
    assert delays == [1.0, 2.0, 4.0, 8.0]
    counts = h.pool.counts()
    assert counts.fatal == 1
    assert counts.alive == 0
    assert counts.restarts == 5
    assert "exited with code 1" in counts.last_error
    h.tick(3600)
    assert len(h.procs) == 5  # FATAL: not started again by time alone
    h.pool.set_target(2)  # an operator's scale is the retry
    h.tick(0.1)
    states = sorted(w.state for w in h.pool.workers())
    assert states == [WorkerState.STARTING, WorkerState.STARTING]
    assert len(h.procs) == 7


def test_a_failed_spawn_backs_off_and_the_others_serve() -> None:
    h = Harness(1)
    h.tick()
    h.ready_all()
    h.fail_spawns = 1
    h.pool.set_target(2)
    h.tick()
    counts = h.pool.counts()
    assert counts.idle == 1
    assert counts.backoff == 1
    assert "cannot start decoder worker 1" in counts.last_error
    assert "temporarily" in counts.last_error
    h.tick(pool_mod.RESPAWN_BACKOFF_S)
    h.ready_all()
    assert h.pool.counts().idle == 2


def test_a_crash_after_a_long_run_restarts_at_once() -> None:
    h = Harness(1)
    h.tick()
    h.ready_all()
    first = h.pool.workers()[0].identity
    h.procs[0].returncode = -9
    h.tick(pool_mod.CRASH_WINDOW_S + 1)
    worker = h.pool.workers()[0]
    assert worker.state == WorkerState.STARTING
    assert worker.identity != first
    assert h.pool.counts().restarts == 1
    assert worker.failed_starts == 0
    # A late message from the process that died is not taken for the new one's.
    h.pool.handle(first, protocol.encode(protocol.WorkerReady()))
    assert worker.state == WorkerState.STARTING


def test_a_stop_escalates_from_the_message_to_sigterm_to_sigkill() -> None:
    h = Harness(1)  # obeys only SIGKILL
    h.tick()
    h.ready_all()
    worker = h.pool.workers()[0]
    proc = h.procs[0]
    h.pool.set_target(0)
    h.tick()
    assert worker.state == WorkerState.STOPPING
    assert h.socket.stops_to(worker.identity) == 1
    assert proc.signals == []
    h.tick(pool_mod.STOP_GRACE_S - 0.1)
    assert proc.signals == []
    h.tick(0.2)
    assert proc.signals == [signal.SIGTERM]
    h.tick(pool_mod.STOP_GRACE_S)
    assert proc.signals == [signal.SIGTERM, signal.SIGKILL]
    h.tick(0.1)
    assert h.pool.workers() == []
    assert h.pool.counts().restarts == 0


def test_a_busy_worker_scaled_down_finishes_its_clip_first() -> None:
    h = Harness(1)
    worker, task = h.busy_worker()
    h.pool.set_target(0)
    h.tick(5)
    assert worker.state == WorkerState.STOPPING
    assert h.socket.stops_to(worker.identity) == 0
    (done,) = h.pool.handle(worker.identity, protocol.encode(protocol.TaskDone(task_id=1)))
    assert (done.job, done.error) == (task, "")
    assert h.socket.stops_to(worker.identity) == 1


def test_a_stalled_decode_is_killed_its_task_handed_back_and_the_worker_replaced() -> None:
    h = Harness(1)
    worker, task = h.busy_worker(7)
    assert h.tick(9.0) == []
    lost = h.tick(1.5)
    assert [f.job for f in lost] == [task]
    assert "stalled for over 10 s" in lost[0].error
    assert h.procs[0].signals == [signal.SIGKILL]
    assert h.pool.counts().restarts == 1
    h.tick(0.1)  # reaped: started again at once
    assert worker.state == WorkerState.STARTING
    assert len(h.procs) == 2
    assert h.pool.counts().restarts == 1  # the kill counted once


def test_a_worker_never_ready_is_killed_and_counts_as_a_failed_start() -> None:
    h = Harness(1)
    h.tick()
    h.tick(pool_mod.START_TIMEOUT_S + 0.1)
    assert h.procs[0].signals == [signal.SIGKILL]
    h.tick(0.1)
    worker = h.pool.workers()[0]
    assert worker.state == WorkerState.BACKOFF
    assert worker.failed_starts == 1


def test_a_dead_busy_worker_hands_its_task_back() -> None:
    h = Harness(1)
    h.tick()
    h.ready_all()
    task = _task(3)
    h.pool.assign(h.pool.workers()[0], task, _payload(task))
    h.procs[0].returncode = -11
    lost = h.tick(1.0)
    assert [f.job for f in lost] == [task]
    assert "exit code -11" in lost[0].error


@pytest.mark.parametrize("obeys", [frozenset({signal.SIGTERM, signal.SIGKILL}),
                                   frozenset({signal.SIGKILL})])
def test_shutdown_stops_every_worker(obeys: frozenset[int]) -> None:
    h = Harness(3, obeys=obeys)
    h.tick()
    h.ready_all()
    busy = h.pool.idle()[0]
    task = _task()
    h.pool.assign(busy, task, _payload(task))
    idle = [w.identity for w in h.pool.idle()]
    h.pool.shutdown(grace_s=0.0)
    assert h.pool.workers() == []
    assert all(p.returncode is not None for p in h.procs)
    assert [h.socket.stops_to(identity) for identity in idle] == [1, 1]
    assert h.procs[0].signals[0] == signal.SIGTERM  # the busy one: its clip is abandoned


def test_becoming_ready_ends_a_run_of_failed_starts() -> None:
    h = Harness(1, fail_spawns=3)
    for _ in range(3):
        h.tick(60)
    assert h.pool.workers()[0].failed_starts == 3
    h.tick(60)
    h.ready_all()
    worker = h.pool.workers()[0]
    assert worker.state == WorkerState.IDLE
    assert worker.failed_starts == 0
    h.procs[-1].returncode = -11  # a crash soon after: a pause, but no step towards FATAL
    h.tick(1.0)
    assert worker.state == WorkerState.BACKOFF
    assert worker.failed_starts == 0
    h.tick(pool_mod.RESPAWN_BACKOFF_S)
    assert worker.state == WorkerState.STARTING


def test_a_ready_message_after_the_start_timeout_kill_is_ignored() -> None:
    h = Harness(1)
    h.tick()
    worker = h.pool.workers()[0]
    stale = worker.identity
    h.tick(pool_mod.START_TIMEOUT_S + 0.1)
    assert worker.state == WorkerState.STOPPING
    assert h.procs[0].signals == [signal.SIGKILL]
    h.pool.handle(stale, protocol.encode(protocol.WorkerReady()))  # sent before it was killed
    assert worker.state == WorkerState.STOPPING
    assert not h.pool.idle()
    h.tick(0.1)
    assert worker.state == WorkerState.BACKOFF
    assert worker.failed_starts == 1
    assert "not ready after" in h.pool.counts().last_error


def test_a_starting_worker_scaled_down_gets_sigterm_then_sigkill() -> None:
    h = Harness(1)
    h.tick()
    h.pool.set_target(0)
    h.tick()
    assert h.procs[0].signals == [signal.SIGTERM]
    h.tick(pool_mod.STOP_GRACE_S)
    assert h.procs[0].signals == [signal.SIGTERM, signal.SIGKILL]
    h.tick(0.1)
    assert h.pool.workers() == []


def test_a_busy_worker_scaled_down_is_escalated_after_its_clip() -> None:
    h = Harness(1)
    worker, _ = h.busy_worker()
    h.pool.set_target(0)
    h.tick(9)  # still decoding: no signal
    assert h.procs[0].signals == []
    h.pool.handle(worker.identity, protocol.encode(protocol.TaskDone(task_id=1)))
    h.tick(pool_mod.STOP_GRACE_S)
    assert h.procs[0].signals == [signal.SIGTERM]


def test_scaling_down_drops_workers_in_back_off_first() -> None:
    h = Harness(2, fail_spawns=1)
    h.tick()
    h.ready_all()
    assert sorted(w.state for w in h.pool.workers()) == [WorkerState.IDLE, WorkerState.BACKOFF]
    h.pool.set_target(1)
    for _ in range(20):  # past its back-off: it must not start again
        h.tick(0.5)
    assert [w.state for w in h.pool.workers()] == [WorkerState.IDLE]
    assert len(h.procs) == 1


def test_a_stalled_worker_being_scaled_down_is_not_replaced() -> None:
    h = Harness(1)
    h.tick()
    h.ready_all()
    task = _task()
    h.pool.assign(h.pool.workers()[0], task, _payload(task))
    h.pool.set_target(0)
    h.tick()
    lost = h.tick(11)
    assert [f.job for f in lost] == [task]
    assert h.procs[0].signals == [signal.SIGKILL]
    h.tick(0.1)
    assert h.pool.workers() == []
    assert len(h.procs) == 1


def test_a_bad_or_deep_message_on_the_work_socket_changes_nothing() -> None:
    h = Harness(1)
    h.tick()
    worker = h.pool.workers()[0]
    for junk in (b"[" * 5000, b"{}", b'{"v": 2, "type": "task_done", "task_id": "x"}'):
        assert h.pool.handle(worker.identity, junk) == []
    assert worker.state == WorkerState.STARTING


def test_an_idle_worker_that_stops_answering_is_replaced_within_seconds() -> None:
    h = Harness(2)
    h.tick()
    h.ready_all()
    for _ in range(20):  # answered pings keep idle workers alive
        h.tick(0.5)
    assert h.pool.counts().idle == 2
    assert h.pool.counts().restarts == 0
    frozen = h.pool.workers()[0]
    h.by_identity[frozen.identity].frozen = True
    h.tick(0.5)
    assert frozen.state == WorkerState.IDLE  # silent a while yet: pinged, not killed
    waited_s = 0.5
    while frozen.state == WorkerState.IDLE:
        h.tick(0.5)
        waited_s += 0.5
    # Killed once silent IDLE_SILENCE_S, which began up to a ping interval before the freeze.
    assert waited_s <= liveness.IDLE_SILENCE_S + 0.5
    assert h.procs[0].signals == [signal.SIGKILL]
    assert "stopped answering" in h.pool.counts().last_error
    h.tick(0.1)  # reaped: started again at once
    assert frozen.state == WorkerState.STARTING
    assert h.pool.counts().restarts == 1
    assert h.pool.workers()[1].state == WorkerState.IDLE


def test_the_stall_deadline_follows_what_decodes_take() -> None:
    h = Harness(1)  # --task-timeout-s 10
    for task_id in range(1, liveness.MIN_SAMPLES + 1):
        worker, job = h.busy_worker(task_id)
        h.clock.now += 0.05
        h.pool.handle(worker.identity, protocol.encode(protocol.TaskDone(task_id=task_id)))
    # 10 x 0.05 s is under the floor: a hung decode is killed after MIN_STALL_S.
    assert h.pool.decode_times.stall_timeout_s(1) == liveness.MIN_STALL_S
    worker, job = h.busy_worker(99)
    assert h.tick(liveness.MIN_STALL_S - 0.1) == []
    lost = h.tick(0.2)
    assert [f.job for f in lost] == [job]


def test_slow_decodes_raise_the_deadline_up_to_the_task_timeout() -> None:
    times = liveness.DecodeTimes(cap_s=60.0)
    for _ in range(liveness.MIN_SAMPLES):
        times.record(2.0, clips=2)  # 1 s per clip
    assert times.stall_timeout_s(3) == 30.0  # 10 x 1 s, per clip
    for _ in range(liveness.RECENT):
        times.record(20.0, clips=1)
    assert times.stall_timeout_s(1) == 60.0


def test_a_worker_that_retires_is_replaced_without_counting_a_failure() -> None:
    h = Harness(1)
    worker, job = h.busy_worker(5)
    (done,) = h.pool.handle(worker.identity, protocol.encode(
        protocol.TaskDone(task_id=5, retiring=True)))
    assert (done.job, done.error) == (job, "")
    assert worker.state == WorkerState.STOPPING
    assert h.pool.idle() == []  # never given another task
    h.procs[0].returncode = 0  # it exits by itself
    h.tick(0.1)
    assert worker.state == WorkerState.STARTING
    counts = h.pool.counts()
    assert (counts.recycled, counts.restarts) == (1, 0)


def test_a_busy_worker_gets_its_next_job_queued_and_starts_it_at_once() -> None:
    h = Harness(1)
    worker, first = h.busy_worker(1)
    assert h.pool.takers() == [worker]  # busy, but with nothing queued
    second = _task(2)
    h.pool.assign(worker, second, _payload(second))
    assert h.pool.takers() == []
    h.clock.now += 1.0
    (done,) = h.pool.handle(worker.identity, protocol.encode(protocol.TaskDone(task_id=1)))
    assert done.job == first
    assert worker.state == WorkerState.BUSY  # on with the queued one, no round trip
    assert (worker.task, worker.queued, worker.task_started) == (second, None, 1.0)
    (done,) = h.pool.handle(worker.identity, protocol.encode(protocol.TaskDone(task_id=2)))
    assert done.job == second
    assert worker.state == WorkerState.IDLE


@pytest.mark.parametrize("fault", ["dies", "stalls", "retires"])
def test_a_queued_job_comes_back_unstarted_when_its_worker_goes(fault: str) -> None:
    h = Harness(1)
    worker, _ = h.busy_worker(1)
    second = _task(2)
    h.pool.assign(worker, second, _payload(second))
    if fault == "dies":
        h.procs[0].returncode = -9
        results = h.tick(0.1)
    elif fault == "stalls":
        results = h.tick(h.pool.decode_times.stall_timeout_s(1) + 1)
    else:
        results = h.pool.handle(worker.identity, protocol.encode(
            protocol.TaskDone(task_id=1, retiring=True)))
    by_job = {r.job.task_id: r for r in results}
    assert by_job[2].requeue
    assert by_job[2].error == ""  # never started: not a failure of its video
    assert (by_job[1].error != "") == (fault != "retires")
    assert worker.task is None
    assert worker.queued is None
