"""The decoder processes: the work socket, every worker's state, scaling, restarts, stops.

WorkerPool alone changes a worker's state.  Workers pull work: a worker that is
IDLE has said so (worker_ready or its last task_done) and gets the next task.
States, each transition written where it happens:

    STARTING -> IDLE       its worker_ready arrived
    IDLE -> BUSY           assign(): a task was sent to it
    IDLE -> STOPPING       silent for IDLE_SILENCE_S despite pings (liveness.py): killed
                           now, started again once gone
    BUSY -> IDLE           its task_done arrived
    BUSY -> STOPPING       its task_done said it retires (--worker-max-clips): it exits by
                           itself and is started again once gone
    IDLE -> STOPPING       scaled down: worker_stop now, SIGTERM and SIGKILL on deadlines
    BUSY -> STOPPING       scaled down (it finishes its clip first), or its decode ran
                           past its stall deadline (liveness.py; SIGKILL now, started
                           again once gone)
    STARTING -> STOPPING   scaled down, or not ready within START_TIMEOUT_S (killed: a
                           failed start when reaped)
    * -> EXITED            its process is gone; a worker still wanted goes on:
    EXITED -> STARTING     at once, after a crash of a worker that ran a while, and for
                           a new worker; at most STARTS_PER_TICK starts a tick, the rest
                           wait EXITED for the next ticks
    EXITED -> BACKOFF      a failed start (it could not be spawned or was never ready),
                           or a crash within CRASH_WINDOW_S of its start: started again
                           after a delay (only failed starts count towards FATAL)
    BACKOFF -> STARTING    the delay passed
    EXITED -> FATAL        MAX_FAILED_STARTS failed starts in a row: given up on
    FATAL -> BACKOFF       set_target() (an operator's `vidring scale` is the retry)
    BACKOFF/FATAL/EXITED -> gone  scaled down

Scaling only changes the target; reconcile(), called every tick of the
daemon's loop, starts and stops processes.  See NOTE [ shutdown ] in server.py.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from typing import TYPE_CHECKING, Any

import zmq

from vidring.daemon.liveness import IDLE_SILENCE_S, PING_INTERVAL_S, DecodeTimes
from vidring.daemon.workers import NEVER, Finished, Starter, Worker, WorkerState
from vidring.loader import protocol
from vidring.loader.status import WorkerCounts

if TYPE_CHECKING:
    from collections.abc import Callable

    from vidring.daemon.tasks import Job

log = logging.getLogger("vidring.daemon")

# Each step of a stop (worker_stop, SIGTERM, SIGKILL) waits this long for the exit.
STOP_GRACE_S = 3.0
# A worker that crashes this soon after its start is started again only after a pause.
CRASH_WINDOW_S = 5.0
# A worker not ready this long after its start is stuck (an import hanging on a mount).
START_TIMEOUT_S = 60.0
# After the n-th failed start in a row, wait RESPAWN_BACKOFF_S * 2**(n-1) before the next.
RESPAWN_BACKOFF_S = 1.0
MAX_FAILED_STARTS = 5
# Processes started per tick: each start is a fork and exec that holds up the loop, so a
# scale to hundreds must not leave the daemon deaf to commands and SIGTERM for seconds.
STARTS_PER_TICK = 4
_IN_FLIGHT = frozenset({WorkerState.BUSY, WorkerState.STARTING, WorkerState.STOPPING,
                        WorkerState.EXITED})
# Messages handled per socket per turn of the loop, so a flood on one cannot starve the other.
DRAIN_LIMIT = 1000


class WorkerPool:
    def __init__(self, socket: zmq.Socket[Any], starter: Starter, target: int, *,
                 task_timeout_s: float, max_workers: int = protocol.MAX_WORKERS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.socket = socket
        self._starter = starter
        self.max_workers = max_workers
        self._target = self._capped(target)
        self.decode_times = DecodeTimes(task_timeout_s)
        self._clock = clock
        self._workers: dict[int, Worker] = {}
        self._by_identity: dict[bytes, Worker] = {}
        self._next_id = 0
        self.restarts = 0
        self.recycled = 0  # workers retired after --worker-max-clips and replaced
        self._starts_left = STARTS_PER_TICK
        self.last_error = ""

    # -- queries ------------------------------------------------------------------

    @property
    def target(self) -> int:
        return self._target

    def workers(self) -> list[Worker]:
        return list(self._workers.values())

    def idle(self) -> list[Worker]:
        return [w for w in self._workers.values() if w.state == WorkerState.IDLE]

    def in_flight(self) -> bool:
        """Whether any worker decodes, starts, stops or waits to start, or one is yet to be
        made (the loop then ticks fast)."""
        return (any(w.state in _IN_FLIGHT for w in self._workers.values())
                or len(self._counted()) < self._target)

    def alive(self) -> int:
        return sum(w.proc is not None for w in self._workers.values())

    def counts(self) -> WorkerCounts:
        states = [w.state for w in self._workers.values()]
        return WorkerCounts(
            target=self._target, alive=self.alive(), starting=states.count(WorkerState.STARTING),
            idle=states.count(WorkerState.IDLE), busy=states.count(WorkerState.BUSY),
            stopping=states.count(WorkerState.STOPPING),
            backoff=states.count(WorkerState.BACKOFF), fatal=states.count(WorkerState.FATAL),
            restarts=self.restarts, recycled=self.recycled, last_error=self.last_error)

    # -- commands -----------------------------------------------------------------

    def set_target(self, target: int) -> int:
        """Change the worker count (reconcile() acts on it), at most max_workers; returns
        the previous target."""
        previous, self._target = self._target, self._capped(target)
        now = self._clock()
        for worker in self._workers.values():
            if worker.state == WorkerState.FATAL:
                worker.state = WorkerState.BACKOFF  # FATAL -> BACKOFF: retried now
                worker.failed_starts = 0
                worker.deadline = now
        return previous

    def _capped(self, target: int) -> int:
        if target > self.max_workers:
            log.warning("%d workers asked for: running %d, the most --max-workers allows",
                        target, self.max_workers)
        return min(target, self.max_workers)

    def takers(self) -> list[Worker]:
        """Workers that can take a job now: the idle ones first, then busy ones with none
        queued.  A busy worker's next job waits in its socket, so it starts the moment the
        last one ends, without a round trip to the daemon (workers sat idle 4-11% of the
        time between jobs before); never more than one, so a slow file holds up little."""
        workers = self._workers.values()
        return ([w for w in workers if w.state == WorkerState.IDLE]
                + [w for w in workers if w.state == WorkerState.BUSY and w.queued is None])

    def assign(self, worker: Worker, task: Job, payload: bytes) -> None:
        """Send a worker a job (`payload`, an encoded protocol.Task): an IDLE one starts it,
        a BUSY one queues it behind the one it decodes."""
        self.socket.send_multipart([worker.identity, payload])
        if worker.state == WorkerState.IDLE:
            worker.state = WorkerState.BUSY  # IDLE -> BUSY
            worker.task = task
            worker.task_started = self._clock()
        else:
            assert worker.state == WorkerState.BUSY, worker
            assert worker.queued is None, worker
            worker.queued = task

    # -- messages from workers ----------------------------------------------------------

    def receive(self) -> list[Finished]:
        """Handle the messages waiting on the work socket; returns the tasks they finished."""
        finished: list[Finished] = []
        for _ in range(DRAIN_LIMIT):
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) == 2:
                finished += self.handle(frames[0], frames[1])
        return finished

    def handle(self, identity: bytes, data: bytes) -> list[Finished]:
        worker = self._by_identity.get(identity)
        if worker is None:
            return []  # from a process already gone, or not one of ours: not even logged
        try:
            msg = protocol.decode(data, protocol.WORKER_MESSAGES)
        except protocol.ProtocolError as exc:
            log.error("decoder worker %d sent a bad message: %s", worker.worker_id, exc)
            return []
        now = self._clock()
        worker.heard_at = now
        if isinstance(msg, protocol.WorkerReady):  # ready, or the answer to a ping
            if worker.state == WorkerState.STARTING:
                worker.state = WorkerState.IDLE  # STARTING -> IDLE
                worker.deadline = NEVER
                worker.failed_starts = 0
            return []
        assert isinstance(msg, protocol.TaskDone)
        task = worker.task
        if task is None or task.task_id != msg.task_id:
            return []  # a result for a task already handed back
        if not msg.error:
            self.decode_times.record(now - worker.task_started, len(task.tasks))
        done = [Finished(task, msg.error, msg.permanent, now - worker.task_started,
                         tuple(msg.stages))]
        worker.task, worker.queued = worker.queued, None
        worker.task_started = now
        if msg.retiring:
            # It exits now: a job queued behind this one was never started.
            done += self._unstarted(worker)
            self.recycled += 1
            worker.respawn = worker.state == WorkerState.BUSY
            worker.state = WorkerState.STOPPING  # BUSY -> STOPPING: retired, exits by itself
            worker.deadline = now + STOP_GRACE_S
        elif worker.task is not None:
            pass  # BUSY (or STOPPING) on with the job it had queued
        elif worker.state == WorkerState.STOPPING:
            self._send_stop(worker, now)  # its clips are done: now it can go
        else:
            worker.state = WorkerState.IDLE  # BUSY -> IDLE
        return done

    @staticmethod
    def _unstarted(worker: Worker) -> list[Finished]:
        """Hand back the job a worker had queued and will not decode (not a failure)."""
        queued = worker.task if worker.task is not None else worker.queued
        worker.task = worker.queued = None
        return [] if queued is None else [Finished(queued, "", requeue=True)]

    # -- the loop's tick ----------------------------------------------------------------

    def reconcile(self) -> list[Finished]:
        """Reap, restart, scale and escalate stops; returns the tasks of workers lost."""
        now = self._clock()
        self._starts_left = STARTS_PER_TICK
        lost = self._reap(now) + self._kill_stalled(now)
        self._check_idle(now)
        counted = self._counted()
        for _ in range(max(0, min(self._target - len(counted), self._starts_left))):
            worker = Worker(self._next_id)
            self._next_id += 1
            self._workers[worker.worker_id] = worker
            self._start(worker, now)
        if len(counted) > self._target:
            # What costs least first: nothing running, then starting, idle, and busy last;
            # the newest first within each.
            order = (WorkerState.STOPPING, WorkerState.EXITED, WorkerState.FATAL,
                     WorkerState.BACKOFF, WorkerState.STARTING, WorkerState.IDLE,
                     WorkerState.BUSY)
            surplus = sorted(counted, key=lambda w: (order.index(w.state), -w.worker_id))
            for worker in surplus[: len(counted) - self._target]:
                self._begin_stop(worker, now)
        for worker in list(self._workers.values()):
            if now < worker.deadline:
                continue
            if worker.state in (WorkerState.BACKOFF, WorkerState.EXITED):
                if self._starts_left:
                    self._start(worker, now)  # BACKOFF/EXITED -> STARTING
            elif worker.state == WorkerState.STARTING:
                log.warning("decoder worker %d not ready after %g s: killing it",
                            worker.worker_id, START_TIMEOUT_S)
                worker.respawn = worker.start_failed = True
                self._signal(worker, signal.SIGKILL, now)  # STARTING -> STOPPING
            elif worker.state == WorkerState.STOPPING and worker.task is None:
                self._signal(worker, signal.SIGKILL if worker.signals_sent else signal.SIGTERM,
                             now)
        return lost

    def _counted(self) -> list[Worker]:
        """The workers that count towards the target; one killed to be replaced still
        counts: it comes back when reaped."""
        return [w for w in self._workers.values()
                if w.state != WorkerState.STOPPING or w.respawn]

    def _start(self, worker: Worker, now: float) -> None:
        if not self._starts_left:
            worker.state, worker.deadline = WorkerState.EXITED, now  # a later tick starts it
            return
        self._starts_left -= 1
        worker.generation += 1
        worker.respawn = worker.start_failed = False
        try:
            proc = self._starter(worker.identity)
        except OSError as exc:
            self._failed_start(worker, now, f"cannot start decoder worker {worker.worker_id}: "
                                            f"{exc}")
            return
        worker.proc = proc
        self._by_identity[worker.identity] = worker
        worker.state = WorkerState.STARTING  # EXITED/BACKOFF -> STARTING
        worker.started_at = worker.heard_at = now
        worker.deadline = now + START_TIMEOUT_S
        worker.signals_sent = 0

    def _failed_start(self, worker: Worker, now: float, reason: str) -> None:
        worker.failed_starts += 1
        self.last_error = reason
        if worker.failed_starts >= MAX_FAILED_STARTS:
            worker.state = WorkerState.FATAL  # EXITED -> FATAL
            worker.deadline = NEVER
            log.error("%s; %d failed starts in a row, giving up on it (`vidring scale` tries "
                      "again)", reason, worker.failed_starts)
        else:
            delay_s = RESPAWN_BACKOFF_S * 2 ** (worker.failed_starts - 1)
            worker.state = WorkerState.BACKOFF  # EXITED -> BACKOFF
            worker.deadline = now + delay_s
            log.warning("%s; starting it again in %g s", reason, delay_s)

    def _begin_stop(self, worker: Worker, now: float) -> None:
        if worker.state == WorkerState.STOPPING:
            worker.respawn = False  # being killed already: just not replaced
        elif worker.state in (WorkerState.BACKOFF, WorkerState.FATAL, WorkerState.EXITED):
            worker.state = WorkerState.EXITED  # nothing runs: gone
            del self._workers[worker.worker_id]
        elif worker.state == WorkerState.IDLE:
            self._send_stop(worker, now)  # IDLE -> STOPPING
        elif worker.state == WorkerState.BUSY:
            worker.state = WorkerState.STOPPING  # BUSY -> STOPPING, after its clip
            worker.deadline = NEVER
        elif worker.state == WorkerState.STARTING:
            self._signal(worker, signal.SIGTERM, now)  # STARTING -> STOPPING

    def _send_stop(self, worker: Worker, now: float) -> None:
        self.socket.send_multipart([worker.identity, protocol.encode(protocol.WorkerStop())])
        worker.state = WorkerState.STOPPING
        worker.deadline = now + STOP_GRACE_S

    def _signal(self, worker: Worker, sig: int, now: float) -> None:
        worker.state = WorkerState.STOPPING
        worker.deadline = now + STOP_GRACE_S if sig != signal.SIGKILL else NEVER
        worker.signals_sent += 1
        if worker.proc is not None:
            try:
                worker.proc.send_signal(sig)
            except ProcessLookupError:
                pass  # exited already; the next reap sees it

    def _check_idle(self, now: float) -> None:
        for worker in self._workers.values():
            if worker.state != WorkerState.IDLE:
                continue
            silent_s = now - worker.heard_at
            if silent_s > IDLE_SILENCE_S:
                self.restarts += 1
                self.last_error = (f"decoder worker {worker.worker_id} stopped answering "
                                   f"({silent_s:.1f} s silent while idle): killed and replaced")
                log.warning("%s", self.last_error)
                worker.respawn = True
                self._signal(worker, signal.SIGKILL, now)  # IDLE -> STOPPING (killed)
            elif silent_s > PING_INTERVAL_S and now - worker.pinged_at > PING_INTERVAL_S:
                self.socket.send_multipart([worker.identity,
                                            protocol.encode(protocol.WorkerPing())])
                worker.pinged_at = now

    def _kill_stalled(self, now: float) -> list[Finished]:
        lost = []
        for worker in self._workers.values():
            task = worker.task
            if task is None:
                continue
            timeout_s = self.decode_times.stall_timeout_s(len(task.tasks))
            if now - worker.task_started <= timeout_s:
                continue
            worker.task = None
            lost += self._unstarted(worker)
            worker.respawn = worker.state == WorkerState.BUSY  # not if it was scaled down
            self._signal(worker, signal.SIGKILL, now)  # BUSY/STOPPING -> STOPPING (killed)
            self.restarts += 1
            lost.append(Finished(task, f"decode stalled for over {timeout_s:.3g} s; "
                                       f"worker {worker.worker_id} killed"))
        return lost

    def _reap(self, now: float) -> list[Finished]:
        lost = []
        for worker in list(self._workers.values()):
            if worker.proc is None or worker.proc.poll() is None:
                continue
            code = worker.proc.returncode
            del self._by_identity[worker.identity]
            worker.proc = None
            if worker.task is not None:
                lost.append(Finished(worker.task, f"decoder worker {worker.worker_id} died "
                                                  f"(exit code {code}) while decoding this clip"))
                worker.task = None
            lost += self._unstarted(worker)
            asked, respawn = worker.state == WorkerState.STOPPING, worker.respawn
            never_ready = worker.state == WorkerState.STARTING
            worker.state = WorkerState.EXITED  # * -> EXITED
            ran_s = now - worker.started_at
            reason = (f"decoder worker {worker.worker_id} exited with code {code} after "
                      f"{ran_s:.1f} s")
            if asked and not respawn:
                del self._workers[worker.worker_id]  # scaled down: gone for good
            elif asked and worker.start_failed:
                self._failed_start(worker, now, f"decoder worker {worker.worker_id} not ready "
                                                f"after {START_TIMEOUT_S:g} s")
            elif asked:
                self._start(worker, now)  # EXITED -> STARTING (killed while stalled)
            elif never_ready:
                self.restarts += 1
                self._failed_start(worker, now, reason)
            else:
                self.restarts += 1
                self.last_error = reason
                if ran_s < CRASH_WINDOW_S:
                    worker.state = WorkerState.BACKOFF  # EXITED -> BACKOFF (a quick crash)
                    worker.deadline = now + RESPAWN_BACKOFF_S
                    log.warning("%s; starting it again in %g s", reason, RESPAWN_BACKOFF_S)
                else:
                    log.warning("%s; starting it again", reason)
                    self._start(worker, now)  # EXITED -> STARTING
        return lost

    # -- shutdown -----------------------------------------------------------------

    def shutdown(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every worker: see NOTE [ shutdown ] in server.py.  Blocks up to grace_s + 5 s."""
        self._target = 0
        now = self._clock()
        for worker in list(self._workers.values()):
            if worker.state == WorkerState.IDLE:
                self._send_stop(worker, now)
            elif worker.proc is not None:
                worker.task = worker.queued = None  # abandoned: nobody reads this slot again
                self._signal(worker, signal.SIGTERM, now)
        end = self._clock() + grace_s
        for worker in self._workers.values():
            if worker.proc is None:
                continue
            try:
                worker.proc.wait(timeout=max(0.0, end - self._clock()))
            except subprocess.TimeoutExpired:
                worker.proc.send_signal(signal.SIGKILL)
                try:
                    worker.proc.wait(timeout=5.0)
                except subprocess.TimeoutExpired:
                    pass  # stuck in the kernel (a hung mount); init reaps it when it dies
        self._workers.clear()
        self._by_identity.clear()

