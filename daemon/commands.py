"""The daemon's commands, one class each (in the style of Circus's commands).

A command class holds all there is to know of one request: its message and
reply record (declared here, or in loader/protocol.py when the trainer sends
it too), what the daemon does with it, and for an operator command, the
`vidring` subcommand's arguments and how it prints the reply.  The daemon
dispatches by request type through `REGISTRY`; the CLI builds its subcommands
from it.  Adding a command is adding one class here.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Generic, TypeVar

import msgspec

from vidring.loader import paths, protocol
from vidring.loader.client import pid_namespace, same_pid_namespace

if TYPE_CHECKING:
    import argparse

    from vidring.daemon.server import Daemon
    from vidring.loader.status import StatusRecord

log = logging.getLogger("vidring.daemon")
Req = TypeVar("Req", bound=protocol.Request)


class BadRequest(Exception):
    """A well-formed request the daemon cannot honour; the text says why."""


class Command(Generic[Req]):
    """Base of commands; the docstring of a subclass is its help text."""

    request: ClassVar[type[protocol.Request]]
    cli: ClassVar[bool] = False  # a `vidring NAME PIPELINE` subcommand

    @property
    def name(self) -> str:
        return protocol.type_name(self.request)

    def handle(self, daemon: Daemon, identity: bytes, req: Req) -> Any:
        """The reply record, or None: one-way, or answered later (a waiting get_batch)."""
        raise NotImplementedError

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """The subcommand's own arguments, after the pipeline name."""

    def build_request(self, args: argparse.Namespace) -> protocol.Request:
        return self.request()

    def render(self, reply: Any, args: argparse.Namespace) -> str:
        return ""

    def when_gone(self, args: argparse.Namespace) -> bool:
        """The daemon is not there: True if the command did its job anyway."""
        return False


REGISTRY: dict[type[protocol.Request], Command[Any]] = {}
C = TypeVar("C", bound=type[Command[Any]])


def command(cls: C) -> C:
    instance = cls()
    protocol.register(cls.request)
    REGISTRY[cls.request] = instance
    return cls


def by_name(name: str) -> Command[Any]:
    for cmd in REGISTRY.values():
        if cmd.name == name:
            return cmd
    raise KeyError(name)


# -- the trainer's --------------------------------------------------------------------


@command
class Hello(Command[protocol.Hello]):
    """Introduce a client: its pid (so its leases go when it exits), the pipeline's shape."""

    request = protocol.Hello

    def handle(self, daemon: Daemon, identity: bytes, req: protocol.Hello) -> Any:
        # A pid from another pid namespace (a container), or from one that could not be
        # read, cannot be checked here.
        known = same_pid_namespace(req.pid_ns)
        daemon.clients.record(identity).pid = req.client_pid if known else None
        try:
            batches = daemon.sched.set_part(identity, req.shard, req.num_shards)
        except IndexError as exc:
            raise BadRequest(str(exc)) from None
        return protocol.HelloReply(status=daemon.status(), batches=batches,
                                   pid_ns=pid_namespace(), ring_id=daemon.ring.ring_id,
                                   classes=daemon.labels.classes)


@command
class Paths(Command[protocol.Paths]):
    """The files of manifest rows, for a batch's provenance."""

    request = protocol.Paths

    def handle(self, daemon: Daemon, identity: bytes, req: protocol.Paths) -> Any:
        rows = daemon.manifest.rows
        for index in req.indices:
            if index >= len(rows):
                raise BadRequest(f"manifest row {index} out of range 0..{len(rows) - 1}")
        return protocol.PathsReply(paths=[os.fsencode(rows[i].path) for i in req.indices])


@command
class GetBatch(Command[protocol.GetBatch]):
    """Lease the slot holding batch `index` of `epoch`, once it is ready."""

    request = protocol.GetBatch

    def handle(self, daemon: Daemon, identity: bytes, req: protocol.GetBatch) -> Any:
        try:
            key = daemon.sched.assign(identity, req.epoch, req.index)
        except IndexError as exc:
            raise BadRequest(str(exc)) from None
        slot = daemon.sched.available(key)
        if slot is not None:
            return daemon.lease(identity, slot)
        daemon.wait_for(identity, req.id, key)
        return None  # answered once its batch is ready


@command
class Release(Command[protocol.Release]):
    """Give leases back (one-way)."""

    request = protocol.Release

    def handle(self, daemon: Daemon, identity: bytes, req: protocol.Release) -> Any:
        released = sum(daemon.sched.release(lease_id, identity) for lease_id in req.lease_ids)
        if req.spilled and released:
            daemon.clients.spilled(identity, released)


@command
class Heartbeat(Command[protocol.Heartbeat]):
    """A client is alive (one-way); any message counts, this one says nothing else."""

    request = protocol.Heartbeat

    def handle(self, daemon: Daemon, identity: bytes, req: protocol.Heartbeat) -> Any:
        return None


@command
class Ping(Command[protocol.Ping]):
    """Is the daemon there? Sent while a client waits for a slow batch."""

    request = protocol.Ping

    def handle(self, daemon: Daemon, identity: bytes, req: protocol.Ping) -> Any:
        return protocol.Empty()


@command
class Bye(Command[protocol.Bye]):
    """A client leaves: its leases go back at once (one-way)."""

    request = protocol.Bye

    def handle(self, daemon: Daemon, identity: bytes, req: protocol.Bye) -> Any:
        daemon.forget_client(identity)


# -- the operator's ---------------------------------------------------------------------


