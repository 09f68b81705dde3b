"""Every message is validated: size, type, typed fields; bad ones are errors, not crashes."""

from __future__ import annotations

import json

import pytest

from vidring.loader import protocol


def test_roundtrip_keeps_type_id_and_fields() -> None:
    msg = protocol.decode(protocol.encode("get_batch", 7, epoch=2, index=5))
    assert (msg.type, msg.id, msg["epoch"], msg["index"]) == ("get_batch", 7, 2, 5)


def test_reply_envelope_carries_handler_fields() -> None:
    msg = protocol.decode(protocol.reply(3, slot=1, lease_id=9))
    assert msg.type == "reply" and msg.id == 3 and msg["slot"] == 1


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"v": 99, "type": "ping"}).encode(), "protocol version"),
        (json.dumps({"v": 1, "type": "launch_missiles"}).encode(), "unknown message type"),
        (json.dumps({"v": 1, "type": "get_batch", "epoch": 1}).encode(), "missing field 'index'"),
        (json.dumps({"v": 1, "type": "get_batch", "epoch": "1", "index": 0}).encode(),
         "field 'epoch' must be int"),
        (json.dumps({"v": 1, "type": "get_batch", "epoch": True, "index": 0}).encode(),
         "field 'epoch' must be int"),
        (json.dumps({"v": 1, "type": "get_batch", "epoch": -1, "index": 0}).encode(),
         r"'epoch' must be in 0..2\*\*31-1"),
        (json.dumps({"v": 1, "type": "get_batch", "epoch": 2**63, "index": 0}).encode(),
         r"'epoch' must be in 0..2\*\*31-1"),
        (json.dumps({"v": 1, "type": "hello", "client_pid": -1}).encode(), "is not a pid"),
        (json.dumps({"v": 1, "type": "ping", "extra": 1}).encode(), "unknown field 'extra'"),
        (json.dumps({"v": 1, "type": "release", "lease_ids": ["a"]}).encode(), "list of ints"),
        (json.dumps({"v": 1, "type": "scale", "workers": 5000}).encode(), "between 0 and 1024"),
        (b"{" + b" " * protocol.MAX_MESSAGE_BYTES + b"}", "over the"),
    ],
)
def test_bad_messages_name_what_is_wrong(body: bytes, complaint: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=complaint):
        protocol.decode(body)


def test_allowed_types_are_enforced() -> None:
    data = protocol.encode("stop")
    with pytest.raises(protocol.ProtocolError, match="not accepted here"):
        protocol.decode(data, allowed=protocol.WORKER_TYPES)


def test_peek_id_finds_the_id_of_an_invalid_request() -> None:
    assert protocol.peek_id(b'{"v": 1, "type": "scale", "id": 42, "workers": -1}') == 42
    assert protocol.peek_id(b"garbage") == 0
    assert protocol.peek_id(b'{"id": "7"}') == 0


def test_check_refuses_a_bad_outgoing_request() -> None:
    with pytest.raises(protocol.ProtocolError, match="between 0 and 1024"):
        protocol.check("scale", workers=5000)


def test_encode_refuses_unknown_type() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.encode("nope")
