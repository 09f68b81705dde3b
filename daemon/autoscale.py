"""`--autoscale MIN:MAX`: the worker count follows the trainer.  Pure policy; the serving
loop feeds it and carries out what it decides (Daemon.scale, logged with the reason).

Every WINDOW_S it looks at the window just past:
- grow by one while the trainer waited for batches (over GROW_WAIT of the window's time)
  and at least one core was idle: a worker more would run, not queue for a core;
- shrink by one while the trainer never waited (under SHRINK_WAIT) and the ring stayed
  full (its emptiest moment still had all but one slot ready): a worker less is not
  missed;
- after a change, wait COOL_DOWN_WINDOWS windows: a new worker needs a moment to start
  and the queue a moment to show its effect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

WINDOW_S = 3.0
GROW_WAIT = 0.05  # share of the window the trainer spent waiting
SHRINK_WAIT = 0.005
IDLE_CORES_TO_GROW = 0.5
COOL_DOWN_WINDOWS = 2


def parse_range(text: str) -> tuple[int, int]:
    """'MIN:MAX' -> (MIN, MAX)."""
    try:
        least, most = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"autoscale: expected MIN:MAX such as 1:8, got {text!r}") from None
    if not 0 <= least <= most or most < 1:
        raise ValueError(f"autoscale: need 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return least, most


@dataclass(frozen=True, slots=True)
class Window:
    """What happened over one window."""

    seconds: float
    waited_s: float  # the trainer's total wait for batches
    least_ready: int  # the fewest slots ready at any tick
    slots: int
    idle_cores: float


class Autoscaler:
    def __init__(self, least: int, most: int) -> None:
        self.least = least
        self.most = most
        self._cooling = 0

    def decide(self, workers: int, window: Window) -> tuple[int, str] | None:
        """The new worker count and why, or None to keep `workers`."""
        if self._cooling:
            self._cooling -= 1
            return None
        waited = window.waited_s / max(window.seconds, 1e-9)
        target: int | None = None
        if workers < self.least:
            target, why = self.least, f"below the minimum {self.least}"
        elif workers > self.most:
            target, why = self.most, f"above the maximum {self.most}"
        elif (waited > GROW_WAIT and window.idle_cores >= IDLE_CORES_TO_GROW
              and workers < self.most):
            target, why = workers + 1, (f"the trainer waited {waited:.0%} of the last "
                                        f"{window.seconds:.0f} s with {window.idle_cores:.1f} "
                                        "cores idle")
        elif (waited < SHRINK_WAIT and window.least_ready >= window.slots - 1
              and workers > max(self.least, 1)):
            target, why = workers - 1, (f"batches sat ready ({window.least_ready}/"
                                        f"{window.slots} at the least) and the trainer never "
                                        "waited")
        if target is None:
            return None
        self._cooling = COOL_DOWN_WINDOWS
        return target, f"autoscale: {why}"


class Meter:
    """Gathers one Window at a time from the serving loop's ticks."""

    def __init__(self, now: float, cpu_idle_cores: Callable[[], float]) -> None:
        self._cpu_idle_cores = cpu_idle_cores
        self._start = now
        self._waited_s = 0.0
        self._least_ready: int | None = None
        cpu_idle_cores()  # starts the CPU count for the first window

    def waited(self, seconds: float) -> None:
        self._waited_s += seconds

    def tick(self, now: float, ready: int, slots: int) -> Window | None:
        """The window just ended, once WINDOW_S has passed."""
        self._least_ready = ready if self._least_ready is None else min(self._least_ready, ready)
        if now - self._start < WINDOW_S:
            return None
        window = Window(now - self._start, self._waited_s, self._least_ready, slots,
                        self._cpu_idle_cores())
        self._start, self._waited_s, self._least_ready = now, 0.0, None
        return window
