"""Every ZeroMQ message of vidring: names, fields, encoding and validation.

A message is one ZeroMQ frame holding a UTF-8 JSON object whose ``type`` names it::

    {"v": 2, "type": "get_batch", "id": 7, "epoch": 0, "index": 3}

Each message is a msgspec Struct: its fields are its schema, and decoding checks
types, ranges, required and unknown fields in one pass, naming the field at fault.
Every answer shares one envelope: ``{"type": "reply", "id": ..., "body": {...}}``,
whose body is the request's reply record, or ``{"type": "error", "id": ...,
"code": ..., "message": ...}``.  Replies are validated like requests.

The trainer's messages and the worker messages are defined here.  Operator
commands (daemon/commands.py) declare theirs in their own class and `register`
them, so one class holds all of a command.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, TypeVar

import msgspec
import zmq

from vidring.loader.status import StatusRecord

PROTOCOL_VERSION = 2
# Sockets refuse bigger frames (ZMQ_MAXMSGSIZE), so a stray peer cannot make us allocate.
MAX_MESSAGE_BYTES = 256 * 1024
# No message of ours nests deeper than 4; decoding a deeper one could exhaust the stack.
MAX_DEPTH = 8
INT32_LIMIT = 2**31
PID_LIMIT = 2**22  # Linux's largest pid_max
MAX_WORKERS = 1024

# Error codes carried in error replies; the client maps them to exceptions.
E_BAD_MESSAGE = "bad_message"
E_RING_EXHAUSTED = "ring_exhausted"
E_BAD_REQUEST = "bad_request"
E_STOPPING = "stopping"
E_INTERNAL = "internal"
E_STALLED = "stalled"
E_RING_FULL = "ring_full"  # the asker holds every free slot: spill one and ask again
E_LEASE_EXPIRED = "lease_expired"
E_STARTING = "starting"  # still probing its videos: ask again

Int32 = Annotated[int, msgspec.Meta(ge=0, lt=INT32_LIMIT)]
Id = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]
R = TypeVar("R")


class ProtocolError(ValueError):
    """A frame that is not a valid vidring message; the text says which field."""


class Message(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, kw_only=True):
    """Base of every message: the protocol version, the type tag, a request id."""

    id: Id = 0
    v: int = PROTOCOL_VERSION


class Request(Message):
    """A control request, trainer or operator -> daemon."""

    # The record an answer carries; None: one-way, never answered.
    reply_type: ClassVar[type[Any] | None] = None


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Base of reply records."""


class Empty(Body):
    """A reply with nothing to say but that the request was handled."""


# -- trainer -> daemon -----------------------------------------------------------


class HelloReply(Body):
    status: StatusRecord  # the pipeline, as `vidring status` shows it
    batches: int  # batches per epoch in this client's part
    pid_ns: int  # the daemon's pid namespace: its pid means something only within it
    ring_id: int  # names this daemon's ring, so a restart under the same name is noticed
    classes: dict[str, int]  # class name -> label, for folder and class-name manifests


class Hello(Request, tag="hello"):
    reply_type = HelloReply
    client_pid: Annotated[int, msgspec.Meta(gt=0, lt=PID_LIMIT)]
    pid_ns: int = 0
    shard: Int32 = 0  # this client reads part `shard` of `num_shards` of every epoch
    num_shards: Annotated[int, msgspec.Meta(ge=1, lt=INT32_LIMIT)] = 1


class Lease(Body):
    slot: int
    lease_id: int
    epoch: int
    plan_batch: int
    fill_seq: int
    ring_id: int


class GetBatch(Request, tag="get_batch"):
    reply_type = Lease
    epoch: Int32
    index: Int32


class Release(Request, tag="release"):
    lease_ids: list[Id]
    spilled: bool = False  # the batches were copied out of the ring to free their slots


class Heartbeat(Request, tag="heartbeat"):
    pass


class Ping(Request, tag="ping"):
    reply_type = Empty


class Bye(Request, tag="bye"):
    pass


