"""The live statistics a daemon publishes once a second on its stats socket (`vidring top`).

Published on a ZeroMQ PUB socket beside the control socket (paths.STATS_SOCKET), as
msgspec JSON, so watching costs the daemon one send a second whoever watches, and a
watcher never queues behind trainers' requests.  Bounded like the status record.
"""

from __future__ import annotations

import msgspec

QUEUE_HISTORY_S = 60  # seconds of queue depth in each message (top's sparkline)


class StageTime(msgspec.Struct, frozen=True):
    stage: str  # decode.STAGES: open, preroll, frames, write
    p50_ms: float
    p95_ms: float


class WorkerLine(msgspec.Struct, frozen=True):
    worker_id: int
    state: str
    pid: int  # 0: no process
    file: str  # the file it decodes ('' when idle)
    cpu_percent: float
    rss_mib: float


class FileTime(msgspec.Struct, frozen=True):
    path: str
    ms_per_clip: float  # mean over its recent clips
    clips: int


class Stats(msgspec.Struct, frozen=True):
    name: str
    pid: int
    epoch: int
    slots: int
    ready: int  # the queue depth now
    queue_history: list[int]  # ready slots at each of the last QUEUE_HISTORY_S seconds
    clips_per_s: float
    wait_p50_ms: float  # the trainer's wait per batch over the last minute
    wait_p95_ms: float
    waits: int  # batches asked for over the last minute
    stages: list[StageTime]  # per clip, over the last minute
    workers: list[WorkerLine]
    target: int
    autoscale: str  # "MIN:MAX", or "" when off
    scaling: list[str]  # the last scaling decisions, with their reasons
    slowest: list[FileTime]
    errors: int
    quarantined: int
    recent_errors: list[str]
    spilled: int


_decoder = msgspec.json.Decoder(Stats)
_encoder = msgspec.json.Encoder()


def encode(stats: Stats) -> bytes:
    return _encoder.encode(stats)


def decode(data: bytes) -> Stats:
    """Raises msgspec.DecodeError (or UnicodeDecodeError) on a frame that is not Stats."""
    return _decoder.decode(data)
