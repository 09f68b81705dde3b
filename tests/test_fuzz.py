"""Protocol fuzzing: thousands of random and mutated frames on the daemon's control and work
sockets, then an epoch that must still be exact."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import psutil
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support import N_VIDEOS, Daemons, status
from vidring.loader import ClipDataset, paths, protocol

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

# Commands that would change what the trainer gets if one came out valid by chance.
_SPARED = {"stop", "scale", "get_batch", "bye"}
_TYPES = sorted(t for t in ["hello", "release", "heartbeat", "ping", "status", "paths", "task",
                            "task_done", "worker_ready", "worker_stop", "worker_ping", "reply",
                            "error", *_SPARED] if t not in _SPARED)
_SEEDS = [
    protocol.encode(protocol.Status(id=3)),
    protocol.encode(protocol.Ping(id=4)),
    protocol.encode(protocol.Paths(id=5, indices=[0, 1])),
    protocol.encode(protocol.Release(lease_ids=[12345])),
    protocol.encode(protocol.Hello(id=6, client_pid=os.getpid())),
    protocol.encode(protocol.TaskDone(task_id=1, error="x")),
    protocol.encode(protocol.WorkerReady()),
]
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=5),
    max_leaves=30)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "flip":
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif len(data) > 1:
            del data[at]
    return bytes(data)


_frames = st.one_of(
    st.binary(max_size=300),
    _json.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda t, body: json.dumps({"type": t, "v": 2, **body}).encode(),
              st.sampled_from(_TYPES), st.dictionaries(st.text(max_size=8), _json, max_size=4)),
    _mutated(),
)


@pytest.fixture(scope="module")
def fuzzed(shared_daemons: Daemons, manifest: Path) -> Iterator[tuple[str, zmq.Socket[Any],
                                                                     zmq.Socket[Any]]]:
    name = shared_daemons.start(manifest, name=f"fuzz-{os.getpid()}", workers=2, slots=2)
    folder = paths.runtime_dir(name)
    ctx = zmq.Context()
    control, work = ctx.socket(zmq.DEALER), ctx.socket(zmq.DEALER)
    for sock, endpoint in ((control, paths.CONTROL_SOCKET), (work, paths.WORK_SOCKET)):
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(f"ipc://{folder / endpoint}")
    try:
        yield name, control, work
    finally:
        control.close()
        work.close()
        ctx.term()


def _drain(sock: zmq.Socket[Any]) -> None:
    while sock.poll(0):
        sock.recv()


@given(frames=st.lists(_frames, min_size=1, max_size=20))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_frames_never_stop_the_daemon(
        fuzzed: tuple[str, zmq.Socket[Any], zmq.Socket[Any]], frames: list[bytes]) -> None:
    _, control, work = fuzzed
    for frame in frames:  # about 3,000 frames on each socket over the examples
        control.send(frame)
        work.send(frame)
    _drain(control)
    _drain(work)


def test_after_the_fuzz_the_epoch_is_exact(
        fuzzed: tuple[str, zmq.Socket[Any], zmq.Socket[Any]],
        shared_daemons: Daemons) -> None:
    name, control, _ = fuzzed
    # The frames above were all sent before this test: the daemon has read them or will
    # before it answers this status (one socket, read in order).
    control.send(protocol.encode(protocol.Status(id=99)))
    assert control.poll(10_000), "the daemon stopped answering"
    assert psutil.pid_exists(shared_daemons.pid(name))
    with ClipDataset(name) as ds:
        labels = [v for i in range(len(ds)) for v in ds[i][1].tolist()]
    assert sorted(labels) == list(range(N_VIDEOS))
    st_ = status(name)
    assert st_.workers.alive == 2
    assert st_.workers.restarts == 0
