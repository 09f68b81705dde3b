"""The daemon before it serves: probing a dataset can take minutes, and meanwhile the
control socket already answers.

`status` says phase 'probing' and how many videos are done; `ping` is answered;
`stop` (or SIGTERM) ends the start; any other request gets E_STARTING, which a
trainer's client takes as "ask again" (up to its timeout).  The probe runs in a
daemon thread, so a stop never waits for a probe stuck on a file.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import TYPE_CHECKING, Any

import zmq

from vidring.daemon.pool import DRAIN_LIMIT
from vidring.loader import protocol
from vidring.loader.ring import segment_name
from vidring.loader.status import (
    STATUS_VERSION,
    ErrorSummary,
    SlotCounts,
    StatusRecord,
    WorkerCounts,
    printable,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from vidring.daemon.config import ServeConfig

_POLL_S = 0.05
# How long a stop waits for a parallel probe to kill its processes.
_CANCEL_WAIT_S = 5.0


class StopRequested(Exception):
    """A stop came (the `stop` command, SIGTERM, SIGINT) before the daemon was serving."""


def answer_while(work: Callable[[Callable[[int], None]], Any], control: zmq.Socket[Any],
                 config: ServeConfig, videos: int, manifest: str,
                 stop: threading.Event) -> Any:
    """Run `work(progress)` in a thread, answering the control socket until it returns."""
    started = time.time()
    done = [0]
    outcome: list[Any] = []
    clients: set[bytes] = set()

    def progress(n: int) -> None:
        done[0] = n

    def run() -> None:
        try:
            outcome.append(work(progress))
        except BaseException as exc:  # handed to the main thread below
            outcome.append(exc)

    def status() -> StatusRecord:
        return dataclasses.replace(
            status_at_start(config, videos=videos, manifest=manifest,
                            uptime_s=time.time() - started),
            probed=done[0], clients=len(clients))

    thread = threading.Thread(target=run, name="vidring-probe", daemon=True)
    thread.start()
    while not outcome:
        if stop.is_set():
            thread.join(timeout=_CANCEL_WAIT_S)  # a parallel probe ends its processes
            raise StopRequested
        if control.poll(int(_POLL_S * 1000)):
            _answer(control, status, clients, stop, f"pipeline {config.name!r} is starting: "
                                                    f"probed {done[0]} of {videos} videos")
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _answer(control: zmq.Socket[Any], status: Callable[[], StatusRecord], clients: set[bytes],
            stop: threading.Event, why: str) -> None:
    for _ in range(DRAIN_LIMIT):
        try:
            identity, data = control.recv_multipart(zmq.NOBLOCK)[:2]
        except (zmq.Again, ValueError):
            return
        try:
            req = protocol.decode(data, protocol.requests())
        except protocol.ProtocolError as exc:
            out = protocol.error(protocol.peek_id(data), protocol.E_BAD_MESSAGE, str(exc))
        else:
            if isinstance(req, protocol.Hello):
                clients.add(identity)  # a trainer waiting for the daemon
            if isinstance(req, protocol.Status):
                out = protocol.reply(req.id, status())
            elif protocol.type_name(type(req)) == "stop":
                stop.set()
                out = protocol.reply(req.id, protocol.Empty())
            elif isinstance(req, protocol.Ping):
                out = protocol.reply(req.id, protocol.Empty())
            elif isinstance(req, protocol.Request) and req.reply_type is not None:
                out = protocol.error(req.id, protocol.E_STARTING, why)
            else:
                continue  # one-way: nothing held yet, nothing to do
        control.send_multipart([identity, out])


def status_at_start(config: ServeConfig, *, videos: int, manifest: str,
                    uptime_s: float) -> StatusRecord:
    """The status record before anything is served: what the config says, counts at 0.
    The serving daemon's record is this one with its live fields replaced (server.py)."""
    return StatusRecord(
        version=STATUS_VERSION, name=config.name, pid=os.getpid(), phase="probing",
        probed=0, epoch=0, batches_per_epoch=0,
        batch_shape=(config.batch_size, config.clip_length, config.height, config.width, 3),
        dtype=config.dtype, sampler=config.sampler, clips_per_video=config.clips_per_video,
        evaluation=config.sampling().evaluates, preprocess=describe(config),
        labels=config.labels, label_shape=(config.batch_size,), weights=False,
        slots=SlotCounts(total=0, free=0, filling=0, ready=0, leased=0),
        workers=WorkerCounts(target=config.workers, alive=0, starting=0, idle=0, busy=0,
                             stopping=0, backoff=0, fatal=0, restarts=0, recycled=0,
                             last_error=""),
        clips_per_s=0.0, clips_total=0,
        errors=ErrorSummary(count=0, last=None, quarantined=0, recent_quarantined=[],
                            replaced_samples=0),
        videos=videos, classes=0, manifest=printable(manifest), segment=segment_name(config.name),
        ring_mib=0.0, clients=0, spilled=0, waiting_requests=0, queued_clips=0,
        uptime_s=round(uptime_s, 1))


def describe(config: ServeConfig) -> str:
    """The preprocessing settings in a few words, for status."""
    aug = config.augment()
    if aug.resize == "stretch":
        parts = [f"stretch to {config.height}x{config.width}"]
    else:
        least, most = aug.short_side
        side = str(least) if least == most else f"{least}:{most}"
        parts = [f"short side {side}, {aug.crop} crop {config.height}x{config.width}"]
    if aug.flip:
        parts.append("flip")
    parts.append(config.interpolation)
    if config.mean is not None or config.std is not None:
        parts.append(f"mean {config.mean or (0, 0, 0)} std {config.std or (1, 1, 1)}")
    return ", ".join(parts)
