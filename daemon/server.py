"""The daemon's loop, its clients and the dispatch of their commands.

One thread, one loop: poll the control socket (trainers, CLI) and the work
socket (decoder workers) with a short timeout, handle what arrived, then
tick: reconcile workers, drop gone clients' leases, start filling slots,
hand out tasks, answer waiting requests.  Each piece of state has one owner
and this module wires them: slots and leases are schedule.py's, workers
pool.py's, clips production.py's (tasks.py's queue), bad videos faults.py's,
the runtime folder runtime.py's; startup.py builds it all.  What a request
does is in its command class (commands.py).

NOTE [ shutdown ]
A stop comes as a `stop` request, SIGTERM or SIGINT (all set one flag).  Then:
 1. stop accepting: waiting requests get an E_STOPPING error;
 2. stop workers: idle ones get `worker_stop`, busy ones SIGTERM (a clip in
    flight is simply abandoned: nobody will read that slot again);
 3. join them with a deadline (pool.STOP_GRACE_S), then SIGKILL and reap;
 4. close sockets, unlink the ring segment, remove the runtime folder and
    release the lock (startup.py's ExitStack unwinds in this order).
Trainers that still map the segment keep their pages until they unmap them
(POSIX unlink semantics); they see DaemonUnavailable on their next request.
Workers exit by themselves if the daemon dies without this (they watch
getppid() and ask for SIGKILL on parent death); a segment left by a kill -9
is removed by the next start of the same name.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psutil
import zmq

from vidring.daemon.autoscale import Autoscaler, Meter, parse_range
from vidring.daemon.clients import Clients
from vidring.daemon.commands import REGISTRY, BadRequest
from vidring.daemon.config import ServeConfig
from vidring.daemon.faults import FaultLedger
from vidring.daemon.manifest import Manifest
from vidring.daemon.notify import Notifier
from vidring.daemon.pool import DRAIN_LIMIT, WorkerPool
from vidring.daemon.production import Production
from vidring.daemon.schedule import Key, Scheduler
from vidring.daemon.starting import status_at_start
from vidring.daemon.targets import Targets
from vidring.daemon.telemetry import Telemetry
from vidring.daemon.waiting import Progress, Verdict, Waiting, WaitPolicy
from vidring.loader import protocol
from vidring.loader.ring import Ring

if TYPE_CHECKING:
    from collections.abc import Callable

    from vidring.daemon.workers import Finished
    from vidring.loader.status import StatusRecord

log = logging.getLogger("vidring.daemon")

_TICK_S = 0.02  # upper bound on reaction time to a dead worker or a stall
# With nothing in flight (no clip decoding or queued, no request waiting) the loop wakes
# this often instead: an idle daemon costs next to no CPU, and every message still wakes
# it at once (the poll returns on any socket event).
_IDLE_TICK_S = 0.25
_CLIENT_CHECK_S = 1.0
# Workers' processes are checked (a wait4 each) at most this often, not on every message.
_RECONCILE_S = 0.01


@dataclass(frozen=True, slots=True)
class Parts:
    """What startup.py builds; the daemon owns it from then on."""

    config: ServeConfig
    manifest: Manifest
    labels: Targets
    ring: Ring
    sched: Scheduler
    faults: FaultLedger
    production: Production
    pool: WorkerPool
    control: zmq.Socket[Any]
    resources: contextlib.ExitStack  # closing it is steps 2-4 of NOTE [ shutdown ]
    stop: threading.Event  # set by `stop`, SIGTERM, SIGINT or SIGHUP (startup.serve's)
    notifier: Notifier  # systemd's notify socket (does nothing outside systemd)
    telemetry: Telemetry  # live statistics and metrics


class Daemon:
    def __init__(self, parts: Parts, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = parts.config
        self.manifest = parts.manifest
        self.labels = parts.labels
        self.ring = parts.ring
        self.sched = parts.sched
        self.faults = parts.faults
        self.production = parts.production
        self.pool = parts.pool
        self._control = parts.control
        self._resources = parts.resources
        self._notifier = parts.notifier
        self._autoscaler: Autoscaler | None = None
        self._meter: Meter | None = None
        if parts.config.autoscale:
            least, most = parse_range(parts.config.autoscale)
            cap = parts.pool.max_workers
            self._autoscaler = Autoscaler(min(least, cap), min(most, cap))
            self._meter = Meter(clock(), _idle_cores)
        self.telemetry = parts.telemetry
        self._clock = clock
        self._policy = WaitPolicy(self.config.exhausted_wait_s, self.config.task_timeout_s)
        self._stop = parts.stop
        self._started_at = time.time()
        self._waiting: list[Waiting] = []
        self.clients = Clients(self.config.lease_timeout_s)
        self._last_client_check = 0.0
        self._reconciled_at = -_RECONCILE_S

    # -- loop ---------------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def serve_forever(self) -> None:
        poller = zmq.Poller()
        poller.register(self._control, zmq.POLLIN)
        poller.register(self.pool.socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(int(self._tick_s() * 1000)))
                if self._control in events:
                    self._receive_control()
                if self.pool.socket in events:
                    self._finish(self.pool.receive())
                self._tick()
        finally:
            self.close()

    def _tick_s(self) -> float:
        if self._waiting or len(self.production.tasks) or self.pool.in_flight():
            return _TICK_S
        watchdog_s = self._notifier.watchdog_every_s
        return _IDLE_TICK_S if watchdog_s is None else min(_IDLE_TICK_S, watchdog_s / 2)

    def _receive_control(self) -> None:
        for _ in range(DRAIN_LIMIT):
            try:
                frames = self._control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) == 2:  # else not from a DEALER: nothing to answer
                self._on_control(frames[0], frames[1])

    def _tick(self) -> None:
        now = self._clock()
        if now - self._reconciled_at >= _RECONCILE_S:
            self._reconciled_at = now
            self._finish(self.pool.reconcile())
        self._notifier.serving(now, batch_ready=lambda: self.sched.counts().ready > 0,
                               status=self._status_line)
        self.telemetry.tick(now, self)
        if self._meter is not None and self._autoscaler is not None:
            slots = self.sched.counts()
            window = self._meter.tick(now, slots.ready, slots.total)
            decision = window and self._autoscaler.decide(self.pool.target, window)
            if decision:
                self.scale(*decision)
        if now - self._last_client_check > _CLIENT_CHECK_S:
            self._last_client_check = now
            self._expire_clients(now)
        for slot, key in self.sched.next_fills([w.key for w in self._waiting]):
            self.production.add_batch(slot, key)
        self.production.dispatch(self.pool)
        self._answer_waiting(now)

    def _finish(self, results: list[Finished]) -> None:
        for result in results:
            if not result.error and not result.requeue:
                self.telemetry.clip_done(self.production.path_of(result.job.tasks[0]),
                                         result.seconds, len(result.job.tasks),
                                         list(result.stages))
            for slot, position in self.production.finished(result):
                self.sched.clip_done(slot, position)

    # -- commands -------------------------------------------------------------------

    def _on_control(self, identity: bytes, data: bytes) -> None:
        try:
            req = protocol.decode(data, protocol.requests())
        except protocol.ProtocolError as exc:
            self._error(identity, protocol.peek_id(data), protocol.E_BAD_MESSAGE, str(exc))
            return
        assert isinstance(req, protocol.Request)
        self.clients.seen(identity, self._clock())
        if self._stop.is_set() and req.reply_type is not None:
            self._error(identity, req.id, protocol.E_STOPPING, "daemon is stopping")
            return
        notice = self.clients.take_notice(identity) if req.reply_type is not None else None
        if notice is not None:
            self._error(identity, req.id, protocol.E_LEASE_EXPIRED, notice)
            return
        try:
            body = REGISTRY[type(req)].handle(self, identity, req)
            if body is not None and req.reply_type is not None:
                self._control.send_multipart([identity, protocol.reply(req.id, body)])
        except BadRequest as exc:
            self._error(identity, req.id, protocol.E_BAD_REQUEST, str(exc))
        except Exception as exc:  # a bad request (or a reply too big to send) must not stop us
            log.exception("handling %s", protocol.type_name(type(req)))
            self._error(identity, req.id, protocol.E_INTERNAL, f"{type(exc).__name__}: {exc}")

    def _error(self, identity: bytes, req_id: int, code: str, message: str) -> None:
        self._control.send_multipart([identity, protocol.error(req_id, code, message)])

    def wait_for(self, identity: bytes, req_id: int, key: Key) -> None:
        """Answer request `req_id` once batch `key` is ready (or say why it cannot be)."""
        self._waiting.append(Waiting(identity, req_id, key, self._clock()))

    def lease(self, identity: bytes, slot: int, waited_s: float = 0.0) -> protocol.Lease:
        self.telemetry.trainer_waited(waited_s)
        if self._meter is not None:
            self._meter.waited(waited_s)
        lease_id = self.sched.lease(slot, identity)
        rec = self.sched.slots[slot]
        assert rec.key is not None
        return protocol.Lease(slot=slot, lease_id=lease_id, epoch=rec.key[0],
                              plan_batch=rec.key[1], fill_seq=rec.fill_seq,
                              ring_id=self.ring.ring_id)

    def forget_client(self, identity: bytes) -> None:
        self.clients.forget(identity)
        self.sched.forget(identity)
        self._waiting = [w for w in self._waiting if w.identity != identity]

    def _expire_clients(self, now: float) -> None:
        forget, expire = self.clients.sweep(now, self.sched.held_by)
        for identity in forget:
            self.forget_client(identity)
        for identity in expire:
            keys = self.sched.release_owner(identity)
            self.clients.leases_expired(identity, keys, self.clients.silent_s(identity, now))

    def _answer_waiting(self, now: float) -> None:
        if not self._waiting:
            return
        progress = Progress(
            slots=len(self.sched.slots), all_leased=self.sched.all_leased(),
            workers_wanted=self.pool.target, workers_alive=self.pool.alive(),
            worker_restarts=self.pool.restarts, last_clip_at=self.production.last_clip_at,
            fatal=self.production.tasks.fatal)
        still: list[Waiting] = []
        for w in self._waiting:
            slot = self.sched.available(w.key)
            if slot is not None:
                lease = self.lease(w.identity, slot, waited_s=now - w.since)
                self._control.send_multipart([w.identity, protocol.reply(w.req_id, lease)])
                continue
            verdict, text = self._policy.judge(w, now, progress,
                                               holds=self.sched.held_by(w.identity))
            if verdict is Verdict.SPILL:
                self._error(w.identity, w.req_id, protocol.E_RING_FULL, text)
            elif verdict is Verdict.EXHAUSTED:
                self._error(w.identity, w.req_id, protocol.E_RING_EXHAUSTED, text)
            elif verdict is Verdict.STALLED:
                self._error(w.identity, w.req_id, protocol.E_STALLED, text)
            else:
                still.append(w)
        self._waiting = still

    def _status_line(self) -> str:
        slots = self.sched.counts()
        return (f"{slots.ready}/{slots.total} batches ready, "
                f"{self.production.clips_per_s():.1f} clips/s, {self.pool.alive()} workers")

    def status(self) -> StatusRecord:
        start = status_at_start(self.config, videos=len(self.manifest),
                                manifest=str(self.manifest.source),
                                uptime_s=time.time() - self._started_at)
        return dataclasses.replace(
            start, phase="serving", probed=len(self.manifest),
            epoch=self.sched.consumer_epoch, batches_per_epoch=self.sched.batches_per_epoch,
            slots=self.sched.counts(), workers=self.pool.counts(),
            clips_per_s=self.production.clips_per_s(), clips_total=self.production.clips_total,
            errors=self.faults.summary(), classes=len(self.labels.classes),
            label_shape=self.ring.layout.y_shape, weights=self.manifest.weighted,
            ring_mib=round(self.ring.layout.total_bytes / 2**20, 1), clients=len(self.clients),
            spilled=self.clients.spilled_total, waiting_requests=len(self._waiting),
            queued_clips=len(self.production.tasks))

    def scale(self, target: int, reason: str) -> int:
        """Set the worker target (a command or the autoscaler); returns the previous one."""
        previous = self.pool.set_target(target)
        target = self.pool.target
        self._reconciled_at = -_RECONCILE_S  # act on it this tick
        if previous != target:
            log.info("scale: %d -> %d workers (%s)", previous, target, reason)
            self.telemetry.scaled(f"{previous} -> {target}: {reason.removeprefix('autoscale: ')}")
        return previous

    @property
    def autoscale_range(self) -> str:
        return self.config.autoscale or ""

    # -- stop -----------------------------------------------------------------------

    def close(self) -> None:
        """See NOTE [ shutdown ]."""
        self._stop.set()
        self._notifier.stopping()
        for w in self._waiting:
            with contextlib.suppress(zmq.ZMQError):
                self._error(w.identity, w.req_id, protocol.E_STOPPING, "daemon is stopping")
        self._waiting = []
        self._resources.close()
        self._notifier.close()
        log.info("stopped %r", self.config.name)


def _idle_cores() -> float:
    """Cores idle since the last call, over the whole machine (the trainer counts too)."""
    cores = psutil.cpu_count() or 1
    return (100.0 - psutil.cpu_percent(interval=None)) / 100.0 * cores
