"""Every message is validated: size, depth, type, typed fields; bad ones are errors, not crashes."""

from __future__ import annotations

import json

import pytest

from vidring.daemon import commands
from vidring.loader import protocol
from vidring.loader.status import StatusRecord

REQUESTS = protocol.requests()


def _frame(**body: object) -> bytes:
    return json.dumps({"v": protocol.PROTOCOL_VERSION, **body}).encode()


def test_roundtrip_keeps_type_id_and_fields() -> None:
    msg = protocol.decode(protocol.encode(protocol.GetBatch(id=7, epoch=2, index=5)), REQUESTS)
    assert msg == protocol.GetBatch(id=7, epoch=2, index=5)


def test_reply_carries_a_record_that_is_validated() -> None:
    lease = protocol.Lease(slot=1, lease_id=9, epoch=0, plan_batch=2, fill_seq=1, ring_id=5)
    msg = protocol.decode(protocol.reply(3, lease), protocol.ANSWERS)
    assert isinstance(msg, protocol.Reply)
    assert msg.id == 3
    assert protocol.decode_body(msg, protocol.Lease) == lease
    with pytest.raises(protocol.ProtocolError, match="reply to request 3"):
        protocol.decode_body(msg, StatusRecord)


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"v": 99, "type": "ping"}).encode(), "protocol version"),
        (_frame(type="launch_missiles"), "unknown message type"),
        (_frame(type="task_done", task_id=1), "not accepted here"),
        (_frame(type="get_batch", epoch=1), "missing required field `index`"),
        (_frame(type="get_batch", epoch="1", index=0),
         r"Expected `int`, got `str` - at `\$.epoch`"),
        (_frame(type="get_batch", epoch=True, index=0), r"got `bool` - at `\$.epoch`"),
        (_frame(type="get_batch", epoch=-1, index=0), r"`int` >= 0 - at `\$.epoch`"),
        (_frame(type="get_batch", epoch=2**63, index=0), r"at `\$.epoch`"),
        (_frame(type="hello", client_pid=-1), r"at `\$.client_pid`"),
        (_frame(type="ping", extra=1), "unknown field `extra`"),
        (_frame(type="release", lease_ids=["a"]), r"at `\$.lease_ids\[0\]`"),
        (_frame(type="scale", workers=5000), r"<= 1024 - at `\$.workers`"),
        (b"[" * 5000, "nested deeper than"),
        (b'{"v": 2, "type": "ping", "s": "' + b"[" * 100 + b'"}', "unknown field `s`"),
        (b"{" + b" " * protocol.MAX_MESSAGE_BYTES + b"}", "over the"),
    ],
)
def test_bad_messages_name_what_is_wrong(body: bytes, complaint: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=complaint):
        protocol.decode(body, REQUESTS)


def test_peek_id_finds_the_id_of_an_invalid_request() -> None:
    assert protocol.peek_id(b'{"v": 2, "type": "scale", "id": 42, "workers": -1}') == 42
    assert protocol.peek_id(b"garbage") == 0
    assert protocol.peek_id(b'{"id": "7"}') == 0
    assert protocol.peek_id(b'{"id": 7, "x": ' + b"[" * 5000 + b"}") == 0


def test_check_refuses_a_bad_outgoing_request() -> None:
    with pytest.raises(protocol.ProtocolError, match="<= 1024"):
        protocol.check(commands.Scale.Request(workers=5000))


def test_every_command_is_registered_once_with_its_reply() -> None:
    names = [cmd.name for cmd in commands.REGISTRY.values()]
    assert len(names) == len(set(names))
    assert {"hello", "get_batch", "release", "ping", "status", "scale", "stop"} <= set(names)
    assert frozenset(commands.REGISTRY) == REQUESTS

    class Clash(protocol.Request, tag="scale"):
        pass

    with pytest.raises(TypeError, match="registered twice"):
        protocol.register(Clash)