@command
class Status(Command[protocol.Status]):
    """Show a pipeline's queue depth, workers, rate and errors."""

    request = protocol.Status
    cli = True

    def handle(self, daemon: Daemon, identity: bytes, req: protocol.Status) -> Any:
        return daemon.status()

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--json", action="store_true", help="one JSON object")

    def render(self, reply: StatusRecord, args: argparse.Namespace) -> str:
        return protocol.to_json(reply) if args.json else format_status(reply)


@command
class Config(Command["Config.Request"]):
    """Print a running pipeline's effective settings, as a file `serve --config` reads."""

    class Request(protocol.Request, tag="config"):
        pass

    class Reply(protocol.Body):
        toml: str

    Request.reply_type = Reply
    request = Request
    cli = True

    def handle(self, daemon: Daemon, identity: bytes, req: Config.Request) -> Any:
        from vidring.daemon.config import as_toml

        return self.Reply(toml=as_toml(daemon.config))

    def render(self, reply: Config.Reply, args: argparse.Namespace) -> str:
        return reply.toml


def format_status(st: StatusRecord) -> str:
    slots, workers, errors = st.slots, st.workers, st.errors
    shape = "x".join(str(v) for v in st.batch_shape)
    if st.phase != "serving":
        return (f"pipeline  {st.name} (pid {st.pid})  {st.phase}: {st.probed} of {st.videos} "
                f"videos probed, {st.uptime_s:.0f} s since start")
    trouble = []
    if workers.backoff or workers.fatal:
        trouble.append(f"{workers.backoff} in back-off, {workers.fatal} failed")
    lines = [
        f"pipeline  {st.name} (pid {st.pid})  epoch {st.epoch}  "
        f"{st.batches_per_epoch} batches/epoch of {shape} {st.dtype}",
        f"frames    {st.preprocess}",
        f"labels    {st.labels}, y {'x'.join(str(v) for v in st.label_shape)}"
        f"{', with sample weights' if st.weights else ''}",
        f"queue     {slots.ready} ready / {slots.total} slots  "
        f"({slots.filling} filling, {slots.leased} leased, {slots.free} free)",
        f"workers   {workers.alive} alive / {workers.target} wanted  "
        f"({', '.join([f'{workers.busy} busy', f'{workers.restarts} restarts', *trouble])})",
        f"rate      {st.clips_per_s:.1f} clips/s  ({st.clips_total} clips total)",
    ]
    if errors.count and errors.last is not None:
        lines.append(f"errors    {errors.count}, {errors.quarantined} files quarantined; "
                     f"last: {errors.last.path}: {errors.last.reason}")
    else:
        lines.append("errors    0")
    if workers.last_error and (workers.backoff or workers.fatal):
        lines.append(f"          workers: {workers.last_error}")
    return "\n".join(lines)


@command
class Scale(Command["Scale.Request"]):
    """Change the number of decoder workers while serving."""

    class Request(protocol.Request, tag="scale"):
        workers: Annotated[int, msgspec.Meta(ge=0, le=protocol.MAX_WORKERS)] | None = None
        delta: Annotated[int, msgspec.Meta(ge=-protocol.MAX_WORKERS,
                                           le=protocol.MAX_WORKERS)] = 0  # +K / -K

    class Reply(protocol.Body):
        target: int
        previous: int
        capped: bool = False  # more were asked for than --max-workers allows

    Request.reply_type = Reply
    request = Request
    cli = True

    def handle(self, daemon: Daemon, identity: bytes, req: Scale.Request) -> Any:
        current = daemon.pool.target
        asked = req.workers if req.workers is not None else current + req.delta
        asked = min(max(asked, 0), protocol.MAX_WORKERS)
        previous = daemon.scale(asked, "asked by `vidring scale`")
        target = daemon.pool.target
        return self.Reply(target=target, previous=previous, capped=target < asked)

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("workers", help="the new worker count N, or +K / -K more or fewer")

    def build_request(self, args: argparse.Namespace) -> protocol.Request:
        text = str(args.workers).strip()
        try:
            number = int(text)
        except ValueError:
            raise ValueError(f"workers: expected N, +K or -K, got {text!r}") from None
        if text[0] in "+-":
            return self.Request(delta=number)
        return self.Request(workers=number)

    def render(self, reply: Scale.Reply, args: argparse.Namespace) -> str:
        capped = " (the most its --max-workers allows)" if reply.capped else ""
        return f"{args.name}: workers {reply.previous} -> {reply.target}{capped}"


@command
class Stop(Command["Stop.Request"]):
    """Stop a pipeline: its workers exit and its ring is unlinked."""

    class Request(protocol.Request, tag="stop"):
        reply_type = protocol.Empty

    request = Request
    cli = True

    def handle(self, daemon: Daemon, identity: bytes, req: Stop.Request) -> Any:
        log.info("stop requested")
        daemon.request_stop()
        return protocol.Empty()

    def render(self, reply: protocol.Empty, args: argparse.Namespace) -> str:
        return f"{args.name}: stopping"

    def when_gone(self, args: argparse.Namespace) -> bool:
        """A daemon killed with -9 left its socket, lock and ring: remove them."""
        from vidring.daemon.runtime import RuntimeDir
        from vidring.loader import ring

        name = args.name
        segment = ring.segment_name(name)
        left = (name in paths.list_pipelines() or paths.lock_path(name).exists()
                or os.path.exists(f"/dev/shm/{segment}"))
        if not left or paths.daemon_running(name) or not RuntimeDir.clear_stale(name):
            return False
        ring.unlink(segment)
        print(f"{name}: not running; removed what its daemon left (socket, lock, ring)")
        return True
