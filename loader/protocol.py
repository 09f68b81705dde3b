"""Every ZeroMQ message of vidring: names, fields, encoding and validation.

A message is one ZeroMQ frame holding a UTF-8 JSON object::

    {"v": 1, "type": "<name>", "id": <request id>, ...fields}

Every reply shares one envelope: ``{"type": "reply", "id": ...}`` with the
handler's fields, or ``{"type": "error", "id": ..., "code": ..., "message": ...}``.
Control messages are tiny, so JSON's cost does not matter and any tool can
speak it.  Nothing but this module knows a message's shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
# Sockets refuse bigger frames (ZMQ_MAXMSGSIZE), so a stray peer cannot make us allocate.
MAX_MESSAGE_BYTES = 256 * 1024

# Error codes carried in error replies; the client maps them to exceptions.
E_BAD_MESSAGE = "bad_message"
E_RING_EXHAUSTED = "ring_exhausted"
E_BAD_REQUEST = "bad_request"
E_STOPPING = "stopping"
E_INTERNAL = "internal"
E_STALLED = "stalled"

_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_BOOL = (bool,)
_LIST = (list,)
_DICT = (dict,)

# type -> {field: (accepted python types, required)}
_SCHEMAS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    # trainer / CLI -> daemon
    "hello": {"client_pid": (_INT, True), "pid_ns": (_INT, False)},
    "get_batch": {"epoch": (_INT, True), "index": (_INT, True)},
    "release": {"lease_ids": (_LIST, True)},
    "heartbeat": {},
    "ping": {},
    "bye": {},
    "status": {},
    "scale": {"workers": (_INT, True)},
    "stop": {},
    # worker -> daemon
    "worker_ready": {"worker_id": (_INT, True), "pid": (_INT, True)},
    "task_done": {
        "worker_id": (_INT, True), "task_id": (_INT, True), "ok": (_BOOL, True),
        "error": (_STR, False), "seconds": (_NUM, False),
    },
    # daemon -> worker
    "task": {
        "task_id": (_INT, True), "slot": (_INT, True), "position": (_INT, True),
        "path": (_STR, True), "frame_pts": (_LIST, True), "key_pts": (_INT, True),
        "key_dts": (_INT, True),
    },
    "worker_stop": {},
    # replies
    "reply": {},
    "error": {"code": (_STR, True), "message": (_STR, True)},
}

REQUEST_TYPES = frozenset({"hello", "get_batch", "release", "heartbeat", "ping", "bye",
                           "status", "scale", "stop"})
WORKER_TYPES = frozenset({"worker_ready", "task_done"})
# Requests the daemon answers; the rest are one-way.
ANSWERED_TYPES = frozenset({"hello", "get_batch", "ping", "status", "scale", "stop"})


class ProtocolError(ValueError):
    """A frame that is not a valid vidring message; the text says which field."""


@dataclass(slots=True)
class Message:
    type: str
    id: int = 0
    fields: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.fields.get(key, default)


def encode(type_: str, id_: int = 0, **fields: Any) -> bytes:
    if type_ not in _SCHEMAS:
        raise ProtocolError(f"unknown message type {type_!r}")
    body = {"v": PROTOCOL_VERSION, "type": type_, "id": id_, **fields}
    data = json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"{type_} message is {len(data)} bytes, over {MAX_MESSAGE_BYTES}")
    return data


def reply(id_: int, **fields: Any) -> bytes:
    return encode("reply", id_, **fields)


def error(id_: int, code: str, message: str) -> bytes:
    return encode("error", id_, code=code, message=message)


def peek_id(data: bytes) -> int:
    """The request id of a frame that failed validation, so its error reply reaches the
    request that sent it; 0 when there is none."""
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return 0
    id_ = body.get("id") if isinstance(body, dict) else None
    return id_ if _is(id_, _INT) and 0 <= id_ < _INT32_LIMIT * 2**32 else 0


def check(type_: str, **fields: Any) -> None:
    """Validate an outgoing request here, so a bad one fails at once in the caller."""
    decode(encode(type_, 0, **fields))


def decode(data: bytes, *, allowed: frozenset[str] | None = None) -> Message:
    """Parse and validate one frame; raise ProtocolError naming what is wrong."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is {len(data)} bytes, over the {MAX_MESSAGE_BYTES} limit")
    try:
        body = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError("message is not a JSON object")
    version = body.pop("v", None)
    if version != PROTOCOL_VERSION:
        raise ProtocolError(
            f"field 'v': expected protocol version {PROTOCOL_VERSION}, got {version!r}")
    type_ = body.pop("type", None)
    if not isinstance(type_, str) or type_ not in _SCHEMAS:
        raise ProtocolError(f"field 'type': unknown message type {type_!r}")
    if allowed is not None and type_ not in allowed:
        raise ProtocolError(f"field 'type': {type_!r} is not accepted here")
    id_ = body.pop("id", 0)
    if not _is(id_, _INT):
        raise ProtocolError(f"field 'id': expected an int, got {id_!r}")
    schema = _SCHEMAS[type_]
    if type_ != "reply":  # replies carry the handler's own fields
        for name in body:
            if name not in schema:
                raise ProtocolError(f"{type_}: unknown field {name!r}")
    for name, (types, required) in schema.items():
        if name not in body:
            if required:
                raise ProtocolError(f"{type_}: missing field {name!r}")
            continue
        if not _is(body[name], types):
            names = "/".join(t.__name__ for t in types)
            raise ProtocolError(f"{type_}: field {name!r} must be {names}, got {body[name]!r}")
    _check_lists(type_, body)
    return Message(type_, id_, body)


def _is(value: Any, types: tuple[type, ...]) -> bool:
    # bool is an int subclass; a True where an int belongs is a bug upstream.
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


_INT32_LIMIT = 2**31
_PID_LIMIT = 2**22  # Linux's largest pid_max


def _check_lists(type_: str, body: dict[str, Any]) -> None:
    for name in ("lease_ids", "frame_pts"):
        items = body.get(name)
        if items is not None and not all(_is(v, _INT) for v in items):
            raise ProtocolError(f"{type_}: field {name!r} must be a list of ints")
    if type_ == "get_batch":
        for name in ("epoch", "index"):
            if not 0 <= body[name] < _INT32_LIMIT:
                raise ProtocolError(f"get_batch: {name!r} must be in 0..2**31-1, got {body[name]}")
    if type_ == "hello" and not 0 < body["client_pid"] < _PID_LIMIT:
        raise ProtocolError(f"hello: 'client_pid' {body['client_pid']} is not a pid")
    if type_ == "scale" and not 0 <= body["workers"] <= 1024:
        raise ProtocolError("scale: 'workers' must be between 0 and 1024")