class Status(Request, tag="status"):
    reply_type = StatusRecord


class PathsReply(Body):
    paths: list[bytes]  # os.fsencode of each row's file, in the order asked


MAX_PATHS_ASKED = 1024  # a reply of that many long paths still fits in a message


class Paths(Request, tag="paths"):
    """The files of some manifest rows (a batch's provenance names rows by index)."""

    reply_type = PathsReply
    indices: Annotated[list[Int32], msgspec.Meta(max_length=MAX_PATHS_ASKED)]


# -- daemon <-> decoder workers ---------------------------------------------------


class Clip(msgspec.Struct, forbid_unknown_fields=True):
    position: int  # its place in the slot
    frame_pts: list[int]  # its frames' timestamps, in order
    box: tuple[int, int, int, int] | None = None  # y0, x0, h, w of the upright frame to cut
    flip: bool = False


class Task(Message, tag="task"):
    """Clips of one video for one slot, decoded in one pass from one keyframe."""

    task_id: int
    slot: int
    path: bytes  # os.fsencode: a Linux file name is bytes, and need not be UTF-8
    clips: list[Clip]
    key_pts: int
    key_dts: int
    rotation: int = 0  # degrees counter-clockwise that turn the stored frames upright
    size: int = 0  # the file as probed: a file of another size or mtime was replaced
    mtime_ns: int = 0
    reopen_as: str = ""  # the probe's decode.Reopen: "" to open the file the plain way
    reorder_depth: int = 0


class WorkerStop(Message, tag="worker_stop"):
    pass


class WorkerPing(Message, tag="worker_ping"):
    """Are you there?  An idle worker answers with worker_ready (daemon/liveness.py)."""


class WorkerReady(Message, tag="worker_ready"):
    pass


class TaskDone(Message, tag="task_done"):
    task_id: int
    error: str = ""  # empty: the clip is in its place in the slot
    permanent: bool = False  # the file is gone or changed: retrying cannot help
    retiring: bool = False  # its last: it decoded --worker-max-clips and exits now
    stages: list[float] = []  # seconds in each of decode.STAGES, for `vidring top`


# -- answers ------------------------------------------------------------------------


class Reply(Message, tag="reply"):
    body: msgspec.Raw


class ErrorReply(Message, tag="error"):
    code: str
    message: str


class _Peek(msgspec.Struct):
    """What can be read of a frame that failed validation."""

    v: Any = None
    type: Any = None
    id: Any = 0


_requests: dict[str, type[Request]] = {}
_decoders: dict[frozenset[type[Message]], msgspec.json.Decoder[Any]] = {}
_encoder = msgspec.json.Encoder()
WORKER_MESSAGES: frozenset[type[Message]] = frozenset({WorkerReady, TaskDone})
DAEMON_TO_WORKER: frozenset[type[Message]] = frozenset({Task, WorkerStop, WorkerPing})
ANSWERS: frozenset[type[Message]] = frozenset({Reply, ErrorReply})


def register(cls: type[Request]) -> type[Request]:
    """Make a request type known to the daemon's decoder; its tag must be new."""
    tag = cls.__struct_config__.tag
    if not isinstance(tag, str):
        raise TypeError(f"{cls.__name__} needs a tag (class X(Request, tag='name'))")
    if _requests.get(tag, cls) is not cls:
        raise TypeError(f"request type {tag!r} is registered twice")
    _requests[tag] = cls
    return cls


for _cls in (Hello, GetBatch, Release, Heartbeat, Ping, Bye, Status):
    register(_cls)


def requests() -> frozenset[type[Message]]:
    """Every registered request type: what the daemon's control socket accepts."""
    return frozenset(_requests.values())


def type_name(cls: type[Message]) -> str:
    return str(cls.__struct_config__.tag)


def encode(msg: Message) -> bytes:
    data = _encoder.encode(msg)
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{type_name(type(msg))} message is {len(data)} bytes, over "
                            f"{MAX_MESSAGE_BYTES}")
    return data


