"""A decoder worker as the pool sees it: its state, its process, the job it holds.

The states and every transition between them are described, and made, in pool.py.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from vidring.daemon.tasks import Job

NEVER = float("inf")


class WorkerState(enum.IntEnum):
    STARTING = 0
    IDLE = 1
    BUSY = 2
    STOPPING = 3
    BACKOFF = 4
    FATAL = 5
    EXITED = 6


class Process(Protocol):
    """What the pool needs of a worker process; subprocess.Popen is one."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | Any: ...

    def poll(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


# Starts a worker process that will connect with this ZeroMQ identity.
Starter = Callable[[bytes], Process]


@dataclass(frozen=True, slots=True)
class Finished:
    """A job handed back by the pool: done (error == "") or failed with its reason."""

    job: Job
    error: str
    permanent: bool = False  # the file is gone or changed since it was probed
    seconds: float = 0.0  # the job's time on its worker
    stages: tuple[float, ...] = ()  # the worker's own split of it (decode.STAGES)
    requeue: bool = False  # never started (queued behind a job that failed): not a failure


@dataclass(slots=True, eq=False)
class Worker:
    worker_id: int
    state: WorkerState = WorkerState.EXITED
    proc: Process | None = None
    generation: int = 0  # one per process started, so a late message of an earlier one is ignored
    started_at: float = 0.0
    failed_starts: int = 0  # in a row; reset when one becomes ready
    start_failed: bool = False  # STOPPING: killed for not becoming ready
    task: Job | None = None  # the job it decodes
    queued: Job | None = None  # the next one, already sent: it starts without a round trip
    task_started: float = 0.0
    heard_at: float = 0.0  # its last message
    pinged_at: float = 0.0
    deadline: float = NEVER  # STARTING: ready by; STOPPING: next signal; BACKOFF: start at
    signals_sent: int = 0  # STOPPING: 0 worker_stop only, 1 SIGTERM, 2 SIGKILL
    respawn: bool = False  # STOPPING: start it again once it is gone

    @property
    def identity(self) -> bytes:
        return f"w{self.worker_id}.{self.generation}".encode()
