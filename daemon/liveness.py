"""Is a decoder worker still working?  Pings for idle workers, a deadline for busy ones.

Pure policy in the style of faults.py: the pool (pool.py) asks, and acts.
- Idle: a waiting worker answers a ping at once, so the pool pings one it has
  not heard from for PING_INTERVAL_S, and one silent for IDLE_SILENCE_S
  (stopped with SIGSTOP, frozen in a cgroup, swapped out) is killed and replaced
  before a clip is ever sent to it.
- Busy: a decode may be slow for good reasons (a long GOP's pre-roll), so its
  deadline follows what decodes take here: STALL_FACTOR x the p99 of the last
  RECENT clips' seconds, at least MIN_STALL_S, at most --task-timeout-s, per
  clip of the job.  A hung decode then holds the trainer for seconds, not the
  minute of the fixed timeout.  Until MIN_SAMPLES clips have been timed the
  deadline is --task-timeout-s itself.
"""

from __future__ import annotations

import collections

import numpy as np

PING_INTERVAL_S = 1.0
IDLE_SILENCE_S = 3.0
STALL_FACTOR = 10.0
MIN_STALL_S = 5.0
RECENT = 256
MIN_SAMPLES = 16
_SUMMARISE_EVERY = 32


class DecodeTimes:
    """Recent seconds per clip, and the stall deadline they imply."""

    def __init__(self, cap_s: float) -> None:
        self._cap_s = cap_s
        self._recent: collections.deque[float] = collections.deque(maxlen=RECENT)
        self._per_clip_s = cap_s
        self._unsummarised = 0

    def record(self, seconds: float, clips: int) -> None:
        self._recent.append(seconds / max(clips, 1))
        self._unsummarised += 1
        # The percentile costs more than the rest of a clip's bookkeeping: once there are
        # enough samples, then every few clips.
        seen = len(self._recent)
        if seen == MIN_SAMPLES or (seen > MIN_SAMPLES and self._unsummarised >= _SUMMARISE_EVERY):
            self._unsummarised = 0
            p99 = float(np.percentile(np.fromiter(self._recent, float), 99))
            self._per_clip_s = min(self._cap_s, max(MIN_STALL_S, STALL_FACTOR * p99))

    def stall_timeout_s(self, clips: int) -> float:
        """How long a job of `clips` clips may decode before it counts as hung."""
        return self._per_clip_s * clips