def reply(id_: int, body: Any) -> bytes:
    return encode(Reply(id=id_, body=msgspec.Raw(_encoder.encode(body))))


def error(id_: int, code: str, message: str) -> bytes:
    return encode(ErrorReply(id=id_, code=code, message=message))


def check(msg: Message) -> None:
    """Validate an outgoing message here, so a bad one fails at once in the caller."""
    decode(encode(msg), frozenset({type(msg)}))


def decode(data: bytes, allowed: frozenset[type[Message]]) -> Message:
    """Parse and validate one frame as one of `allowed`; raise ProtocolError naming the fault."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    _check_depth(data)
    decoder = _decoders.get(allowed)
    if decoder is None:
        union: Any = tuple(allowed)
        decoder = _decoders[allowed] = msgspec.json.Decoder(
            union[0] if len(union) == 1 else _union(union))
    try:
        msg: Message = decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ProtocolError(_explain(data, exc, allowed)) from None
    except UnicodeDecodeError as exc:  # msgspec's answer to a key that is not UTF-8
        raise ProtocolError(f"message is not UTF-8 (byte {exc.start})") from None
    if msg.v != PROTOCOL_VERSION:
        raise ProtocolError(f"field 'v': expected protocol version {PROTOCOL_VERSION}, "
                            f"got {msg.v!r}")
    return msg


def decode_body(msg: Reply, body_type: type[R]) -> R:
    """The record a reply carries, validated as `body_type`."""
    try:
        return msgspec.json.decode(msg.body, type=body_type)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"reply to request {msg.id}: {exc}") from None


def peek_id(data: bytes) -> int:
    """The request id of a frame that failed validation, so its error reply reaches the
    request that sent it; 0 when there is none."""
    peek = _peek(data)
    id_ = peek.id if peek is not None else 0
    valid = isinstance(id_, int) and not isinstance(id_, bool) and 0 <= id_ < 2**63
    return id_ if valid else 0


def to_json(record: Any) -> str:
    """A reply record as indented JSON, for people and scripts."""
    return msgspec.json.format(_encoder.encode(record), indent=2).decode()


def configure(sock: zmq.Socket[Any]) -> None:
    """The options every vidring socket sets: never linger on close, refuse big frames."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)


def _union(types: tuple[type[Message], ...]) -> Any:
    union: Any = types[0]
    for cls in types[1:]:
        union = union | cls
    return union


def _peek(data: bytes) -> _Peek | None:
    try:
        _check_depth(data)
        return msgspec.json.decode(data, type=_Peek)
    except (ProtocolError, msgspec.DecodeError, UnicodeDecodeError):
        return None


def _explain(data: bytes, exc: msgspec.DecodeError, allowed: frozenset[type[Message]]) -> str:
    if not isinstance(exc, msgspec.ValidationError):
        return f"message is not JSON: {exc}"
    peek = _peek(data)
    if peek is None:
        return f"message is not a JSON object: {exc}"
    if peek.v != PROTOCOL_VERSION:
        return f"field 'v': expected protocol version {PROTOCOL_VERSION}, got {peek.v!r}"
    names = {type_name(cls) for cls in allowed}
    if isinstance(peek.type, str) and peek.type not in names:
        known = peek.type in _requests or peek.type in {
            type_name(c) for c in WORKER_MESSAGES | DAEMON_TO_WORKER | ANSWERS}
        what = "is not accepted here" if known else "unknown message type"
        return f"field 'type': {what}: {peek.type!r}"
    return f"{peek.type}: {exc}"


def _check_depth(data: bytes) -> None:
    # Cheap first: a frame with few brackets cannot be deep.
    if data.count(b"[") + data.count(b"{") <= MAX_DEPTH:
        return
    depth = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > MAX_DEPTH:
                raise ProtocolError(f"message is nested deeper than {MAX_DEPTH} levels")
        elif byte in (0x5D, 0x7D):
            depth -= 1
