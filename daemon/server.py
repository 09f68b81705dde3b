"""The daemon: owns the ring, the worker pool, scheduling, stats and scaling.

One thread, one loop: poll the control socket (trainers, CLI) and the work
socket (decoder workers) with a short timeout, handle what arrived, then
tick: reap and reconcile workers, kill stalled decodes, drop dead clients'
leases, start filling slots, hand out tasks, answer waiting requests.
Slots and leases are schedule.py's, clips and workers production.py's, bad
videos faults.py's; this module owns the sockets, clients and life cycle.

NOTE [ shutdown ]
A stop comes as a `stop` request, SIGTERM or SIGINT (all set one flag).  Then:
 1. stop accepting: requests get an E_STOPPING error, waiting ones too;
 2. stop workers: idle ones get `worker_stop`, busy ones SIGTERM (a clip in
    flight is simply abandoned: nobody will read that slot again);
 3. join them with a deadline (STOP_GRACE_S), then SIGKILL and reap;
 4. close sockets, unlink the ring segment, remove the runtime folder and
    release the lock.
Trainers that still map the segment keep their pages until they unmap them
(POSIX unlink semantics); they see DaemonUnavailable on their next request.
Workers exit by themselves if the daemon dies without this (they watch
getppid() and ask for SIGKILL on parent death); a segment left by a kill -9
is removed by the next start of the same name.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from vidring.daemon import sampler
from vidring.daemon.config import ServeConfig
from vidring.daemon.faults import FaultLedger
from vidring.daemon.production import Production
from vidring.daemon.manifest import Manifest, load_manifest
from vidring.daemon.pool import STOP_GRACE_S, WorkerPool, WorkerState
from vidring.daemon.probe import ProbeCache, VideoInfo, default_cache_dir
from vidring.daemon.schedule import Key, Scheduler, SlotRecord
from vidring.loader import paths, protocol
from vidring.loader.client import pid_alive, pid_namespace
from vidring.loader.ring import Ring, RingLayout, segment_name

log = logging.getLogger("vidring.daemon")
Message = protocol.Message
Reply = dict[str, Any] | None  # a handler's reply fields; None: no reply (yet)

STATUS_VERSION = 1
_TICK_S = 0.02  # upper bound on reaction time to a dead worker or a stall
_CLIENT_CHECK_S = 1.0
# A request waiting this long past the decode timeout with no clip finished
# means no worker can make progress (a crash loop, or scaled to 0): say so.
_STALL_GRACE_S = 30.0
# Forget a client with no leases after this much silence (the CLI, a closed trainer).
_IDLE_CLIENT_S = 10.0


class StartupError(Exception):
    """The pipeline cannot start; the message says what to fix."""


@dataclass(slots=True)
class ClientRecord:
    pid: int | None = None
    last_seen: float = 0.0
    leases: set[int] = field(default_factory=set)


@dataclass(slots=True)
class Waiting:
    identity: bytes
    req_id: int
    key: Key
    since: float


class Daemon:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.name = config.name
        self._stopping = False
        self._lock_file: Any = None
        self.ring: Ring | None = None
        self._ctx: zmq.Context[Any] | None = None
        self.pool: WorkerPool | None = None
        self.started_at = time.time()
        self._waiting: list[Waiting] = []
        self._clients: dict[bytes, ClientRecord] = {}
        self._lease_owner: dict[int, bytes] = {}
        self._last_client_check = 0.0

    # -- start ----------------------------------------------------------------

    def start(self) -> None:
        cfg = self.config
        self._take_lock()
        try:
            self.manifest: Manifest = load_manifest(cfg.manifest)
            video_paths = [str(row.path) for row in self.manifest.rows]
            self.faults = FaultLedger(video_paths, cfg.retry_delay_s)
            self._probe_all()
            if len(self.faults.quarantine) == len(self.manifest):
                last = self.faults.last_error or {"reason": ""}
                raise StartupError(f"no readable video in {cfg.manifest}: {last['reason']}")
            self.batches_per_epoch = sampler.batches_per_epoch(len(self.manifest), cfg.batch_size)
            if self.batches_per_epoch < 1:
                raise StartupError(f"batch size {cfg.batch_size} is larger than the "
                                   f"{len(self.manifest)} videos of {cfg.manifest}")
            self.labels = np.array([row.label for row in self.manifest.rows], dtype=np.int32)
            layout = RingLayout(cfg.slots, cfg.batch_size, cfg.clip_length, cfg.height,
                                cfg.width, cfg.dtype)
            self.ring = Ring.create(segment_name(self.name), layout)
            # Lease ids start at a random base so a release meant for an earlier
            # daemon of this name can never free one of ours.
            self.sched = Scheduler(cfg.slots, self.batches_per_epoch, cfg.batch_size,
                                   on_change=self._publish_slot,
                                   first_lease_id=secrets.randbits(48))
            self._ctx = zmq.Context()
            self._control = self._bind(f"ipc://{self._folder / 'control.sock'}")
            self._work = self._bind(self._work_endpoint)
            self._poller = zmq.Poller()
            self._poller.register(self._control, zmq.POLLIN)
            self._poller.register(self._work, zmq.POLLIN)
            self.pool = WorkerPool(self._work_endpoint, self.ring.name, self.ring.ring_id,
                                   cfg.workers)
            self.production = Production(cfg, video_paths, self.infos, self.labels, self.ring,
                                         self.sched, self.pool, self._work, self.faults)
        except BaseException:
            self._teardown()
            raise
        if self.manifest.classes:
            log.info("classes: %s", ", ".join(f"{k}={v}" for k, v in self.manifest.classes.items()))
        log.info("serving %r: %d videos, %d batches/epoch of %s %s, %d slots (%.1f MiB), "
                 "%d workers", self.name, len(self.manifest), self.batches_per_epoch,
                 "x".join(map(str, layout.x_shape)), cfg.dtype, cfg.slots,
                 layout.total_bytes / 2**20, cfg.workers)

    def _take_lock(self) -> None:
        root = paths.runtime_root()
        root.mkdir(mode=0o700, exist_ok=True)
        st = root.stat()
        if st.st_uid != os.getuid():
            raise StartupError(f"runtime folder {root} belongs to another user")
        if st.st_mode & 0o077:
            os.chmod(root, 0o700)
        folder = self._folder = root / paths.check_name(self.name)
        self._work_endpoint = f"ipc://{folder / 'work.sock'}"
        folder.mkdir(mode=0o700, exist_ok=True)
        # The lock sits beside the segment it guards, so two daemons of one name
        # conflict whatever their XDG_RUNTIME_DIR.
        # A prefix no segment name has, so no pipeline name can make it collide.
        self._lock_path = Path(f"/dev/shm/vidring.lock-{os.getuid()}-{self.name}")
        while True:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            if os.fstat(fd).st_uid != os.getuid():  # /dev/shm is world-writable
                os.close(fd)
                raise StartupError(f"lock file {self._lock_path} belongs to another user")
            lock_file = os.fdopen(fd, "r+")
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = lock_file.read().strip() or "?"
                lock_file.close()
                raise StartupError(f"pipeline {self.name!r} is already served (pid {holder}); "
                                   f"stop it with `vidring stop {self.name}`") from None
            try:
                if os.stat(self._lock_path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            lock_file.close()  # a stopping daemon unlinked it under us: lock the new file
        self._lock_file = lock_file
        self._lock_file.truncate(0)
        self._lock_file.write(f"{os.getpid()}\n")
        self._lock_file.flush()
        for stale in ("control.sock", "work.sock"):
            (folder / stale).unlink(missing_ok=True)

    def _probe_all(self) -> None:
        cache = ProbeCache(self.config.probe_cache or default_cache_dir())
        started = time.monotonic()
        results = cache.get_many([row.path for row in self.manifest.rows],
                                 processes=max(1, self.config.workers))
        self.infos: list[VideoInfo | None] = []
        for index, result in enumerate(results):
            if isinstance(result, str):
                self.infos.append(None)
                self.faults.probe_failed(index, result)
            else:
                self.infos.append(result)
        log.info("probed %d videos in %.1f s", len(results), time.monotonic() - started)

    def _bind(self, endpoint: str) -> zmq.Socket[Any]:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.MAX_MESSAGE_BYTES)
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a restarted worker reuses its identity
        old_umask = os.umask(0o077)  # the ipc socket file: owner only
        try:
            sock.bind(endpoint)
        finally:
            os.umask(old_umask)
        return sock

    # -- loop -------------------------------------------------------------------

    def request_stop(self, *_: object) -> None:
        self._stopping = True

    def serve_forever(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        try:
            while not self._stopping:
                events = dict(self._poller.poll(int(_TICK_S * 1000)))
                if self._control in events:
                    self._drain(self._control, self._on_control)
                if self._work in events:
                    self._drain(self._work, self.production.on_worker)
                self._tick()
        finally:
            self.shutdown()

    def _drain(self, sock: zmq.Socket[Any], handler: Any) -> None:
        for _ in range(1000):  # bounded, so one flood cannot starve the other socket
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue  # not from a DEALER: nothing to answer
            handler(frames[0], frames[1])

    def _tick(self) -> None:
        now = time.monotonic()
        assert self.pool is not None
        production = self.production
        for worker in self.pool.reconcile(production.send_stop):
            production.worker_gone(worker)
        production.kill_stalled(now)
        production.requeue_due_retries(now)
        if now - self._last_client_check > _CLIENT_CHECK_S:
            self._last_client_check = now
            self._expire_clients(now)
        production.fill([w.key for w in self._waiting])
        production.dispatch()
        self._answer_waiting()

    # -- control ------------------------------------------------------------------

    def _on_control(self, identity: bytes, data: bytes) -> None:
        try:
            msg = protocol.decode(data, allowed=protocol.REQUEST_TYPES)
        except protocol.ProtocolError as exc:
            self._reply_error(identity, protocol.peek_id(data), protocol.E_BAD_MESSAGE, str(exc))
            return
        client = self._clients.setdefault(identity, ClientRecord())
        client.last_seen = time.monotonic()
        if self._stopping and msg.type in protocol.ANSWERED_TYPES:
            self._reply_error(identity, msg.id, protocol.E_STOPPING, "daemon is stopping")
            return
        handler = getattr(self, f"_cmd_{msg.type}")
        try:
            result = handler(identity, client, msg)
        except Exception as exc:  # noqa: BLE001 - a bad request must not stop the daemon
            log.exception("handling %s", msg.type)
            self._reply_error(identity, msg.id, protocol.E_INTERNAL, f"{type(exc).__name__}: {exc}")
            return
        if result is not None and msg.type in protocol.ANSWERED_TYPES:
            self._control.send_multipart([identity, protocol.reply(msg.id, **result)])

    def _reply_error(self, identity: bytes, req_id: int, code: str, message: str) -> None:
        self._control.send_multipart([identity, protocol.error(req_id, code, message)])

    def _cmd_hello(self, identity: bytes, client: ClientRecord, msg: Message) -> Reply:
        # A pid from another pid namespace (a container) cannot be checked here.
        same_ns = msg.get("pid_ns", 0) in (0, pid_namespace())
        client.pid = msg["client_pid"] if same_ns else None
        assert self.ring is not None
        return {"pid": os.getpid(), "pid_ns": pid_namespace(), "name": self.name,
                "segment": self.ring.name,
                "ring_id": self.ring.ring_id, "batches_per_epoch": self.batches_per_epoch,
                "batch_shape": list(self.ring.layout.x_shape), "dtype": self.config.dtype,
                "epoch": self.sched.consumer_epoch, "classes": self.manifest.classes}

    def _cmd_get_batch(self, identity: bytes, client: ClientRecord, msg: Message) -> Reply:
        try:
            key = self.sched.assign(msg["epoch"], msg["index"])
        except IndexError as exc:
            self._reply_error(identity, msg.id, protocol.E_BAD_REQUEST, str(exc))
            return None
        log.debug("request epoch %d index %d -> batch %d", msg["epoch"], msg["index"], key[1])
        slot = self.sched.available(key)
        if slot is not None:
            return self._lease(identity, client, slot)
        # Even with every slot leased, wait a while: TensorFlow's prefetch buffer
        # holds batches it has not trained on yet and lets one go every step.
        self._waiting.append(Waiting(identity, msg.id, key, time.monotonic()))
        return None

    def _exhausted_text(self) -> str:
        n = len(self.sched.slots)
        return (f"the trainer holds all {n} slots of the ring and released none for "
                f"{self.config.exhausted_wait_s:g} s, so no batch can be produced: drop "
                "references to old batches (or call ds.release) or serve with more --slots")

    def _lease(self, identity: bytes, client: ClientRecord, slot: int) -> dict[str, Any]:
        lease_id = self.sched.lease(slot)
        client.leases.add(lease_id)
        self._lease_owner[lease_id] = identity
        rec = self.sched.slots[slot]
        assert rec.key is not None and self.ring is not None
        return {"slot": slot, "lease_id": lease_id, "epoch": rec.key[0],
                "plan_batch": rec.key[1], "fill_seq": rec.fill_seq, "ring_id": self.ring.ring_id}

    def _cmd_release(self, identity: bytes, client: ClientRecord, msg: Message) -> Reply:
        for lease_id in msg["lease_ids"]:
            if self._lease_owner.get(lease_id) == identity:
                self._drop_lease(lease_id)

    def _drop_lease(self, lease_id: int) -> None:
        identity = self._lease_owner.pop(lease_id, None)
        if identity is not None and identity in self._clients:
            self._clients[identity].leases.discard(lease_id)
        self.sched.release(lease_id)

    def _cmd_heartbeat(self, identity: bytes, client: ClientRecord, msg: Message) -> Reply:
        return None

    def _cmd_ping(self, identity: bytes, client: ClientRecord, msg: Message) -> Reply:
        return {}

    def _cmd_bye(self, identity: bytes, client: ClientRecord, msg: Message) -> Reply:
        self._forget_client(identity)

    def _cmd_status(self, identity: bytes, client: ClientRecord, msg: Message) -> Reply:
        return self.status()

    def _cmd_scale(self, identity: bytes, client: ClientRecord, msg: Message) -> Reply:
        assert self.pool is not None
        before = self.pool.target
        self.pool.target = msg["workers"]
        log.info("scale: %d -> %d workers", before, self.pool.target)
        return {"workers": {"target": self.pool.target, "previous": before}}

    def _cmd_stop(self, identity: bytes, client: ClientRecord, msg: Message) -> Reply:
        log.info("stop requested")
        self._stopping = True
        return {"stopping": True}

    def _forget_client(self, identity: bytes) -> None:
        client = self._clients.pop(identity, None)
        if client is not None:
            for lease_id in list(client.leases):
                self._drop_lease(lease_id)
        self._waiting = [w for w in self._waiting if w.identity != identity]

    def _expire_clients(self, now: float) -> None:
        for identity, client in list(self._clients.items()):
            silent_s = now - client.last_seen
            gone = client.pid is not None and not pid_alive(client.pid)
            idle = not client.leases and silent_s > _IDLE_CLIENT_S
            if gone or idle or silent_s > self.config.lease_timeout_s:
                if client.leases:
                    log.info("client pid %s %s: releasing %d leases", client.pid,
                             "exited" if gone else f"silent for {silent_s:.0f} s",
                             len(client.leases))
                self._forget_client(identity)

    def _answer_waiting(self) -> None:
        if not self._waiting:
            self.production.last_progress = time.monotonic()  # nobody waits: no stall
            return
        still: list[Waiting] = []
        now = time.monotonic()
        exhausted = self.sched.all_leased()
        stalled = self._stall_reason()
        for w in self._waiting:
            slot = self.sched.available(w.key)
            client = self._clients.get(w.identity)
            if slot is not None and client is not None:
                self._control.send_multipart([w.identity, protocol.reply(
                    w.req_id, **self._lease(w.identity, client, slot))])
            elif exhausted and now - w.since > self.config.exhausted_wait_s:
                self._reply_error(w.identity, w.req_id, protocol.E_RING_EXHAUSTED,
                                  self._exhausted_text())
            elif stalled:
                self._reply_error(w.identity, w.req_id, protocol.E_STALLED, stalled)
            else:
                still.append(w)
        self._waiting = still

    def _stall_reason(self) -> str:
        assert self.pool is not None
        if self.production.fatal:
            return self.production.fatal
        if self.pool.target == 0:
            return "no decoder workers: the pipeline is scaled to 0 (vidring scale NAME N)"
        idle_s = time.monotonic() - self.production.last_progress
        if self.sched.all_leased():
            return ""  # nothing can be filled; the exhausted wait decides
        if idle_s > self.config.task_timeout_s + _STALL_GRACE_S:
            return (f"no clip finished for {idle_s:.0f} s: {self.pool.alive()} of "
                    f"{self.pool.target} workers alive, {self.pool.died_total} worker deaths; "
                    "see the daemon's log")
        return ""

    def _publish_slot(self, slot: int, rec: SlotRecord) -> None:
        assert self.ring is not None
        epoch, batch = rec.key if rec.key is not None else (-1, -1)
        self.ring.set_slot_state(slot, rec.state, epoch=epoch, plan_batch=batch,
                                 fill_seq=rec.fill_seq)

    # -- status -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        assert self.pool is not None and self.ring is not None
        workers = self.pool.workers.values()
        return {
            "version": STATUS_VERSION,
            "name": self.name,
            "pid": os.getpid(),
            "epoch": self.sched.consumer_epoch,
            "batches_per_epoch": self.batches_per_epoch,
            "batch_shape": list(self.ring.layout.x_shape),
            "dtype": self.config.dtype,
            "slots": self.sched.counts(),
            "workers": {"target": self.pool.target, "alive": self.pool.alive(),
                        "busy": sum(w.state == WorkerState.BUSY for w in workers),
                        "restarts": self.pool.died_total},
            "clips_per_s": self.production.clips_per_s(),
            "clips_total": self.production.clips_total,
            "errors": self.faults.status(),
            "videos": len(self.manifest),
            "classes": self.manifest.classes,
            "manifest": str(self.manifest.source),
            "segment": self.ring.name,
            "ring_mib": round(self.ring.layout.total_bytes / 2**20, 1),
            "clients": len(self._clients),
            "waiting_requests": len(self._waiting),
            "queued_clips": len(self.production.tasks),
            "uptime_s": round(time.time() - self.started_at, 1),
        }

    # -- stop ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """See NOTE [ shutdown ]."""
        self._stopping = True
        for w in self._waiting:
            try:
                self._reply_error(w.identity, w.req_id, protocol.E_STOPPING, "daemon is stopping")
            except zmq.ZMQError:
                pass
        self._waiting = []
        try:
            if self.pool is not None:
                self.pool.shutdown(self.production.send_stop, STOP_GRACE_S)
        finally:
            self._teardown()
        log.info("stopped %r", self.name)

    def _teardown(self) -> None:
        if self._ctx is not None:
            self._ctx.destroy(linger=0)
            self._ctx = None
        if self.ring is not None:
            self.ring.unlink()
            self.ring.close()
            self.ring = None
        if self._lock_file is not None:
            folder = self._folder
            for stale in ("control.sock", "work.sock"):
                (folder / stale).unlink(missing_ok=True)
            self._lock_path.unlink(missing_ok=True)
            try:
                folder.rmdir()
            except OSError:
                pass
            self._lock_file.close()
            self._lock_file = None


def serve(config: ServeConfig) -> int:
    daemon = Daemon(config)
    daemon.start()
    daemon.serve_forever()
    return 0
