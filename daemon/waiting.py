"""What a trainer whose batch is not ready is told: wait, spill, ring exhausted, or stalled.

A small pure policy: the daemon's loop gives it each waiting request and a
snapshot of what the pipeline can do, and answers as it says.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from vidring.daemon.schedule import Key

# A request waiting this long past the decode timeout with no clip finished
# means no worker can make progress (a crash loop, say): say so.
STALL_GRACE_S = 30.0


@dataclass(frozen=True, slots=True)
class Waiting:
    """A get_batch request whose batch is not in the ring yet."""

    identity: bytes
    req_id: int
    key: Key
    since: float


@dataclass(frozen=True, slots=True)
class Progress:
    """What the pipeline can do right now."""

    slots: int
    all_leased: bool
    workers_wanted: int
    workers_alive: int
    worker_restarts: int
    last_clip_at: float
    fatal: str  # why no batch can be completed at all, or ""


class Verdict(enum.Enum):
    WAIT = "wait"
    SPILL = "spill"  # the asker holds slots: it copies its oldest batch out, then asks again
    EXHAUSTED = "exhausted"
    STALLED = "stalled"


class WaitPolicy:
    def __init__(self, exhausted_wait_s: float, task_timeout_s: float) -> None:
        self.exhausted_wait_s = exhausted_wait_s
        self.stall_after_s = task_timeout_s + STALL_GRACE_S

    def judge(self, waiting: Waiting, now: float, progress: Progress, *,
              holds: int = 0) -> tuple[Verdict, str]:
        """The verdict for a request of a client holding `holds` leases and, unless WAIT,
        the text the trainer sees."""
        if progress.fatal:
            return Verdict.STALLED, progress.fatal
        if progress.workers_wanted == 0:
            return Verdict.STALLED, ("no decoder workers: the pipeline is scaled to 0 "
                                     "(vidring scale NAME N)")
        if progress.all_leased and holds:
            return Verdict.SPILL, (f"all {progress.slots} slots are leased and this client "
                                   f"holds {holds} of them")
        if progress.all_leased:
            # Another client holds every slot: wait a while: TensorFlow's prefetch buffer
            # holds batches it has not trained on yet and lets one go every step.
            if now - waiting.since > self.exhausted_wait_s:
                return Verdict.EXHAUSTED, (
                    f"the trainer holds all {progress.slots} slots of the ring and released "
                    f"none for {self.exhausted_wait_s:g} s, so no batch can be produced: drop "
                    "references to old batches (or call ds.release) or serve with more --slots")
            return Verdict.WAIT, ""
        idle_s = now - max(progress.last_clip_at, waiting.since)
        if idle_s > self.stall_after_s:
            return Verdict.STALLED, (
                f"no clip finished for {idle_s:.0f} s: {progress.workers_alive} of "
                f"{progress.workers_wanted} workers alive, {progress.worker_restarts} worker "
                "restarts; see the daemon's log")
        return Verdict.WAIT, ""
